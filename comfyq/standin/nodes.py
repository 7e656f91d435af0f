"""What each supported node class does when executed: opaque tokens for models and conditioning, lazy
frames for images, real PNG files for SaveImage/PreviewImage and binary frames for SaveImageWebsocket."""

from __future__ import annotations

import asyncio
import logging
import random
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from comfyq.standin import images
from comfyq.standin.config import Config
from comfyq.standin.images import Frame
from comfyq.standin.paths import resolve_input_image

logger = logging.getLogger(__name__)

# Classes whose result must never be served from the cache (ComfyUI's SaveImageWebsocket reports
# itself as always changed).
NEVER_CACHED = frozenset({"SaveImageWebsocket"})


@dataclass(frozen=True)
class Token:
    """Stand-in for a model, CLIP, VAE, conditioning...: only its kind and where it came from."""

    kind: str
    digest: str


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    batch: int
    digest: str


@dataclass(frozen=True)
class Mask:
    width: int
    height: int
    batch: int


@dataclass
class NodeResult:
    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


ProgressFn = Callable[[int, int, bytes | None], Awaitable[None]]


@dataclass
class NodeContext:
    """What a node may use while it runs. `progress` reports a step (and checks for an interrupt)."""

    config: Config
    prompt_id: str
    node_id: str
    signature: str
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    progress: ProgressFn
    png_text: dict[str, str] = field(default_factory=dict)

    async def in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)


class NodeRuntimeError(RuntimeError):
    """A failure inside a node, reported as execution_error with `reported_type` as exception_type."""

    def __init__(self, message: str, reported_type: str = "RuntimeError") -> None:
        super().__init__(message)
        self.reported_type = reported_type


NodeFn = Callable[[NodeContext, dict[str, Any]], Awaitable[NodeResult]]
REGISTRY: dict[str, NodeFn] = {}


def node(class_type: str) -> Callable[[NodeFn], NodeFn]:
    def register(func: NodeFn) -> NodeFn:
        REGISTRY[class_type] = func
        return func

    return register


def _tokens(ctx: NodeContext, *kinds: str) -> NodeResult:
    return NodeResult(tuple(Token(kind, f"{ctx.signature}:{i}") for i, kind in enumerate(kinds)))


