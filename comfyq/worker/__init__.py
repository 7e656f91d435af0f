"""The worker: one process per ComfyUI that claims jobs, drives ComfyUI and stores the outputs."""
