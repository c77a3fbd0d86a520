"""`python -m safety_demo.models.builtin.ocr_store`: ship the OCR texts of the calibration images.

OCR is most of the cost of a calibration pass on the built-in model (RapidOCR, up to ~1 s per
image), and the calibration images never change: same requests, same renderer, same font, same
pixels. This writes {image_key: text} for every calibration image to `assets/calibration/
ocr_texts.json`; `Vision.read` then skips OCR for them. An image whose pixels differ (another
font on another machine) simply misses the store and is read by OCR, so the store can make a
refit faster but never different.
"""
from __future__ import annotations

import argparse
import json
import time

from tqdm import tqdm

from .vision import OCR_STORE, Vision, image_key


def build_store(vision: Vision) -> dict[str, str]:
    from ...data.calibration import COMPOSITIONS, calibration_items, image_for

    texts: dict[str, str] = {}
    for item in tqdm(calibration_items(compositions=COMPOSITIONS), desc="OCR", unit="image"):
        image = image_for(item)
        key = image_key(image)
        if key not in texts:
            texts[key] = vision.read_text(image)
    return texts


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    vision = Vision()
    t0 = time.perf_counter()
    texts = build_store(vision)
    OCR_STORE.write_text(json.dumps({"engine": Vision.ocr_engine(), "texts": dict(sorted(texts.items()))}, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"{len(texts)} distinct calibration images, {sum(bool(t) for t in texts.values())} with text, "
          f"read in {time.perf_counter() - t0:.0f} s -> {OCR_STORE}")


if __name__ == "__main__":
    main()
