"""Per-token scores (by default the probe's P(harmful)) on the answer's own tokens."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from ..trace import Trace
from . import esc, style, token_label, top_margin

# Scores that are probabilities in [0, 1]; the rest are signed and scaled by their max |value|.
PROBABILITY_PREFIXES = ("probe.",)
# Light enough at both ends that black token text stays readable on every cell.
P_HARMFUL_SCALE = [[0.0, "#6baed6"], [0.5, "#f7f7f7"], [1.0, "#ef6f5e"]]


def _is_probability(score: str) -> bool:
    return score.startswith(PROBABILITY_PREFIXES)


def _values(trace: Trace, score: str) -> list[float | None]:
    """[T] the score per token, None where absent (no such score, or NaN at that step)."""
    values = trace.scores.get(score)
    if values is None:
        return [None] * len(trace)
    return [None if not math.isfinite(float(v)) else float(v) for v in values]


def highlighted_tokens(trace: Trace, score: str = "probe.score") -> list[tuple[str, float | None]]:
    """[(token text, value in [-1, 1] or None)], the format `gr.HighlightedText` colours by.

    Probabilities p (any `probe.*` score) map to 2p − 1: harmless −1, unsure 0, harmful +1.
    Other (signed) scores are divided by their largest |value|, so 0 stays 0.
    """
    values = _values(trace, score)
    if _is_probability(score):
        mapped = [None if v is None else float(np.clip(2.0 * v - 1.0, -1.0, 1.0)) for v in values]
    else:
        peak = max((abs(v) for v in values if v is not None), default=0.0)
        mapped = [None if v is None else (v / peak if peak > 0 else 0.0) for v in values]
    return list(zip(trace.tokens, mapped))
