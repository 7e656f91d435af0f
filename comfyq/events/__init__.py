"""The events process (`comfyq events`): live job streams over SSE and WebSocket and bounded waits, served on
one asyncio loop apart from the API's sync gunicorn workers (docs/events.md)."""
