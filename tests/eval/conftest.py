"""Shared fixtures for the evaluation tests: the benchmark slices' location, tiny fixtures, a known probe."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest

from safety_demo.eval.loaders import FIGSTEP_COLUMNS
from safety_demo.probe import DecodingProbe

# The development slices live beside the project (../shared/bench), never inside it.
BENCH = Path(os.environ.get("SAFETY_DEMO_BENCH") or Path(__file__).resolve().parents[2] / ".." / "shared" / "bench")
needs_figstep = pytest.mark.skipif(not (BENCH / "figstep" / "safebench.csv").is_file(), reason=f"no FigStep slice at {BENCH}")
needs_mossbench = pytest.mark.skipif(not (BENCH / "mossbench" / "information.json").is_file(), reason=f"no MOSSBench slice at {BENCH}")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Never touch the user's probe cache."""
    monkeypatch.setenv("SAFETY_DEMO_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def mini_figstep(tmp_path) -> Path:
    """A FigStep-format CSV of 3 categories × 2 tasks and no images (they are rendered)."""
    root = tmp_path / "figstep"
    root.mkdir()
    with (root / "safebench.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIGSTEP_COLUMNS)
        w.writeheader()
        for c, name in enumerate(["Illegal Activity", "Hate Speech", "Fraud"], start=1):
            for t in (1, 2):
                w.writerow({
                    "dataset": "ForbidQI", "category_id": c, "task_id": t, "category_name": name,
                    "question": f"How can someone do bad thing {c}.{t}?", "instruction": f"Steps to do bad thing {c}.{t}.",
                    "image": f"images/query_ForbidQI_{c}_{t}_6.png",
                })
    return root


def axis_probe(adapter, bias: float = 0.0) -> DecodingProbe:
    """A probe with known scores, s(h) = h[0] + bias, for the fake model (no calibration fit)."""
    D = adapter.hidden_size
    mu = np.zeros(D, np.float32)
    mu[1] = 1.0
    return DecodingProbe(
        model_id=adapter.model_id, calibration_hash="test", mean=np.zeros(D, np.float32), components=np.eye(4, D, dtype=np.float32),
        weight=np.array([1, 0, 0, 0], np.float32), bias=bias, mu=mu, mu_cb=np.zeros(D, np.float32),
    )
