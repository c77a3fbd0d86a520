"""Per-token scores (by default the probe's P(harmful)) on the answer's own tokens."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from ..decoding.trace import Trace
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


def token_strip_figure(trace: Trace, score: str = "probe.score", per_row: int = 8) -> go.Figure:
    """The answer as a wrapped grid of token cells coloured by `score` (P(harmful) by default).

    Rows of `per_row` tokens read left to right, top to bottom, so 60 tokens stay legible in a
    ~400 px panel; the y-axis names each row's step range. A ▲ under a cell marks a step the
    method changed (forced / boosted / suppressed / reranked). Hover: token, step, action, score.
    """
    if per_row < 1:
        raise ValueError(f"per_row must be at least 1, got {per_row}.")
    T = len(trace)
    values = _values(trace, score)
    rows = max(1, math.ceil(T / per_row))
    is_prob = _is_probability(score)
    score_title = "P(harmful)" if score == "probe.score" else score

    def grid(fill):
        return [[fill] * per_row for _ in range(rows)]

    z, base, text, hover = grid(None), grid(None), grid(""), grid("")
    acted_x, acted_y = [], []
    for i, (tok, v, action) in enumerate(zip(trace.tokens, values, trace.actions)):
        r, c = divmod(i, per_row)
        z[r][c] = v
        base[r][c] = 0.0
        text[r][c] = token_label(tok.strip() or tok, limit=7)
        shown = "no score" if v is None else f"{v:.3f}"
        hover[r][c] = f"step {i}<br>token {esc(repr(tok))}<br>action: {action}<br>{score_title}: {shown}"
        if action != "kept":
            acted_x.append(c)
            acted_y.append(r + 0.36)

    fig = go.Figure()
    # Grey cells under everything: a token without a score still shows as a cell.
    fig.add_trace(go.Heatmap(z=base, colorscale=[[0, "#e6e6e6"], [1, "#e6e6e6"]], showscale=False, hoverinfo="skip", xgap=2, ygap=2))
    peak = max((abs(v) for v in values if v is not None), default=1.0) or 1.0
    fig.add_trace(
        go.Heatmap(
            z=z,
            zmin=0.0 if is_prob else -peak,
            zmax=1.0 if is_prob else peak,
            colorscale=P_HARMFUL_SCALE if is_prob else "RdBu_r",
            hovertext=hover,
            hoverinfo="text",
            hoverongaps=True,
            xgap=2,
            ygap=2,
            name=score_title,
            showscale=any(v is not None for v in values),
            colorbar=dict(
                title=dict(text=score_title, side="right"),
                orientation="h", x=0.5, xanchor="center", y=0.0, yanchor="top", ypad=8, len=0.6, thickness=10,
            ),
        )
    )
    xs = [c for r in range(rows) for c in range(per_row)]
    ys = [r for r in range(rows) for c in range(per_row)]
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, text=[t for row in text for t in row], mode="text",
            textfont=dict(size=11, color="#111"), hoverinfo="skip", showlegend=False,
        )
    )
    if acted_x:
        fig.add_trace(
            go.Scatter(
                x=acted_x, y=acted_y, mode="markers", name="method changed this step",
                marker=dict(symbol="triangle-up", size=6, color="#222"), hoverinfo="skip",
            )
        )
    fig.update_xaxes(visible=False, range=[-0.5, per_row - 0.5], fixedrange=True)
    fig.update_yaxes(
        autorange="reversed",
        tickmode="array",
        tickvals=list(range(rows)),
        ticktext=[f"{r * per_row}–{min(T, (r + 1) * per_row) - 1}" if T else "" for r in range(rows)],
        title=dict(text="steps", standoff=4),
        fixedrange=True,
        showgrid=False,
        zeroline=False,
    )
    if all(v is None for v in values):
        lines = [f"no {score!r} in this trace", "(fit the probe to score every method)"]
    elif is_prob:
        lines = ["probe on each token's hidden state", "blue = harmless, red = harmful"]
    else:
        lines = [f"score {score!r}"]
    if acted_x:
        lines[-1] += "; ▲ method acted"
    subtitle = "<br>".join(lines)
    height = max(200, 100 + top_margin(subtitle) + 30 * rows)
    style(fig, f"{trace.method}: {score_title} per token", subtitle, height=height, showlegend=False)
    fig.update_layout(margin=dict(l=55, r=10, t=top_margin(subtitle), b=60))
    return fig
