import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from PIL import Image

from safety_demo.models.fake import FakeAdapter


@pytest.fixture(scope="session")
def fake() -> FakeAdapter:
    return FakeAdapter(seed=0)


@pytest.fixture
def white() -> Image.Image:
    return Image.new("RGB", (64, 64), "white")


@pytest.fixture
def photo() -> Image.Image:
    """A colourful deterministic 'photo': gradients in three channels."""
    import numpy as np

    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype("uint8")
    return Image.fromarray(arr)
