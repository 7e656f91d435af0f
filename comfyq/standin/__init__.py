"""The ComfyUI stand-in: a model-free server that speaks ComfyUI's HTTP and WebSocket protocol, for the demo,
the tests and the benchmarks (extra comfyq[standin])."""
