"""A gr.Image whose upload failures reach the user as one clear sentence."""
from __future__ import annotations

import gradio as gr

from gradio.events import Dependency

class ImageUpload(gr.Image):
    """gr.Image(type="filepath") that hands the file to `safety_demo.inputs.load_image` untouched.

    Gradio's own preprocessing opens the upload with PIL and, on a non-image or a
    decompression bomb, fails with a generic "the app raised an exception". Here the
    upload's path is passed through instead (Gradio has already stored it in its temp
    area), and `load_image` explains exactly what is wrong with it.
    """

    is_template = True  # render with the stock Image component in the browser

    def __init__(self, **kwargs) -> None:
        super().__init__(type="filepath", image_mode=None, **kwargs)

    def preprocess(self, payload):
        if payload is None:
            return None
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            return str(payload.path) if payload.path else None
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component