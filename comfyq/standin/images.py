"""Images without tensors: an image batch is a list of lazy frame recipes (source + operations) that are
rendered with Pillow only when saved, so pixels depend on the graph's inputs yet nothing big is held."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageOps
from PIL.PngImagePlugin import PngInfo

from comfyq.standin.paths import is_inside

logger = logging.getLogger(__name__)

RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Frame:
    """One image of a batch: how to produce its pixels, and its size after all operations."""

    width: int
    height: int
    source: tuple[Any, ...]  # ("fill", rgb) | ("pattern", hex digest) | ("file", path)
    ops: tuple[tuple[Any, ...], ...] = ()

    def then(self, op: tuple[Any, ...], width: int | None = None, height: int | None = None) -> Frame:
        return Frame(width or self.width, height or self.height, self.source, (*self.ops, op))


def fill_frames(width: int, height: int, batch: int, color: int) -> list[Frame]:
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return [Frame(width, height, ("fill", rgb)) for _ in range(batch)]


def pattern_frames(width: int, height: int, batch: int, digest: str) -> list[Frame]:
    """Frames whose pixels are a pattern derived from `digest` (and the index in the batch)."""
    return [
        Frame(width, height, ("pattern", hashlib.sha256(f"{digest}:{i}".encode()).hexdigest()))
        for i in range(batch)
    ]


def render(frame: Frame) -> Image.Image:
    """The RGB pixels of a frame."""
    kind = frame.source[0]
    if kind == "fill":
        image = Image.new("RGB", _source_size(frame), tuple(frame.source[1]))
    elif kind == "pattern":
        image = _pattern(_source_size(frame), frame.source[1])
    elif kind == "file":
        with Image.open(frame.source[1]) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    else:
        raise ValueError(f"unknown frame source {kind!r}")
    for op in frame.ops:
        image = _apply(image, op)
    return image


def _source_size(frame: Frame) -> tuple[int, int]:
    """Size before any resizing operation (the first `scale` op records it)."""
    for op in frame.ops:
        if op[0] == "scale":
            return int(op[4]), int(op[5])
    return frame.width, frame.height


def _apply(image: Image.Image, op: tuple[Any, ...]) -> Image.Image:
    name = op[0]
    if name == "invert":
        return ImageOps.invert(image)
    if name == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=float(op[2])))
    if name == "scale":
        _, method, width, height, _src_w, _src_h, crop = op
        resample = RESAMPLE.get(method, Image.Resampling.BILINEAR)
        if crop == "center":
            return ImageOps.fit(image, (width, height), method=resample)
        return image.resize((width, height), resample=resample)
    raise ValueError(f"unknown image operation {name!r}")


def _pattern(size: tuple[int, int], digest: str) -> Image.Image:
    """Background colour plus rectangles and an ellipse, all placed and coloured by the digest bytes."""
    data = bytes.fromhex(digest) * 2
    width, height = size
    image = Image.new("RGB", size, (data[0], data[1], data[2]))
    draw = ImageDraw.Draw(image)
    for i in range(6):
        chunk = data[3 + i * 5 : 8 + i * 5]
        x0 = chunk[0] * width // 256
        y0 = chunk[1] * height // 256
        x1 = x0 + max(1, chunk[2] * width // 512)
        y1 = y0 + max(1, chunk[3] * height // 512)
        draw.rectangle((x0, y0, x1, y1), fill=(chunk[4], chunk[2], chunk[0]))
    draw.ellipse(
        (width // 4, height // 4, width * 3 // 4, height * 3 // 4),
        outline=(data[40], data[41], data[42]),
        width=max(1, min(width, height) // 32),
    )
    return image


def add_grain(image: Image.Image, seed: str) -> Image.Image:
    """Blend in seeded noise, like the grain of a real diffusion render."""
    noise = Image.frombytes("RGB", image.size, random.Random(seed).randbytes(image.width * image.height * 3))
    return Image.blend(image, noise, 0.5)


def png_bytes(image: Image.Image, text: dict[str, str] | None = None, compress_level: int = 4) -> bytes:
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def expand_prefix(prefix: str, width: int, height: int) -> str:
    """The %width%, %height% and %year%..%second% substitutions SaveImage applies to its prefix."""
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    values = {
        "width": str(width),
        "height": str(height),
        "year": str(now.tm_year),
        "month": f"{now.tm_mon:02d}",
        "day": f"{now.tm_mday:02d}",
        "hour": f"{now.tm_hour:02d}",
        "minute": f"{now.tm_min:02d}",
        "second": f"{now.tm_sec:02d}",
    }
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    return prefix


class OutsideOutputDir(Exception):
    """A filename_prefix pointing outside the directory images are saved in."""


def save_location(base: Path, prefix: str) -> tuple[Path, str, str, int]:
    """(folder, file stem, subfolder as reported, first free counter) for a SaveImage prefix.
    The counter continues after the highest `<stem>_<NNNNN>_...` already in the folder."""
    normalized = os.path.normpath(prefix)
    subfolder = os.path.dirname(normalized)
    stem = os.path.basename(normalized)
    folder = base / subfolder
    if not is_inside(base, folder):
        raise OutsideOutputDir(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}\n         output_dir: {base}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d+)_")
    highest = 0
    for name in os.listdir(folder):
        match = pattern.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return folder, stem, subfolder, highest + 1


def save_frames(
    frames: list[Frame], base: Path, prefix: str, kind: str, text: dict[str, str] | None, grain: bool = False
) -> list[dict[str, str]]:
    """Render and write `frames` as `<prefix>_<counter:05d>_.png`; returns the ComfyUI image records.
    With grain, deterministic noise makes the PNG about as large as a real render (barely compressible)."""
    if not frames:
        return []
    prefix = expand_prefix(prefix, frames[0].width, frames[0].height)
    folder, stem, subfolder, counter = save_location(base, prefix)
    records = []
    for batch_number, frame in enumerate(frames):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        image = render(frame)
        if grain:
            image = add_grain(image, f"{prefix}/{counter}")
        data = png_bytes(image, text)
        (folder / name).write_bytes(data)
        logger.debug("saved %s (%d bytes)", folder / name, len(data))
        records.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return records


def png_text_for(graph: dict[str, Any], extra_data: dict[str, Any]) -> dict[str, str]:
    """The metadata ComfyUI embeds in saved PNGs: the API graph and any extra_pnginfo entries."""
    text = {"prompt": json.dumps(graph)}
    extra = extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        for key, value in extra.items():
            text[str(key)] = json.dumps(value)
    return text


def write_example_png(path: Path) -> None:
    """The sample image ComfyUI ships in its input directory, so `example.png` validates."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(_pattern((64, 64), hashlib.sha256(b"example").hexdigest())))
