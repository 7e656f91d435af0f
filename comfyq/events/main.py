"""Entry point of the events process (`comfyq events`): one JobEventFeed thread (the LISTEN connection) feeding
one Hub on one asyncio loop, which serves every stream and wait of the process. Runs until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import ClientSession, ClientTimeout, web

from comfyq.connect import open_database
from comfyq.events.app import EventsServices, build_app
from comfyq.events.auth import TokenCache
from comfyq.events.hub import Hub
from comfyq.job_events import EventLog, JobEvent, JobEventFeed
from comfyq.logs import configure
from comfyq.settings import Settings
from comfyq.storage import build_storage
from comfyq.stream_tokens import StreamTokens

log = logging.getLogger(__name__)
READY_LINE = "comfyq events listening on http://%s:%d"
API_TIMEOUT_SECONDS = 60.0  # POST /jobs?wait=: a submission of the largest body the API takes
SHUTDOWN_SECONDS = 2.0
READY_CHECK_SECONDS = 0.05  # open streams are cut after this on SIGTERM; clients reconnect with Last-Event-ID


def split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(settings: Settings, bind: str) -> int:
    configure(settings.log_level, settings.log_format)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(_serve(settings, *split_bind(bind)))
    return 0


async def _serve(settings: Settings, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    db = open_database(settings, application_name="comfyq-events", start_embedded=False)
    hub = Hub(settings.events_subscriber_buffer)
    events = EventLog(db)

    def publish(batch: list[JobEvent], position: int) -> None:
        loop.call_soon_threadsafe(hub.publish, batch, position)

    feed = JobEventFeed(events, publish, gap_wait=settings.events_gap_wait_seconds,
                        poll_seconds=settings.events_poll_seconds).start()
    services = EventsServices(settings=settings, db=db, events=events, hub=hub, tokens=TokenCache(db, settings),
                              stream_tokens=StreamTokens(settings.events_stream_secret,
                                                         settings.events_stream_token_seconds),
                              storage=build_storage(settings),
                              api=ClientSession(timeout=ClientTimeout(total=API_TIMEOUT_SECONDS)))
    runner = web.AppRunner(build_app(services), handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        # Streams opened before the feed knows its position could not resume exactly: listen first (a database
        # that is down at start keeps the port closed until it answers, or until SIGTERM).
        while not feed.ready.is_set():
            if stop.is_set():
                return
            await asyncio.sleep(READY_CHECK_SECONDS)
        site = web.TCPSite(runner, host, port, shutdown_timeout=SHUTDOWN_SECONDS)
        await site.start()
        bound = runner.addresses[0]
        log.info(READY_LINE, bound[0], bound[1], extra={"action": "events_started"})
        await stop.wait()
    finally:
        log.info("comfyq events stopping", extra={"action": "events_stopping"})
        await runner.cleanup()
        await services.api.close()
        await loop.run_in_executor(None, feed.close)
        db.close()
