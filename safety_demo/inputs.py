"""Checking what users hand us: images and prompts, with limits and clear messages.

Everything here raises `InputError` with a sentence a user can act on; the CLI prints it and
the app shows it, never a traceback. Limits are environment-configurable for operators.
"""
from __future__ import annotations

import io
import os
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class InputError(ValueError):
    """Bad user input; the message is meant for the user."""


def shown(value: object, limit: int = 80) -> str:
    """`value` as a message may echo it: its repr, at most `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = _env_int("SAFETY_DEMO_MAX_IMAGE_PIXELS", 64_000_000)  # refuse above (bombs)
    max_image_side: int = _env_int("SAFETY_DEMO_MAX_IMAGE_SIDE", 1024)  # downscale above, keep aspect
    max_prompt_chars: int = _env_int("SAFETY_DEMO_MAX_PROMPT_CHARS", 4000)  # refuse above
    max_prompt_tokens: int = _env_int("SAFETY_DEMO_MAX_PROMPT_TOKENS", 1000)  # refuse above, in the model's own tokens
    max_new_tokens: int = _env_int("SAFETY_DEMO_MAX_NEW_TOKENS", 512)  # upper bound of the knob
    max_upload_mb: int = _env_int("SAFETY_DEMO_MAX_UPLOAD_MB", 10)  # the app refuses larger uploads
    max_request_seconds: int = _env_int("SAFETY_DEMO_MAX_REQUEST_SECONDS", 300)  # a run ends cleanly here, with what it has


LIMITS = Limits()


def load_image(source: str | Path | bytes | Image.Image | np.ndarray, limits: Limits = LIMITS) -> Image.Image:
    """Open, validate and normalise an image to RGB, EXIF-rotated, at most `max_image_side` px."""
    if source is None:
        raise InputError("No image given. Upload an image (PNG, JPEG, WebP, ...).")
    if isinstance(source, np.ndarray):
        return _normalise(Image.fromarray(_to_uint8(source)), limits)
    if isinstance(source, Image.Image):
        return _normalise(source, limits)
    name = "the upload" if isinstance(source, bytes) else Path(source).name
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise InputError(f"Image file not found: {source}")
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(data)
            _check_size(image.size, limits)
            image.load()  # decode now: truncated files fail here, not later inside the model
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{name} is too large to decode safely (limit {limits.max_image_pixels:,} pixels).")
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image PIL can read. Upload a PNG, JPEG, WebP, GIF or BMP file.")
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name} could not be decoded (truncated or corrupt image: {exc}).")
    return _normalise(image, limits)


def _check_size(size: tuple[int, int], limits: Limits) -> None:
    w, h = size
    if w * h > limits.max_image_pixels:
        raise InputError(
            f"Image is {w}×{h} = {w * h:,} pixels; the limit is {limits.max_image_pixels:,} "
            "(SAFETY_DEMO_MAX_IMAGE_PIXELS). Downscale it and try again."
        )
    if w < 1 or h < 1:
        raise InputError("Image has no pixels.")


def _normalise(image: Image.Image, limits: Limits) -> Image.Image:
    _check_size(image.size, limits)
    if getattr(image, "is_animated", False):
        image.seek(0)  # animated GIF/WebP: the first frame stands for the image
    image = ImageOps.exif_transpose(image)  # phone photos: respect the orientation tag
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = max(float(arr.max()), 1.0)
        image = Image.fromarray((arr / top * 255.0).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)  # transparent areas read as white paper
    image = image.convert("RGB")
    if max(image.size) > limits.max_image_side:
        image = image.copy()
        image.thumbnail((limits.max_image_side, limits.max_image_side), Image.Resampling.LANCZOS)
    return image


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.clip(arr, 0, 255).astype(np.uint8)


INVISIBLE = ("Cc", "Cf", "Cs", "Co")  # control, format (zero-width, bidi overrides), surrogate, private use


def invisible_count(prompt: str) -> int:
    """How many invisible or direction-changing characters `clean_prompt` removes (newlines and tabs stay)."""
    return sum(1 for c in prompt if c not in "\n\t" and unicodedata.category(c) in INVISIBLE)


def check_prompt_tokens(n_tokens: int, limits: Limits = LIMITS) -> None:
    """Refuse a prompt longer than the limit in the model's own tokens (what prefill costs)."""
    if n_tokens > limits.max_prompt_tokens:
        raise InputError(
            f"The prompt is {n_tokens:,} tokens for this model; the limit is {limits.max_prompt_tokens:,} "
            "(SAFETY_DEMO_MAX_PROMPT_TOKENS). Shorten it and try again."
        )


def clean_prompt(prompt: str | None, limits: Limits = LIMITS) -> str:
    """Strip invisible characters (controls, zero-width and bidi format characters) and surrounding
    space; refuse empty or over-long prompts."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InputError("The prompt must be text.")
    if len(prompt) > limits.max_prompt_chars:
        raise InputError(
            f"The prompt is {len(prompt):,} characters; the limit is {limits.max_prompt_chars:,} "
            "(SAFETY_DEMO_MAX_PROMPT_CHARS). Shorten it and try again."
        )
    kept = "".join(c for c in prompt if c in "\n\t" or unicodedata.category(c) not in INVISIBLE)
    kept = kept.strip()
    if not kept:
        raise InputError("The prompt is empty. Type a question or instruction about the image.")
    return kept


def add_gaussian_noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """ṽ = clip(v + ε, 0, 1), ε ~ N(0, σ²) in [0, 1] RGB pixel space, before any processor."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    noised = np.clip(pixels + rng.normal(0.0, sigma, size=pixels.shape).astype(np.float32), 0.0, 1.0)
    return Image.fromarray(np.round(noised * 255.0).astype(np.uint8))
