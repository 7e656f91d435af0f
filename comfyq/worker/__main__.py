"""`python -m comfyq.worker`: the worker's command line, for installs without the repository's worker/ folder."""

import sys

from comfyq.worker.main import main

sys.exit(main())
