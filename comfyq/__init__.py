"""comfyq: a batch job queue for ComfyUI with Postgres as the queue and the system of record."""

__version__ = "0.1.0"
