"""How much the real image, versus a noised copy, backs each generated token.

`policy.contrastive.delta` = log p(real image) − log p(noised image) of the chosen token.
SafeCoDe records it natively (it decodes both rows); an optional analysis pass can add it to
the other methods' traces. Its notes also name the tokens that moved most ("movers").
"""
from __future__ import annotations

import math

import plotly.graph_objects as go

from ..trace import Trace
from . import empty_figure, esc, method_color, style, token_label

DELTA = "policy.contrastive.delta"
TITLE = "Contrastive delta: log p(real image) − log p(noised image)"
MISSING_NOTE = "No contrastive delta for {names}: it is native to SafeCoDe<br>(an optional analysis pass computes it for the others)."
TICK_TOKENS_UP_TO = 30  # token text as x tick labels up to this many steps (one method shown)


def _movers_text(notes: dict, limit: int = 5) -> str:
    """'moved most:' lines from SafeCoDe's notes, or '' when the step has none."""
    movers = notes.get("movers") or []
    lines = []
    for m in movers[:limit]:
        tok = m.get("token")
        name = esc(repr(tok)) if tok is not None else f"#{m.get('token_id')}"
        lines.append(f"  {name} {_signed(float(m.get('delta', float('nan'))))}")
    return "<br>moved most (Δ log p):<br>" + "<br>".join(lines) if lines else ""


def _signed(x: float) -> str:
    """+1.234, or +1.2e-04 for tiny moves (a fake or well-grounded model moves little)."""
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if x == 0 or abs(x) >= 0.01 else f"{x:+.1e}"


def _has_delta(trace: Trace) -> bool:
    values = trace.scores.get(DELTA)
    return values is not None and any(math.isfinite(float(v)) for v in values)


def contrastive_delta_figure(traces: dict[str, Trace]) -> go.Figure:
    """One bar series (one method) or line per method (several) of the delta per step.

    x is the step (the token text as tick labels when one method with ≤ 30 steps is shown);
    hover names the token, its action and the top movers. SafeCoDe's modulated steps are
    shaded. Methods without the score are left out and named in an annotation.
    """
    shown = {name: tr for name, tr in traces.items() if _has_delta(tr)}
    missing = [name for name, tr in traces.items() if not _has_delta(tr)]
    if not shown:
        names = ", ".join(missing) or "any method"
        return empty_figure(TITLE, MISSING_NOTE.format(names=names))

    single = len(shown) == 1
    fig = go.Figure()
    longest = 0
    for index, (name, tr) in enumerate(shown.items()):
        deltas = [float(v) if math.isfinite(float(v)) else None for v in tr.scores[DELTA]]
        hover = [
            f"<b>{esc(name)}</b> · step {i}<br>token {esc(repr(tok))} ({action})<br>Δ = "
            + ("n/a" if d is None else _signed(d))
            + _movers_text(note)
            for i, (tok, action, d, note) in enumerate(zip(tr.tokens, tr.actions, deltas, tr.notes))
        ]
        common = dict(
            x=list(range(len(tr))), y=deltas, name=name, hovertext=hover, hoverinfo="text",
        )
        color = method_color(tr.method, index)
        if single:
            fig.add_trace(go.Bar(marker_color=color, **common))
        else:
            fig.add_trace(go.Scatter(mode="lines+markers", line=dict(color=color, width=2), marker=dict(size=5), **common))
        longest = max(longest, len(tr))
        steps = tr.knobs.get("steps")
        if tr.method == "safecode" and steps:
            fig.add_vrect(
                x0=-0.5, x1=min(int(steps), len(tr)) - 0.5, fillcolor=method_color("safecode"), opacity=0.1, line_width=0,
                annotation_text="modulated steps", annotation_position="top left", annotation_font_size=11,
            )

    fig.add_hline(y=0, line_color="#444", line_width=1)
    only = next(iter(shown.values()))
    token_ticks = single and len(only) <= TICK_TOKENS_UP_TO
    if token_ticks:
        fig.update_xaxes(
            tickmode="array", tickvals=list(range(len(only))), ticktext=[token_label(t, 8) for t in only.tokens],
            tickangle=-60, tickfont=dict(size=10),
        )
    fig.update_xaxes(title=dict(text="generated token (step)", standoff=6), range=[-0.6, max(longest, 1) - 0.4])
    fig.update_yaxes(title="log p(real) − log p(noised)", zeroline=False)
    bottom = 95 if token_ticks else 55
    if missing:
        fig.add_annotation(
            text=MISSING_NOTE.format(names=", ".join(missing)), xref="paper", yref="paper", x=0, y=0,
            xanchor="left", yanchor="top", yshift=-bottom + 5, showarrow=False, align="left",
            font=dict(size=11, color="#555"),
        )
        bottom += 40
    style(
        fig,
        TITLE,
        "> 0: the real image made the chosen token more likely<br>than a noised copy of the image did",
        showlegend=not single,
        legend=dict(title=dict(text="method")),
        bargap=0.15,
    )
    fig.update_layout(margin=dict(b=bottom), height=400 + (40 if missing else 0))
    return fig
