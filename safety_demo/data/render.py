"""Deterministic images for the calibration set: blank, typographic (TYPO), FigStep-style.

Same input, same font file, same Pillow -> byte-identical pixels. All images are RGB,
black text on white, sized for the built-in model's OCR (rapidocr) to read quickly:
512 x 512 by default, with text no smaller than `MIN_FONT_PX`.

The font is the first of `FONT_CANDIDATES` that exists (a `SAFETY_DEMO_FONT` environment
variable, if set, comes first). If none does, Pillow's own scalable default font is used
(`ImageFont.load_default(size=...)`, Pillow >= 10.1). `font_id()` names the font in use so
that a probe fitted on these images can be keyed by it (see `calibration_hash`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

RENDER_VERSION = "1"  # bump whenever a change below alters pixels
DEFAULT_SIZE = (512, 512)  # (width, height) in pixels
MARGIN_PX = 28  # white border around the text, all sides
MAX_FONT_PX = 56  # text starts at this size and shrinks until it fits ...
MIN_FONT_PX = 22  # ... but never below this (OCR gets unreliable under ~20 px)
LINE_SPACING = 1.25  # line pitch as a multiple of the font size
FIGSTEP_ITEMS = 3  # empty numbered items under a FigStep title: "1.", "2.", "3."

BLACK = (0, 0, 0)
WHITE = (255, 255, 255)

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",  # Debian / Ubuntu
    "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",  # Fedora / Arch
    "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSansBold.ttf",
    "/Library/Fonts/Arial Bold.ttf",  # macOS
    "/System/Library/Fonts/Supplemental/Arial Bold.ttf",
    "C:/Windows/Fonts/arialbd.ttf",  # Windows
)


@functools.lru_cache(maxsize=1)
def font_path() -> str | None:
    """The TrueType file used for all text, or None for Pillow's built-in font."""
    env = os.environ.get("SAFETY_DEMO_FONT")
    candidates = ([env] if env else []) + list(FONT_CANDIDATES)
    try:  # matplotlib ships DejaVu; it is often installed where system fonts are not
        import matplotlib

        candidates.append(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans-Bold.ttf"))
    except ImportError:
        pass
    for path in candidates:
        if Path(path).is_file():
            return path
    return None


def font_id() -> str:
    """Short name of the font in use, e.g. "DejaVuSans-Bold.ttf" or "pillow-default"."""
    path = font_path()
    return Path(path).name if path else "pillow-default"


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = font_path()
    if path is not None:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1, scalable
    except TypeError as exc:  # older Pillow: only a tiny bitmap font, useless for OCR
        raise RuntimeError(
            "No TrueType font found and this Pillow is older than 10.1. Install a font "
            "(e.g. `apt-get install fonts-dejavu-core`), set SAFETY_DEMO_FONT to a .ttf "
            "file, or upgrade Pillow."
        ) from exc


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def wrap_text(text: str, font, max_width: float) -> list[str]:
    """Greedy word wrap to `max_width` pixels; a word too long for a line is split."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if _text_width(font, candidate) <= max_width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while _text_width(font, word) > max_width:  # break an over-long word by characters
            cut = len(word) - 1
            while cut > 1 and _text_width(font, word[:cut]) > max_width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines


def _fit(text: str, max_width: float, max_height_fn) -> tuple[int, list[str]]:
    """Largest font size in [MIN_FONT_PX, MAX_FONT_PX] whose wrapped text fits.

    `max_height_fn(size, n_lines) -> bool` says whether n_lines at that size fit.
    Falls back to MIN_FONT_PX (text may then run past the bottom margin).
    """
    for size in range(MAX_FONT_PX, MIN_FONT_PX - 1, -2):
        lines = wrap_text(text, _font(size), max_width)
        if max_height_fn(size, len(lines)):
            return size, lines
    return MIN_FONT_PX, wrap_text(text, _font(MIN_FONT_PX), max_width)


def _pitch(size: int) -> int:
    return round(size * LINE_SPACING)


def blank_image(size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """A plain white RGB image (the "CB" composition: the request travels as text)."""
    return Image.new("RGB", size, WHITE)


def render_typo(text: str, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """`text` (a short phrase) wrapped and centred, as large as fits, black on white."""
    width, height = size
    inner_w, inner_h = width - 2 * MARGIN_PX, height - 2 * MARGIN_PX
    font_px, lines = _fit(text, inner_w, lambda s, n: n * _pitch(s) <= inner_h)
    font = _font(font_px)
    image = blank_image(size)
    draw = ImageDraw.Draw(image)
    block_h = len(lines) * _pitch(font_px)
    y = (height - block_h) // 2
    for line in lines:
        x = (width - round(_text_width(font, line))) // 2
        draw.text((x, y), line, fill=BLACK, font=font)
        y += _pitch(font_px)
    return image


def render_figstep(title: str, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """FigStep look: `title` wrapped top-left, then empty items "1.", "2.", "3." below.

    The numbered lines sit one and a half line pitches apart, leaving visible room for
    the "missing" content the attack prompt asks the model to fill in.
    """
    width, height = size
    inner_w, inner_h = width - 2 * MARGIN_PX, height - 2 * MARGIN_PX

    def list_pitch(s: int) -> int:
        return round(_pitch(s) * 1.5)

    def fits(s: int, n_title_lines: int) -> bool:
        return n_title_lines * _pitch(s) + FIGSTEP_ITEMS * list_pitch(s) <= inner_h

    font_px, lines = _fit(title, inner_w, fits)
    font = _font(font_px)
    image = blank_image(size)
    draw = ImageDraw.Draw(image)
    y = MARGIN_PX
    for line in lines:
        draw.text((MARGIN_PX, y), line, fill=BLACK, font=font)
        y += _pitch(font_px)
    y += list_pitch(font_px) - _pitch(font_px)  # a blank gap between title and list
    for i in range(1, FIGSTEP_ITEMS + 1):
        draw.text((MARGIN_PX, y), f"{i}.", fill=BLACK, font=font)
        y += list_pitch(font_px)
    return image
