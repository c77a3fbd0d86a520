"""What the app's callbacks call: load model and probe once, build the views, write exports.

Nothing here imports Gradio; errors are raised as `UserFacingError` with a sentence the
app shows as is.
"""
from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..decoding import Trace
from ..inputs import InputError
from ..models import ModelLoadError, VLMAdapter, load_adapter
from ..probe import DecodingProbe, ProbeError, get_probe, map_points

log = logging.getLogger(__name__)
_PROBES: dict[tuple[str, int], DecodingProbe] = {}
_PROBE_LOCK = threading.Lock()
EXPORT_DIR = Path(tempfile.gettempdir()) / "safety_demo_exports"


class UserFacingError(RuntimeError):
    """A failure with a message meant for the user."""


def model(name: str) -> VLMAdapter:
    try:
        return load_adapter(name)
    except ModelLoadError as exc:
        raise UserFacingError(str(exc)) from None
    except Exception as exc:  # anything else a loader throws (OOM, a broken file)
        log.exception("model %s failed to load", name)
        raise UserFacingError(f"The model {name!r} could not be loaded ({type(exc).__name__}: {exc}).") from None


def probe_for(adapter: VLMAdapter, components: int | str = "auto", fit_if_missing: bool = False) -> DecodingProbe | None:
    """The adapter's probe with `components` PCs, cached per process; None if there is none.

    A visitor's request never fits one (a full calibration pass takes minutes and would hold
    every other request): probes are shipped, fitted by the operator with `fit-probe`, or at
    start-up (`fit_if_missing=True`, SAFETY_DEMO_FIT_PROBES=1).
    """
    key = (adapter.model_id, components)
    with _PROBE_LOCK:
        if key not in _PROBES:
            try:
                _PROBES[key] = get_probe(adapter, fit_if_missing=fit_if_missing, progress=False, components=components)
            except ProbeError:
                return None
        return _PROBES[key]


def calibration_points(adapter: VLMAdapter) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Calibration h₀, labels and compositions for the map (feature cache or shipped subsample)."""
    return map_points(adapter)


def export(traces: dict[str, Trace], figures: dict) -> tuple[str, str]:
    """Write the run's traces (JSON) and figures (one HTML page); returns both paths."""
    from ..viz import figures_html

    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    _prune(EXPORT_DIR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = EXPORT_DIR / f"safety_demo-run-{stamp}-{id(traces) % 10000}.json"
    json_path.write_text(json.dumps({name: t.to_dict() for name, t in traces.items()}, ensure_ascii=False, indent=1))
    html_path = json_path.with_suffix(".html")
    html_path.write_text(figures_html({k: v for k, v in figures.items() if v is not None}))
    return str(json_path), str(html_path)


def _prune(folder: Path, keep_seconds: float = 3600.0) -> None:
    """Exports are for download, not storage: drop those older than an hour."""
    now = time.time()
    for path in folder.glob("safety_demo-run-*"):
        try:
            if now - path.stat().st_mtime > keep_seconds:
                path.unlink()
        except OSError:
            pass


__all__ = ["InputError", "UserFacingError", "calibration_points", "export", "model", "probe_for"]
