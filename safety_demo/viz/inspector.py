"""The step inspector: at one step, the K candidates, the model's and the method's
probability of each, the probe's score where the method has one, and what it chose.

Candidate text comes from `token_texts` when given (e.g. `adapter.token_texts`), else from
the trace's own `candidate_tokens`; an id without text is shown as "#id".
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import plotly.graph_objects as go

from ..trace import Trace
from . import VANILLA_PROB_COLOR, below_plot, esc, method_color, style, token_label, top_margin

PROBE = "probe.score"
# Column headers for a table view of `step_table` rows (key -> header).
STEP_TABLE_HEADERS = {
    "rank": "rank",
    "token": "candidate",
    "token_id": "id",
    "vanilla_prob": "vanilla p",
    "method_prob": "method p",
    "probe_score": "P(harmful)",
    "chosen": "chosen",
    "action": "action",
}

TokenTexts = Callable[[Sequence[int]], Sequence[str]]


def _check_step(trace: Trace, step: int) -> int:
    step = int(step)
    if not 0 <= step < len(trace):
        raise ValueError(f"step must be in [0, {len(trace) - 1}] for this {len(trace)}-token trace, got {step}.")
    return step


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _candidate_texts(trace: Trace, step: int, ids: list[int], token_texts: TokenTexts | None) -> list[str]:
    if token_texts is not None:
        return [str(t) for t in token_texts(ids)]
    recorded = [int(c) for c in trace.candidate_ids[step] if c >= 0]  # the trace's own order
    known = {i: str(t) for i, t in zip(recorded, trace.candidate_tokens[step]) if t != "?"}
    known[int(trace.token_ids[step])] = trace.tokens[step]
    return [known.get(i, f"#{i}") for i in ids]


def step_table(trace: Trace, step: int, token_texts: TokenTexts | None = None) -> list[dict[str, Any]]:
    """One row per candidate at `step`, ranked by the method's probability (rank 1 = its favourite).

    Keys: rank, token, token_id, vanilla_prob (the model's own p, real image), method_prob
    (the method's adjusted p), probe_score (P(harmful) of the candidate; only when the
    trace has per-candidate probe scores), chosen (exactly one row when the chosen token
    is among the candidates, which the engine guarantees), action (the step's action).
    """
    step = _check_step(trace, step)
    valid = [j for j, c in enumerate(trace.candidate_ids[step]) if c >= 0]
    method_p = np.nan_to_num(trace.policy_probs[step], nan=-1.0)
    valid.sort(key=lambda j: -method_p[j])  # the method's ranking (SafeSteer records the model's order)
    ids = [int(trace.candidate_ids[step, j]) for j in valid]
    texts = _candidate_texts(trace, step, ids, token_texts)
    probe = trace.candidate_scores.get(PROBE)
    chosen_id = int(trace.token_ids[step])
    chosen_at = ids.index(chosen_id) if chosen_id in ids else -1
    rows = []
    for rank, (j, cid, text) in enumerate(zip(valid, ids, texts)):
        row: dict[str, Any] = {
            "rank": rank + 1,
            "token": text,
            "token_id": cid,
            "vanilla_prob": _num(trace.raw_probs[step, j]),
            "method_prob": _num(trace.policy_probs[step, j]),
        }
        if probe is not None:
            row["probe_score"] = _num(probe[step, j])
        row["chosen"] = rank == chosen_at
        row["action"] = trace.actions[step]
        rows.append(row)
    return rows


def step_figure(trace: Trace, step: int, token_texts: TokenTexts | None = None) -> go.Figure:
    """Grouped horizontal bars, vanilla p vs method p, for the K candidates at `step`.

    The method's favourite is at the top; the chosen one is starred in its label and outlined
    (a forced token can sit low: the method overrode both distributions);
    probe scores (where present) are printed on the method's bars and in the hover.
    """
    rows = step_table(trace, step, token_texts)
    step = int(step)
    labels = [f"{'★ ' if r['chosen'] else ''}{token_label(r['token'], 14)}  ({r['rank']})" for r in rows]
    has_probe = any(r.get("probe_score") is not None for r in rows)

    def hover(r: dict, which: str) -> str:
        lines = [f"{esc(repr(r['token']))} (id {r['token_id']})", f"{which}: {_fmt(r[which + '_prob'])}"]
        if has_probe:
            lines.append(f"P(harmful): {_fmt(r.get('probe_score'))}")
        if r["chosen"]:
            lines.append(f"<b>chosen</b> ({r['action']})")
        return "<br>".join(lines)

    color = method_color(trace.method)
    outline = [2.5 if r["chosen"] else 0 for r in rows]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            y=labels, x=[r["vanilla_prob"] for r in rows], orientation="h", name="vanilla p (model)",
            marker=dict(color=VANILLA_PROB_COLOR, line=dict(width=outline, color="#111")),
            text=[_fmt(r["vanilla_prob"]) for r in rows], textposition="outside", cliponaxis=False,
            hovertext=[hover(r, "vanilla") for r in rows], hoverinfo="text",
        )
    )
    same = all(
        r["vanilla_prob"] is not None and r["method_prob"] is not None and abs(r["vanilla_prob"] - r["method_prob"]) < 1e-6
        for r in rows
    )
    if same:  # e.g. vanilla, or a step after the method stopped acting: one series says it all
        fig.data[0].name = f"p (model = {trace.method})"
    fig.add_trace(
        go.Bar(
            y=labels, x=[r["method_prob"] for r in rows], orientation="h", name=f"{trace.method} p", visible=not same,
            marker=dict(color=color, line=dict(width=outline, color="#111")),
            text=[
                _fmt(r["method_prob"]) + (f" · P(harm) {_fmt(r.get('probe_score'))}" if has_probe and r.get("probe_score") is not None else "")
                for r in rows
            ],
            textposition="outside", cliponaxis=False,
            hovertext=[hover(r, "method") for r in rows], hoverinfo="text",
        )
    )
    peak = max([v for r in rows for v in (r["vanilla_prob"], r["method_prob"]) if v is not None] or [1.0])
    fig.update_xaxes(title="probability", range=[0, peak * (1.75 if has_probe else 1.3)], rangemode="tozero")
    fig.update_yaxes(autorange="reversed", title=None, automargin=True, categoryorder="array", categoryarray=labels)
    subtitle = "the method kept the model's probabilities here" if same else "grey: the model's own p; colour: after the method"
    if has_probe:
        subtitle += "<br>P(harm) = the probe's score of the candidate"
    height = max(300, 150 + 45 * len(rows))
    top, bottom = top_margin(subtitle), 90
    style(
        fig,
        f"Step {step}: {esc(trace.method)} chose {esc(repr(trace.tokens[step][:14]))} ({trace.actions[step]})",
        subtitle,
        height=height,
        barmode="group",
        bargap=0.25,
        legend=dict(orientation="h", x=0, xanchor="left", y=below_plot(height, top, bottom, 48), yanchor="top"),
    )
    fig.update_layout(margin=dict(l=10, r=20, t=top, b=bottom))
    return fig


def step_choices(trace: Trace) -> list[tuple[str, int]]:
    """Dropdown entries (label, step), e.g. "3: ' the' (reranked)"; plain steps get no action."""
    return [
        (f"{i}: {tok!r}" + ("" if action == "kept" else f" ({action})"), i)
        for i, (tok, action) in enumerate(zip(trace.tokens, trace.actions))
    ]


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"
