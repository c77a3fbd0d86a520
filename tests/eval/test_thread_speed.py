"""`thread_speed` runs its four settings on the built-in fast model and prints one row each."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from safety_demo.models import threads


@pytest.mark.slow  # loads the built-in fast model in a fresh interpreter (serve_mode is for good): about 10 s
def test_thread_speed_times_a_step_in_each_setting():
    if threads.libgomp() is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("no libgomp or one core: nothing to measure")
    out = subprocess.run([sys.executable, "-m", "safety_demo.eval.thread_speed", "--variant", "fast", "--steps", "2", "--repeats", "1"],
                         capture_output=True, text=True, timeout=600, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms per step" not in line]
    assert len(rows) == 4, out
    assert all(float(row.split("|")[2]) > 0 for row in rows)
