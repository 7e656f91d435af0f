"""Worker entry point: `python worker.py` runs one worker for one ComfyUI; `python worker.py healthcheck` exits 0
only when Postgres and ComfyUI both answer. The code lives in the comfyq package (comfyq.worker)."""

import sys

from comfyq.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
