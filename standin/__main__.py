"""`python -m comfyq_standin`: the same entry point as the `comfyui-standin` console script."""

import sys

from comfyq_standin.server import main

sys.exit(main())
