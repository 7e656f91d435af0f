"""Downloads LoadImage inputs given as URLs (guarded, size-capped, type-checked) and uploads them to ComfyUI,
which can only load images from its own input directory."""

from __future__ import annotations

import copy
import hashlib
import logging
import posixpath
import re
import time
import urllib.parse
from typing import Any

import requests
import urllib3.exceptions

from comfyq.errors import PermanentFailure, TransientFailure
from comfyq.netguard import AddressGuard, UnsafeUrl, display_url
from comfyq.worker.comfy_client import ComfyClient

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
MAX_NAME_CHARS = 80
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class InputImageRejected(PermanentFailure):
    """The image URL can never work: refused by the guard, too large, not an image, or a 4xx."""

    error_type = "input_image_rejected"


class InputImageUnavailable(TransientFailure):
    """The image host could not be reached, timed out or answered 5xx; a later attempt may succeed."""

    error_type = "input_image_unavailable"


def looks_like(content_type: str, data: bytes) -> bool:
    """True when the first bytes are the magic number of content_type."""
    if content_type == "image/png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if content_type == "image/jpeg":
        return data.startswith(b"\xff\xd8\xff")
    if content_type == "image/gif":
        return data[:6] in (b"GIF87a", b"GIF89a")
    if content_type == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return False


def upload_name(url: str, data: bytes, content_type: str) -> str:
    """A file name ComfyUI accepts: the URL's last path segment reduced to [A-Za-z0-9._-] with the extension
    of the actual content type, or a content hash when the path gives nothing usable."""
    segment = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    stem = _UNSAFE_NAME_CHARS.sub("_", posixpath.splitext(segment)[0]).strip("._-")[:MAX_NAME_CHARS]
    return (stem or "input-" + hashlib.sha256(data).hexdigest()[:16]) + EXTENSIONS[content_type]


def _rejected(url: str, reason: str, message: str, **details: Any) -> InputImageRejected:
    return InputImageRejected(f"input image {url}: {message}", details={"url": url, "reason": reason, **details})


def _unavailable(url: str, reason: str, message: str, **details: Any) -> InputImageUnavailable:
    return InputImageUnavailable(f"input image {url}: {message}", details={"url": url, "reason": reason, **details})


def download(url: str, guard: AddressGuard, session: requests.Session, *, max_bytes: int,
             timeout: float) -> tuple[bytes, str]:
    """The image bytes and their content type. Stops reading once more than max_bytes have arrived, and gives
    up when the whole download takes longer than timeout (requests' timeout bounds each socket read only)."""
    shown = display_url(url)
    deadline = time.monotonic() + timeout
    try:
        response = guard.request(session, "GET", url, stream=True, timeout=timeout)
    except UnsafeUrl as exc:
        raise _rejected(shown, "unsafe_url", exc.message, guard=exc.details) from exc
    except (requests.RequestException, OSError) as exc:
        raise _unavailable(shown, "connection", f"could not be fetched ({exc.__class__.__name__})") from exc
    with response:
        status = response.status_code
        if status >= 500:
            raise _unavailable(shown, "http_status", f"the server answered {status}", status=status)
        if status != 200:
            raise _rejected(shown, "http_status", f"the server answered {status}", status=status)
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type not in EXTENSIONS:
            raise _rejected(shown, "content_type", f"content type {content_type or '(none)'!r} is not "
                            f"one of {', '.join(EXTENSIONS)}", content_type=content_type)
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _rejected(shown, "too_large", f"{declared} bytes is more than the limit of {max_bytes}",
                            max_bytes=max_bytes)
        body = bytearray()
        try:
            # read1 returns whatever has arrived, so a server dripping bytes still meets the deadline check.
            while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
                body += chunk
                if len(body) > max_bytes:
                    raise _rejected(shown, "too_large", f"more than the limit of {max_bytes} bytes",
                                    max_bytes=max_bytes)
                if time.monotonic() > deadline:
                    raise _unavailable(shown, "timeout", f"download took longer than {timeout:g}s")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _unavailable(shown, "connection", f"download broke off ({exc.__class__.__name__})") from exc
    data = bytes(body)
    if not looks_like(content_type, data):
        raise _rejected(shown, "not_an_image", f"the bytes are not a {content_type} image",
                        content_type=content_type)
    return data, content_type


def localize_images(graph: dict[str, Any], comfy: ComfyClient, guard: AddressGuard, *, max_bytes: int,
                    timeout: float, session: requests.Session | None = None) -> dict[str, Any]:
    """A copy of graph whose LoadImage nodes with an http(s) URL as `image` name an uploaded file instead.
    The same URL in several nodes is fetched once. Pass session=guard.session() to reuse connections; any
    other session loses the guard's connect-time pinning (DNS rebinding) and keeps only the URL checks."""
    result = copy.deepcopy(graph)
    uploaded: dict[str, str] = {}
    own_session = session is None
    http = session if session is not None else guard.session()
    try:
        for node_id, node in result.items():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(node, dict) or node.get("class_type") != "LoadImage" or not isinstance(inputs, dict):
                continue
            image = inputs.get("image")
            if not isinstance(image, str) or not _URL.match(image):
                continue
            if not image.lower().startswith(("http://", "https://")):
                raise _rejected(display_url(image), "scheme", "only http and https URLs can be fetched")
            if image not in uploaded:
                data, content_type = download(image, guard, http, max_bytes=max_bytes, timeout=timeout)
                uploaded[image] = comfy.upload_image(upload_name(image, data, content_type), data, content_type)
                log.info("input image %s of node %s uploaded as %s (%d bytes)", display_url(image), node_id,
                         uploaded[image], len(data), extra={"action": "input_image"})
            inputs["image"] = uploaded[image]
    finally:
        if own_session:
            http.close()
    return result
