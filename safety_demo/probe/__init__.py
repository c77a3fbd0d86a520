"""SafeSteer's probe: fit on the project's calibration set once per model, load after."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..models.base import Request, VLMAdapter
from .extract import extract_h0
from .probe import AUTO, COMPONENT_CHOICES, N_COMPONENTS, DecodingProbe, ProbeError, describe_probe, evaluate, fit_probe, is_components, parse_components

log = logging.getLogger(__name__)


SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "probes"  # probes fitted by the project


def cache_dir() -> Path:
    return Path(os.environ.get("SAFETY_DEMO_CACHE", Path.home() / ".cache" / "safety_demo")) / "probes"


def _compositions() -> tuple[str, ...]:
    from ..data.calibration import natural_photo_sources

    return ("CB", "TYPO", "NATURAL") if natural_photo_sources() else ("CB", "TYPO")  # no benchmark-shaped rows


def calibration_key() -> str:
    """Calibration-set hash + what this machine renders: compositions and the natural photos found."""
    from ..data.calibration import calibration_hash, natural_photo_sources

    rendered = f"{','.join(_compositions())}:{','.join(natural_photo_sources())}"
    return hashlib.sha256(f"{calibration_hash()}:{rendered}".encode()).hexdigest()


def probe_path(model_id: str, key: str | None = None, components: int | str = N_COMPONENTS) -> Path:
    """Cache file of a probe; its `.features.npz` sibling (calibration h₀) is shared by every k."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:80]
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    stem = f"{slug}-{digest}-{(key or calibration_key())[:12]}"
    return cache_dir() / (f"{stem}.npz" if components == N_COMPONENTS else f"{stem}-pc{components}.npz")


def features_path(model_id: str, key: str | None = None) -> Path:
    return probe_path(model_id, key).with_suffix(".features.npz")


def calibration_features(adapter: VLMAdapter, key: str, progress: bool = True, batch_size: int = 8, re_extract: bool = False) -> dict[str, np.ndarray]:
    """h₀ of every calibration item (cached next to the probe: refits need no model calls)."""
    from ..data.calibration import calibration_items, image_for

    path = features_path(adapter.model_id, key)
    for candidate in () if re_extract else (path, SHIPPED_DIR / path.name):  # this machine's cache, else the project's (every k refits in a second)
        if candidate.is_file():
            try:
                with np.load(candidate, allow_pickle=False) as z:
                    if "splits" in z.files:
                        return {k: (z[k].astype(np.float32) if k == "h" else z[k]) for k in z.files}
            except Exception:
                log.warning("feature cache %s unreadable; extracting again", candidate)
    items = calibration_items(compositions=_compositions())
    rows = [lambda it=it: Request(image_for(it), it.prompt) for it in items]
    t0 = time.perf_counter()
    h = extract_h0(adapter, rows, batch_size=batch_size, progress=progress, desc="calibration h₀")
    feats = {
        "h": h,
        "labels": np.array([it.label for it in items]),
        "compositions": np.array([it.composition for it in items]),
        "splits": np.array([it.split for it in items]),
        "categories": np.array([it.category for it in items]),
        "extract_seconds": np.float64(time.perf_counter() - t0),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **feats)
    return feats


def fit_for(adapter: VLMAdapter, progress: bool = True, components: int | str = AUTO, re_extract: bool = False) -> DecodingProbe:
    """Extract (or reuse) calibration h₀, fit, save; returns the probe with its metrics."""
    key = calibration_key()
    feats = calibration_features(adapter, key, progress=progress, re_extract=re_extract)
    probe = fit_probe(feats["h"], feats["labels"], feats["compositions"], feats["splits"], adapter.model_id, key, n_components=components)
    probe.metrics["extract_seconds"] = float(feats["extract_seconds"])
    probe.save(probe_path(adapter.model_id, key, components))
    return probe


def get_probe(adapter: VLMAdapter, fit_if_missing: bool = True, progress: bool = True, components: int | str = AUTO) -> DecodingProbe:
    """The probe for `adapter`: loaded if a valid file exists, else fitted (first use) and saved.

    A corrupt file is refitted; a file for another model cannot be picked up by construction
    (the path embeds the model id) and is refused by `DecodingProbe.load` if moved there.
    """
    key = calibration_key()
    path = probe_path(adapter.model_id, key, components)
    shipped = SHIPPED_DIR / path.name
    if not path.exists() and shipped.is_file():  # fitted by the project for this model and set
        try:
            return DecodingProbe.load(shipped, model_id=adapter.model_id, calibration_hash=key)
        except ProbeError as exc:
            log.warning("shipped probe unusable (%s); fitting one", exc)
    try:
        return DecodingProbe.load(path, model_id=adapter.model_id, calibration_hash=key)
    except ProbeError as exc:
        if not fit_if_missing:
            raise ProbeError(f"{exc} Fit one with: python -m safety_demo fit-probe --model {adapter.name} --components {components}") from None
        if path.exists():
            log.warning("%s Refitting.", exc)
    return fit_for(adapter, progress=progress, components=components)


def map_points(adapter: VLMAdapter) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Calibration h₀, labels and compositions for the hidden-state map: the feature cache,
    else the h₀ shipped with a shipped probe, else None."""
    cached = features_path(adapter.model_id)
    for path in (cached, SHIPPED_DIR / cached.name):
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return z["h"].astype(np.float32), z["labels"], z["compositions"]
            except Exception:
                log.warning("map features %s unreadable", path)
    return None


def ship(adapter: VLMAdapter, components: Sequence[int | str] = (AUTO, N_COMPONENTS)) -> list[Path]:
    """Copy this adapter's fitted probes and its calibration h₀ (float16) into assets/probes/.

    With the h₀ shipped, any k (and the map) works on a fresh machine without the extraction.
    """
    key = calibration_key()
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    out = []
    for k in components:
        src = probe_path(adapter.model_id, key, k)
        if not src.is_file():
            fit_for(adapter, progress=False, components=k)  # from the cached h₀: seconds
        out.append(DecodingProbe.load(src, model_id=adapter.model_id, calibration_hash=key).save(SHIPPED_DIR / src.name))
    feats = calibration_features(adapter, key, progress=False)
    path = SHIPPED_DIR / features_path(adapter.model_id, key).name
    np.savez_compressed(path, **{k: (v.astype(np.float16) if k == "h" else v) for k, v in feats.items()})
    return out + [path]


__all__ = ["is_components", "parse_components", "AUTO", "COMPONENT_CHOICES", "describe_probe", "DecodingProbe", "ProbeError", "calibration_key", "evaluate", "extract_h0", "fit_for", "fit_probe", "features_path", "get_probe", "map_points", "probe_path", "ship"]
