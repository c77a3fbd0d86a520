"""`python -m safety_demo.models.builtin.readings`: ship the vision readings of the calibration images.

The vision module is most of the cost of a calibration pass on the built-in model (RapidOCR up to
~1 s per image, then the recogniser), and the calibration images never change: same requests,
same renderer, same font, same pixels. This writes {image_key: OCR text + top-10 classes} for
every calibration image to `assets/calibration/readings.json`; `Vision.read` then skips both
models for them. An image whose pixels differ (another font on another machine) misses the store
and is read as before, so the store makes a refit faster, not different (up to float rounding).
"""
from __future__ import annotations

import argparse
import json
import time

from tqdm import tqdm

from .vision import READINGS_STORE, STORED_TOP_K, Vision, image_key, load_readings


def build_store(vision: Vision, batch: int = 32) -> dict[str, dict]:
    """Readings of every distinct calibration image; OCR texts already in the store are reused."""
    from ...data.calibration import COMPOSITIONS, calibration_items, image_for

    known = load_readings()
    images = {}
    for item in calibration_items(compositions=COMPOSITIONS):
        image = image_for(item)
        images.setdefault(image_key(image), image)
    keys = list(images)
    out: dict[str, dict] = {}
    for start in tqdm(range(0, len(keys), batch), desc="readings", unit="batch"):
        chunk = keys[start:start + batch]
        probs = vision.classify([images[k] for k in chunk])  # (B, 1000)
        for k, p in zip(chunk, probs):
            top = p.topk(STORED_TOP_K)
            text = known[k].text if k in known else vision.read_text(images[k])
            out[k] = {"text": text, "top": [[int(i), float(v)] for v, i in zip(top.values, top.indices)]}
    return out


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    vision = Vision()
    t0 = time.perf_counter()
    readings = build_store(vision)
    READINGS_STORE.write_text(json.dumps({"engine": Vision.engine(), "readings": dict(sorted(readings.items()))},
                                         ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{len(readings)} distinct calibration images, {sum(bool(r['text']) for r in readings.values())} with text, "
          f"read in {time.perf_counter() - t0:.0f} s -> {READINGS_STORE}")


if __name__ == "__main__":
    main()
