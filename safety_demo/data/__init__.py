"""Calibration data for the safety probe, and the deterministic renderers behind its images."""
from safety_demo.data.calibration import (
    COMPOSITIONS,
    FIGSTEP_PROMPT,
    TYPO_PROMPT,
    CalibrationFormatError,
    CalibrationItem,
    ImageSpec,
    assign_splits,
    calibration_hash,
    calibration_items,
    image_for,
    load_requests,
    natural_photo_sources,
)
from safety_demo.data.render import RENDER_VERSION, blank_image, render_figstep, render_typo

__all__ = [
    "COMPOSITIONS",
    "FIGSTEP_PROMPT",
    "RENDER_VERSION",
    "TYPO_PROMPT",
    "CalibrationFormatError",
    "CalibrationItem",
    "ImageSpec",
    "assign_splits",
    "blank_image",
    "calibration_hash",
    "calibration_items",
    "image_for",
    "load_requests",
    "natural_photo_sources",
    "render_figstep",
    "render_typo",
]
