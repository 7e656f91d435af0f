"""ComfyUI's HTTP routes (each also under /api), answering with the status codes, content types and
JSON shapes recorded from the real server, plus the stand-in's own /standin/control for tests."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import mimetypes
import os
import sys
import uuid
from typing import Any

from aiohttp import web
from PIL import Image

from comfyq.standin import object_info
from comfyq.standin.paths import directory_for_type, is_inside, split_annotation
from comfyq.standin.services import SERVER_FEATURES, SERVICES, Services
from comfyq.standin.validation import validate_prompt
from comfyq.standin.websocket import websocket_handler

logger = logging.getLogger(__name__)

COMFYUI_VERSION = "0.3.64"
MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
    "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
]  # fmt: skip
UNSAFE_CONTENT_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def internal_error() -> web.Response:
    """The body aiohttp gives an unhandled exception, which is what ComfyUI answers for bad JSON."""
    response = web.Response(
        status=500,
        text="500 Internal Server Error\n\nServer got itself in trouble",
        content_type="text/plain",
    )
    response.force_close()
    return response


def _error_body(kind: str, message: str, details: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}


async def post_prompt(request: web.Request) -> web.Response:
    services = _services(request)
    if services.config.fail == "http_500":
        logger.warning("POST /prompt: answering 500 (--fail http_500)")
        return internal_error()
    try:
        return await _post_prompt(services, request)
    except Exception:
        logger.warning("POST /prompt: bad request body", exc_info=True)
        return internal_error()


async def _post_prompt(services: Services, request: web.Request) -> web.Response:
    data = await request.json()
    if "number" in data:
        number: float | int = float(data["number"])
    else:
        number = services.state.next_number(bool(data.get("front", False)))
    if "prompt" not in data:
        return web.json_response(_error_body("no_prompt", "No prompt provided", "No prompt provided"), status=400)
    prompt = data["prompt"]
    prompt_id = str(data.get("prompt_id", uuid.uuid4()))
    if isinstance(prompt, (list, str)) and not prompt:
        return web.json_response(_error_body("prompt_no_outputs", "Prompt has no outputs", ""), status=400)
    if not isinstance(prompt, dict):
        raise TypeError(f"prompt must be an object, got {type(prompt).__name__}")
    graph = copy.deepcopy(prompt)
    result = validate_prompt(services.config, graph)
    if not result.ok:
        logger.info("prompt rejected: %s", result.error)
        return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
    extra_data = dict(data.get("extra_data", {}))
    if "client_id" in data:
        extra_data["client_id"] = data["client_id"]
    services.state.put([number, prompt_id, graph, extra_data, result.good_outputs])
    logger.info("queued prompt %s as number %s", prompt_id, number)
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors})


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(_services(request).queue_info())


async def get_queue(request: web.Request) -> web.Response:
    state = _services(request).state
    running = [state.running] if state.running is not None else []
    return web.json_response({"queue_running": running, "queue_pending": state.pending_items()})


async def post_queue(request: web.Request) -> web.Response:
    state = _services(request).state
    data = await request.json()
    if data.get("clear"):
        state.clear_pending()
    if "delete" in data:
        state.delete_pending(list(data["delete"]))
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    services = _services(request)
    try:
        data = await request.json()
    except json.JSONDecodeError:
        data = {}
    prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
    if prompt_id:
        if services.executor.running_prompt_id() == prompt_id:
            logger.info("interrupting running prompt %s", prompt_id)
            services.executor.interrupt()
        else:
            logger.info("prompt %s is not running; nothing interrupted", prompt_id)
    else:
        logger.info("interrupting whatever runs")
        services.executor.interrupt()
    return web.Response(status=200)


async def get_history(request: web.Request) -> web.Response:
    query = request.rel_url.query
    max_items = int(query["max_items"]) if "max_items" in query else None
    offset = int(query.get("offset", -1))
    return web.json_response(_services(request).state.get_history(max_items=max_items, offset=offset))


async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    return web.json_response(_services(request).state.get_history(prompt_id=prompt_id))


async def post_history(request: web.Request) -> web.Response:
    state = _services(request).state
    data = await request.json()
    if data.get("clear"):
        state.clear_history()
    if "delete" in data:
        state.delete_history(list(data["delete"]))
    return web.Response(status=200)


async def view(request: web.Request) -> web.StreamResponse:
    config = _services(request).config
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, annotated = split_annotation(query["filename"])
    if not filename:
        return web.Response(status=400)
    if filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    base = directory_for_type(config, annotated or query.get("type", "output"))
    if base is None:
        return web.Response(status=400)
    folder = base
    if "subfolder" in query:
        folder = base / query["subfolder"]
        if not is_inside(base, folder):
            return web.Response(status=403)
    filename = os.path.basename(filename)
    path = folder / filename
    if not path.is_file():
        return web.Response(status=404)
    disposition = {"Content-Disposition": f'filename="{filename}"'}
    if "preview" in query:
        return _converted_preview(path, query["preview"], query.get("channel", ""), disposition)
    channel = query.get("channel", "rgba")
    if channel in ("rgb", "a"):
        return web.Response(body=_channel_png(path, channel), content_type="image/png", headers=disposition)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in UNSAFE_CONTENT_TYPES:
        content_type = "application/octet-stream"
    return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})


def _converted_preview(path: os.PathLike[str], preview: str, channel: str, headers: dict[str, str]) -> web.Response:
    parts = preview.split(";")
    image_format = parts[0]
    if image_format not in ("webp", "jpeg") or "a" in channel:
        image_format = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with Image.open(path) as opened:
        image: Image.Image = opened
        if image_format == "jpeg" or channel == "rgb":
            image = opened.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, quality=quality)
    return web.Response(body=buffer.getvalue(), content_type=f"image/{image_format}", headers=headers)


def _channel_png(path: os.PathLike[str], channel: str) -> bytes:
    with Image.open(path) as opened:
        if channel == "rgb":
            out = opened.convert("RGB")
        else:
            alpha = opened.getchannel("A") if opened.mode == "RGBA" else Image.new("L", opened.size, 255)
            out = Image.new("RGBA", alpha.size)
            out.putalpha(alpha)
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
    return buffer.getvalue()


async def upload_image(request: web.Request) -> web.Response:
    config = _services(request).config
    post = await request.post()
    image = post.get("image")
    if not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400)
    kind = str(post.get("type") or "input")
    base = directory_for_type(config, kind)
    if base is None:
        base, kind = config.input_dir, "input"
    subfolder = str(post.get("subfolder", ""))
    folder = base / os.path.normpath(subfolder)
    filename = image.filename
    path = folder / filename
    if not is_inside(base, path):
        return web.Response(status=400)
    data = image.file.read()
    overwrite = str(post.get("overwrite", "")) in ("true", "1")
    duplicate = False
    if not overwrite:
        stem, ext = os.path.splitext(filename)
        counter = 1
        while path.exists():
            if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
                duplicate = True
                break
            filename = f"{stem} ({counter}){ext}"
            path = folder / filename
            counter += 1
    if not duplicate:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    logger.info("upload %s -> %s (duplicate=%s)", image.filename, path, duplicate)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


async def system_stats(request: web.Request) -> web.Response:
    total, free = _memory()
    return web.json_response(
        {
            "system": {
                "os": os.name,
                "ram_total": total,
                "ram_free": free,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95",
                "python_version": sys.version,
                "pytorch_version": "0.0.0+standin",
                "embedded_python": False,
                "argv": sys.argv,
            },
            "devices": [
                {
                    "name": "cpu",
                    "type": "cpu",
                    "index": None,
                    "vram_total": total,
                    "vram_free": free,
                    "torch_vram_total": total,
                    "torch_vram_free": free,
                }
            ],
        }
    )


async def get_object_info(request: web.Request) -> web.Response:
    return web.json_response(object_info.all_node_info(_services(request).config))


async def get_object_info_node(request: web.Request) -> web.Response:
    name = request.match_info["node_class"]
    info = object_info.node_info(_services(request).config, name)
    return web.json_response({name: info} if info is not None else {})


async def post_free(request: web.Request) -> web.Response:
    data = await request.json()
    logger.info("free: %s", data)
    return web.Response(status=200)


async def get_features(request: web.Request) -> web.Response:
    return web.json_response(SERVER_FEATURES)


async def get_models(request: web.Request) -> web.Response:
    return web.json_response(MODEL_FOLDERS)


async def get_models_in_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        return web.Response(status=404)
    config = _services(request).config
    return web.json_response(list(config.checkpoints) if folder == "checkpoints" else [])


async def get_embeddings(request: web.Request) -> web.Response:
    return web.json_response([])


async def get_control(request: web.Request) -> web.Response:
    return web.json_response(_services(request).config.control_view())


async def get_stats(request: web.Request) -> web.Response:
    """Busy time of the executor (the stand-in's own route): busy_seconds / (last_end - first_start)."""
    return web.json_response(_services(request).executor.stats.view())


async def delete_stats(request: web.Request) -> web.Response:
    _services(request).executor.stats.reset()
    return web.json_response(_services(request).executor.stats.view())


async def post_control(request: web.Request) -> web.Response:
    config = _services(request).config
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        config.apply_control(changes)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(config.control_view())


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/prompt", post_prompt),
    ("GET", "/prompt", get_prompt),
    ("GET", "/queue", get_queue),
    ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("GET", "/history", get_history),
    ("GET", "/history/{prompt_id}", get_history_item),
    ("POST", "/history", post_history),
    ("GET", "/view", view),
    ("POST", "/upload/image", upload_image),
    ("GET", "/system_stats", system_stats),
    ("GET", "/object_info", get_object_info),
    ("GET", "/object_info/{node_class}", get_object_info_node),
    ("POST", "/free", post_free),
    ("GET", "/features", get_features),
    ("GET", "/models", get_models),
    ("GET", "/models/{folder}", get_models_in_folder),
    ("GET", "/embeddings", get_embeddings),
    ("GET", "/ws", websocket_handler),
    ("GET", "/standin/control", get_control),
    ("POST", "/standin/control", post_control),
    ("GET", "/standin/stats", get_stats),
    ("DELETE", "/standin/stats", delete_stats),
]


def add_routes(app: web.Application) -> None:
    """Register every route at its own path and under /api, as ComfyUI does."""
    for prefix in ("", "/api"):
        for method, path, handler in ROUTES:
            app.router.add_route(method, prefix + path, handler)
