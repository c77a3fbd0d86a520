"""`memory_drift` reports the host's memory speed second by second."""
from __future__ import annotations

from safety_demo.eval.memory_drift import main, series


def test_each_second_gets_one_positive_reading(capsys):
    values = series(1.2)
    assert len(values) == 2 and all(0 < gbs < 10_000 for gbs in values)
    main(["--seconds", "0.3"])
    assert "min" in capsys.readouterr().out