@node("CheckpointLoaderSimple")
async def checkpoint_loader(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return _tokens(ctx, "MODEL", "CLIP", "VAE")


@node("CLIPTextEncode")
async def clip_text_encode(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return _tokens(ctx, "CONDITIONING")


@node("CLIPSetLastLayer")
async def clip_set_last_layer(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return _tokens(ctx, "CLIP")


@node("LoraLoader")
async def lora_loader(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return _tokens(ctx, "MODEL", "CLIP")


@node("ControlNetLoader")
async def controlnet_loader(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return _tokens(ctx, "CONTROL_NET")


@node("ControlNetApplyAdvanced")
async def controlnet_apply(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return _tokens(ctx, "CONDITIONING", "CONDITIONING")


@node("UpscaleModelLoader")
async def upscale_model_loader(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return _tokens(ctx, "UPSCALE_MODEL")


@node("EmptyLatentImage")
async def empty_latent(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return NodeResult((Latent(inputs["width"], inputs["height"], inputs["batch_size"], ctx.signature),))


async def _sample(ctx: NodeContext, latent: Latent, steps: int) -> NodeResult:
    for step in range(steps):
        await ctx.progress(step, steps, None)
        await asyncio.sleep(ctx.config.sampler_step_seconds)
    return NodeResult((Latent(latent.width, latent.height, latent.batch, ctx.signature),))


@node("KSampler")
async def ksampler(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return await _sample(ctx, inputs["latent_image"], inputs["steps"])


@node("KSamplerAdvanced")
async def ksampler_advanced(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    steps = max(0, min(inputs["steps"], inputs["end_at_step"]) - inputs["start_at_step"])
    return await _sample(ctx, inputs["latent_image"], steps)


@node("VAEDecode")
async def vae_decode(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    latent: Latent = inputs["samples"]
    return NodeResult((images.pattern_frames(latent.width, latent.height, latent.batch, ctx.signature),))


@node("VAEEncode")
async def vae_encode(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    frames: list[Frame] = inputs["pixels"]
    first = frames[0]
    return NodeResult((Latent(first.width // 8 * 8, first.height // 8 * 8, len(frames), ctx.signature),))


@node("EmptyImage")
async def empty_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    frames = images.fill_frames(inputs["width"], inputs["height"], inputs["batch_size"], inputs["color"])
    return NodeResult((frames,))


@node("ImageInvert")
async def image_invert(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return NodeResult(([frame.then(("invert",)) for frame in inputs["image"]],))


@node("ImageBlur")
async def image_blur(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    frames: list[Frame] = inputs["image"]
    radius: int = inputs["blur_radius"]
    if frames and radius > 0:
        # A reflect pad of `radius` needs every padded dimension to be larger than the padding.
        first = frames[0]
        shape = f"[{len(frames)}, 3, {first.height}, {first.width}]"
        for dimension, size in ((3, first.width), (2, first.height)):
            if radius >= size:
                raise NodeRuntimeError(
                    "Argument #4: Padding size should be less than the corresponding input dimension, "
                    f"but got: padding ({radius}, {radius}) at dimension {dimension} of input {shape}\n"
                )
    if radius == 0:
        return NodeResult((frames,))
    return NodeResult(([frame.then(("blur", radius, inputs["sigma"])) for frame in frames],))


def _scaled(frames: list[Frame], method: str, width: int, height: int, crop: str) -> list[Frame]:
    out = []
    for frame in frames:
        w, h = width, height
        if w == 0 and h == 0:
            out.append(frame)
            continue
        if w == 0:
            w = max(1, round(frame.width * h / frame.height))
        elif h == 0:
            h = max(1, round(frame.height * w / frame.width))
        out.append(frame.then(("scale", method, w, h, frame.width, frame.height, crop), w, h))
    return out


@node("ImageScale")
async def image_scale(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    frames = _scaled(
        inputs["image"], inputs["upscale_method"], inputs["width"], inputs["height"], inputs["crop"]
    )
    return NodeResult((frames,))


@node("ImageScaleBy")
async def image_scale_by(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    frames: list[Frame] = inputs["image"]
    scale: float = inputs["scale_by"]
    method: str = inputs["upscale_method"]
    out = []
    for frame in frames:
        width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
        out.extend(_scaled([frame], method, width, height, "disabled"))
    return NodeResult((out,))


@node("ImageUpscaleWithModel")
async def image_upscale_with_model(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    frames: list[Frame] = inputs["image"]
    out = [_scaled([f], "lanczos", f.width * 4, f.height * 4, "disabled")[0] for f in frames]
    return NodeResult((out,))


@node("ImageBatch")
async def image_batch(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    first: list[Frame] = inputs["image1"]
    second: list[Frame] = inputs["image2"]
    if first and second and (first[0].width, first[0].height) != (second[0].width, second[0].height):
        second = _scaled(second, "bilinear", first[0].width, first[0].height, "center")
    return NodeResult((first + second,))


@node("RepeatImageBatch")
async def repeat_image_batch(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return NodeResult((list(inputs["image"]) * inputs["amount"],))


@node("LoadImage")
async def load_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    path = resolve_input_image(ctx.config, str(inputs["image"]))
    if path is None:
        raise FileNotFoundError(f"Invalid image file: {inputs['image']}")
    width, height = await ctx.in_thread(_image_size, path)
    return NodeResult(([Frame(width, height, ("file", str(path)))], Mask(width, height, 1)))


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as opened:
        size: tuple[int, int] = ImageOps.exif_transpose(opened).size
    return size


def _ui_images(records: list[dict[str, str]]) -> NodeResult:
    return NodeResult((), {"images": records})


@node("SaveImage")
async def save_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    try:
        records = await ctx.in_thread(
            images.save_frames,
            inputs["images"],
            ctx.config.output_dir,
            inputs["filename_prefix"],
            "output",
            ctx.png_text,
            ctx.config.grain,
        )
    except images.OutsideOutputDir as exc:
        raise NodeRuntimeError(str(exc), reported_type="Exception") from exc
    return _ui_images(records)


@node("PreviewImage")
async def preview_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    records = await ctx.in_thread(
        images.save_frames,
        inputs["images"],
        ctx.config.temp_dir,
        f"ComfyUI_temp_{suffix}",
        "temp",
        ctx.png_text,
    )
    return _ui_images(records)


@node("SaveImageWebsocket")
async def save_image_websocket(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    frames: list[Frame] = inputs["images"]
    for step, frame in enumerate(frames):
        data = await ctx.in_thread(_preview_png, frame)
        await ctx.progress(step, len(frames), data)
    return NodeResult()


def _preview_png(frame: Frame) -> bytes:
    return images.png_bytes(images.render(frame), compress_level=1)
