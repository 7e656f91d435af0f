"""`python -m comfyq.standin`: the same entry point as the `comfyui-standin` console script."""

import sys

from comfyq.standin.server import main

sys.exit(main())
