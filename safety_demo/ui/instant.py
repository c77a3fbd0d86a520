"""Instant examples: each example's finished comparison, computed once and kept on disk, so a
click on an example shows three finished answers and every view at once (on a CPU Space a
live run takes a minute or more). Pressing Generate still runs live.

A stored run is used only while everything that shaped it is unchanged. Its key hashes:
  - the example's prompt and image bytes;
  - the model (its `model_id`, which names the weights and the dtype) and torch's version;
  - the probe (model, calibration set, k and its weights);
  - the knobs (the defaults: a click shows the example as Generate would with untouched knobs);
  - the code that makes a trace: every module of the package except ui/, viz/ and eval/,
    which only draw or measure traces.
Anything else (another model, a moved knob, an edited policy) falls back to a live run.

Files: $SAFETY_DEMO_CACHE/examples/<example file stem>-<key>.json (traces without hidden
states) and .npz (the hidden states the map needs).
"""
from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compare import Column
from ..data.examples import EXAMPLES, EXAMPLES_DIR, Example
from ..methods import knob_values, read_knobs
from ..models.builtin.assemble import cache_root
from ..probe import DecodingProbe
from ..trace import Trace
from . import run as run_views
from .session import model, probe_for

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parents[1]
DRAWING_ONLY = ("ui", "viz", "eval")  # subpackages whose code never changes a trace


def cache_dir() -> Path:
    return cache_root() / "examples"


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of every module that can change a trace (read once per process)."""
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] not in DRAWING_ONLY:
            digest.update(str(rel).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _probe_id(probe: DecodingProbe | None) -> str:
    if probe is None:
        return "none"
    weights = hashlib.blake2b(probe.weight.tobytes() + probe.components.tobytes() + np.float64(probe.bias).tobytes(), digest_size=8)
    return f"{probe.model_id}|{probe.calibration_hash}|k{probe.n_components}|{weights.hexdigest()}"


def key(example: Example, model_id: str, probe: DecodingProbe | None) -> str:
    """What the stored run of `example` depends on, hashed (see the module's docstring)."""
    parts = [example.prompt, hashlib.sha256((EXAMPLES_DIR / example.file).read_bytes()).hexdigest(), model_id,
             torch.__version__, _probe_id(probe), json.dumps(knob_values(), default=str), code_version()]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=10).hexdigest()


def find(image_path: str | None, prompt: str) -> Example | None:
    """The example whose image (same bytes) and prompt these are, if any."""
    if not image_path or not Path(image_path).is_file():
        return None
    digest = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
    for ex in EXAMPLES:
        path = EXAMPLES_DIR / ex.file
        if ex.prompt == prompt and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return ex
    return None


# ---- storage ---------------------------------------------------------------------------------
def _paths(example: Example, k: str) -> tuple[Path, Path]:
    stem = cache_dir() / f"{Path(example.file).stem}-{k}"
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def save(example: Example, k: str, traces: dict[str, Trace]) -> Path:
    """Write the run (older runs of this example are removed: their key no longer matches)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    for old in cache_dir().glob(f"{Path(example.file).stem}-*"):
        old.unlink(missing_ok=True)
    meta, arrays = _paths(example, k)
    hidden: dict[str, np.ndarray] = {}
    for m, t in traces.items():
        hidden[f"{m}.hidden"], hidden[f"{m}.prefill"] = t.hidden, t.prefill_hidden
        if t.msav is not None and t.msav.h0bar is not None:
            hidden[f"{m}.h0bar"] = t.msav.h0bar
    np.savez_compressed(arrays, **hidden)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps({m: t.to_dict() for m, t in traces.items()}, ensure_ascii=False))
    tmp.replace(meta)  # the JSON last: a run is there only when both files are
    return meta


def load(example: Example, k: str) -> dict[str, Trace] | None:
    meta, arrays = _paths(example, k)
    if not (meta.is_file() and arrays.is_file()):
        return None
    try:
        data = json.loads(meta.read_text())
        with np.load(arrays, allow_pickle=False) as z:
            for m, d in data.items():
                d["hidden"], d["prefill_hidden"] = z[f"{m}.hidden"], z[f"{m}.prefill"]
                if f"{m}.h0bar" in z.files and d.get("msav"):
                    d["msav"]["h0bar"] = z[f"{m}.h0bar"]
        return {m: Trace.from_dict(d) for m, d in data.items()}
    except Exception:  # a torn or foreign file: recompute rather than fail
        log.warning("stored example run %s unreadable; it will be recomputed", meta, exc_info=True)
        return None


def _default_probe(adapter) -> DecodingProbe | None:
    """The probe a run with the default knobs uses (the key depends on it)."""
    return probe_for(adapter, read_knobs(knob_values())[1]["safesteer"].probe_components)


# ---- what the app calls ------------------------------------------------------------------------
def precompute(model_name: str, examples: list[Example] | None = None, shared: bool = False) -> list[str]:
    """Run every example not stored yet with the default knobs and store it; returns their names.

    Called at start-up, in the background. A run that failed or hit the time limit is not kept.
    """
    adapter = model(model_name)
    probe = _default_probe(adapter)
    done = []
    for ex in examples if examples is not None else EXAMPLES:
        k = key(ex, adapter.model_id, probe)
        if load(ex, k) is not None:
            continue
        *_, finished = run_views.generate(str(EXAMPLES_DIR / ex.file), ex.prompt, model_name, knob_values(), shared=shared)
        traces = finished.run.traces
        if len(traces) == len(finished.columns) and not any(t.error or t.cut for t in traces.values()):
            save(ex, k, traces)
            done.append(ex.name)
    return done


def show(image_path: str | None, prompt: str, model_name: str, knobs: list[Any], projection: str, method: str) -> run_views.Finished | str:
    """The stored comparison of the example these inputs are, or a sentence saying why there is none."""
    example = find(image_path, prompt)
    if example is None:
        return "Press Generate to run this request."
    if read_knobs(list(knobs)) != read_knobs(knob_values()):
        return "The knobs differ from their defaults, with which the examples were precomputed: press Generate to run it live."
    adapter = model(model_name)
    probe = _default_probe(adapter)
    traces = load(example, key(example, adapter.model_id, probe))
    if traces is None:
        return f"This example has not been precomputed for {model_name} yet (it is done at start-up): press Generate to run it live."
    columns = {m: Column(m, text=t.text, n_tokens=len(t), done=True, error=t.error, trace=t) for m, t in traces.items()}
    run = run_views.Run(model_name, traces, probe)
    notice = "Precomputed example, shown at once (the speeds are those of its run). Press Generate to run it live. "
    return run_views.finished(run, columns, projection, method, notice)
