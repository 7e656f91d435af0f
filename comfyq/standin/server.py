"""Entry point of the ComfyUI stand-in: parses the CLI, waits the start-up delay (the port refuses
connections meanwhile, as a real ComfyUI loading its nodes does), builds the aiohttp app, binds (port 0 = any
free port), announces the real URL on stdout and exits cleanly with status 0 on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from comfyq.standin.config import DEFAULT_CHECKPOINTS, FAIL_MODES, Config
from comfyq.standin.images import write_example_png
from comfyq.standin.routes import add_routes
from comfyq.standin.services import MAX_UPLOAD_SIZE, SERVICES, Services

logger = logging.getLogger(__name__)


def startup_delay(text: str) -> tuple[float, float]:
    """`SECONDS` or `MIN-MAX` -> (min, max); argparse type for --startup-delay."""
    low_text, dash, high_text = text.strip().partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if dash else low
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN-MAX, got {text!r}") from None
    if not 0 <= low <= high or high == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX (finite), got {text!r}")
    return low, high


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="comfyui-standin",
        description="A GPU-free stand-in for ComfyUI that speaks its HTTP + WebSocket protocol.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188, help="0 = a free port chosen by the OS")
    parser.add_argument(
        "--output-dir", type=Path, help="where SaveImage writes (default: a temp dir, removed at exit)"
    )
    parser.add_argument(
        "--input-dir", type=Path, help="uploads and LoadImage files (default: a temp dir, removed at exit)"
    )
    parser.add_argument("--node-seconds", type=float, default=0.02, help="run time of each executed node")
    parser.add_argument("--sampler-step-seconds", type=float, default=0.005, help="KSampler time per step")
    parser.add_argument(
        "--checkpoints",
        default=",".join(DEFAULT_CHECKPOINTS),
        help="comma-separated choices for CheckpointLoaderSimple.ckpt_name",
    )
    parser.add_argument("--fail", choices=FAIL_MODES, default="none", help="failure to inject")
    parser.add_argument("--grain", action="store_true",
                        help="add seeded noise to saved images so they are as large as real renders")
    parser.add_argument(
        "--startup-delay", type=startup_delay, default=(0.0, 0.0), metavar="SECONDS|MIN-MAX",
        help="wait this long (a range: drawn uniformly) before binding the port, which refuses connections "
        "meanwhile, like ComfyUI loading its nodes (6-13 s after a kill -9)",
    )
    parser.add_argument("--ws-silent", action="store_true",
                        help="keep WebSockets open but send them nothing (events are dropped); HTTP works "
                        "as usual. Also the control key ws_silent")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.node_seconds < 0 or args.sampler_step_seconds < 0:
        parser.error("timings must not be negative")
    return args


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=MAX_UPLOAD_SIZE)
    services = Services.create(config)
    app[SERVICES] = services
    add_routes(app)

    async def start_executor(app: web.Application) -> None:
        app[EXECUTOR_TASK] = asyncio.create_task(services.executor.run_forever(), name="executor")

    async def close_sockets(app: web.Application) -> None:
        await services.hub.close_all()

    async def stop_executor(app: web.Application) -> None:
        task = app[EXECUTOR_TASK]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.on_startup.append(start_executor)
    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(stop_executor)
    return app


EXECUTOR_TASK = web.AppKey("executor_task", asyncio.Task)


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(config: Config, host: str, port: int, delay: float = 0.0) -> None:
    """Serve until SIGTERM/SIGINT. The signals are handled from the start, so a stand-in still in its
    start-up delay stops at once (without binding or announcing)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if delay > 0:
            logger.info("start-up delay: the port opens in %.2f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                logger.info("stopped during the start-up delay")
                return
        await _serve_until(config, host, port, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _serve_until(config: Config, host: str, port: int, stop: asyncio.Event) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        sock = _bind(host, port)
        site = web.SockSite(runner, sock, shutdown_timeout=1.0)
        await site.start()
        actual_port = sock.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        print(f"comfyui-standin listening on http://{shown_host}:{actual_port}", flush=True)
        logger.info("output dir %s, input dir %s", config.output_dir, config.input_dir)
        if config.ws_silent:
            logger.info("websockets are silent (--ws-silent)")
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    created: list[Path] = []

    def directory(given: Path | None, label: str) -> Path:
        if given is not None:
            given.mkdir(parents=True, exist_ok=True)
            return given.resolve()
        made = Path(tempfile.mkdtemp(prefix=f"comfyui-standin-{label}-"))
        created.append(made)
        return made

    config = Config(
        output_dir=directory(args.output_dir, "output"),
        input_dir=directory(args.input_dir, "input"),
        temp_dir=directory(None, "temp"),
        node_seconds=args.node_seconds,
        sampler_step_seconds=args.sampler_step_seconds,
        checkpoints=[name.strip() for name in args.checkpoints.split(",") if name.strip()],
        fail=args.fail,
        grain=args.grain,
        ws_silent=args.ws_silent,
    )
    delay = random.uniform(*args.startup_delay)
    write_example_png(config.input_dir / "example.png")
    try:
        asyncio.run(serve(config, args.host, args.port, delay))
    finally:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
