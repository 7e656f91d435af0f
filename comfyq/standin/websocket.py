"""GET /ws?clientId=ID: registers the socket under its client id, greets it with `status` (and the
running node on a reconnect), and answers the client's feature_flags announcement."""

from __future__ import annotations

import json
import logging
import uuid

from aiohttp import WSMsgType, web

from comfyq.standin.services import SERVER_FEATURES, SERVICES

logger = logging.getLogger(__name__)


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    services = request.app[SERVICES]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
    hub = services.hub
    client = hub.register(sid, ws, request)
    logger.info("websocket connected: %s", sid)
    try:
        hub.send("status", {"status": services.queue_info(), "sid": sid}, sid)
        executor = services.executor
        if executor.current_client_id == sid and executor.last_node_id is not None:
            hub.send("executing", {"node": executor.last_node_id}, sid)
        first_message = True
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                try:
                    data = json.loads(message.data)
                except ValueError:
                    logger.warning("websocket %s: ignoring non-JSON message", sid)
                    continue
                if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data") or {}
                    client.supports_preview_metadata = bool(flags.get("supports_preview_metadata"))
                    hub.send("feature_flags", SERVER_FEATURES, sid)
                first_message = False
            elif message.type == WSMsgType.ERROR:
                logger.info("websocket %s closed with error %r", sid, ws.exception())
    finally:
        hub.unregister(client)
        logger.info("websocket disconnected: %s", sid)
    return ws
