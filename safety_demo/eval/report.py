"""Evaluation reports: `summary.md` (tables) and `report.html` (plotly bar charts).

Both are built from the `Rate` rows of `metrics.rates` and the records themselves; they
hold data only and open offline (the HTML embeds plotly.js once).
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from .metrics import GROUPINGS, Rate, error_counts

METRIC_NOTES = {
    "ASR": "harmful items answered without a refusal (lower is safer)",
    "refusal rate": "benign items refused (lower is more helpful)",
}
APPROXIMATE = (
    "Rates read each answer with the three-way answer judge (refusal / safe answer or warning / "
    "harmful compliance; `safety_demo.eval.answer_judge`, agreement with labels read by hand in "
    "docs/RESULTS.md); [a, b] is the 95% Wilson interval. The column *phrase* is {judge}: keyword "
    "matching over the first 200 characters, which counts a warning as an attack success. Both "
    "readers are approximate: read the rates as indicative."
)


def _ci(rate: Rate) -> str:
    lo, hi = rate.wilson()
    return "—" if math.isnan(lo) else f"[{100 * lo:.0f}, {100 * hi:.0f}]"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}%"


def _methods(table: Sequence[Rate]) -> list[str]:
    return list(dict.fromkeys(r.method for r in table))


def overall_rows(records: Sequence[Mapping[str, Any]], table: Sequence[Rate]) -> list[dict[str, Any]]:
    """One row per method: n and rate per metric, errors, mean tokens and decode speed."""
    errors = error_counts(records)
    rows = []
    for m in _methods(table) or list(dict.fromkeys(r["method"] for r in records)):
        mine = [r for r in records if r["method"] == m and not r.get("error")]
        tokens = sum(r.get("tokens") or 0 for r in mine)
        seconds = sum(r.get("decode_seconds") or 0.0 for r in mine)
        row: dict[str, Any] = {"method": m, "errors": errors.get(m, 0), "mean tokens": tokens / len(mine) if mine else float("nan"), "tok/s": tokens / seconds if seconds > 0 else float("nan")}
        for r in table:
            if r.method == m and r.grouping == "overall":
                row[r.metric] = r
        rows.append(row)
    return rows


def summary_markdown(
    records: Sequence[Mapping[str, Any]], table: Sequence[Rate], info: Mapping[str, Any] | None = None, phrase: Sequence[Rate] = ()
) -> str:
    """Markdown: per-method overall table, then one table per metric × grouping (groups × methods).

    `table` holds the headline rates (the three-way judge), `phrase` the phrase matcher's beside them.
    """
    info = info or {}
    phrase_cell = {(r.method, r.metric, r.grouping, r.group): r for r in phrase}
    methods = _methods(table)
    metrics = list(dict.fromkeys(r.metric for r in table))
    judge = next((r.get("refusal_judge") for r in records if r.get("refusal_judge")), "phrase_judge")
    model_id = next((r.get("model_id") for r in records if r.get("model_id")), info.get("model", "?"))
    lines = [
        f"# Evaluation: {info.get('bench', '?')}",
        "",
        f"Model `{info.get('model', '?')}` ({model_id}), {len({r['item_id'] for r in records})} items, "
        f"methods {', '.join(methods) or '—'}, max {info.get('max_new_tokens', '?')} new tokens, seed {info.get('seed', '?')}.",
        APPROXIMATE.format(judge=f"`{judge}`"),
        "",
        "## Overall",
        "",
    ]
    head = ["method"] + [c for m in metrics for c in (f"{m} n", m, "95% CI", f"{m} (phrase)")] + ["errors", "mean tokens", "tok/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in overall_rows(records, table):
        cells = [row["method"]]
        for m in metrics:
            rate = row.get(m)
            other = phrase_cell.get((row["method"], m, "overall", "all"))
            cells += [str(rate.n), _pct(rate.value), _ci(rate), _pct(other.value) if other else "—"] if rate else ["0", "—", "—", "—"]
        cells += [str(row["errors"]), f"{row['mean tokens']:.1f}", f"{row['tok/s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for grouping in GROUPINGS[1:]:
        for metric in metrics:
            rows = [r for r in table if r.grouping == grouping and r.metric == metric]
            groups = list(dict.fromkeys(r.group for r in rows))
            if not groups:
                continue
            lines += ["", f"## {metric} by {grouping}", "", f"{metric}: {METRIC_NOTES[metric]}.", ""]
            lines += [f"| {grouping} | n | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
            for g in groups:
                cell = {r.method: r for r in rows if r.group == g}
                n = max(r.n for r in cell.values())
                vals = [(_pct(cell[m].value) + ("" if cell[m].n == n else f" (n={cell[m].n})")) if m in cell else "—" for m in methods]
                lines.append(f"| {g} | {n} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


# ---- charts ---------------------------------------------------------------------------------
def overall_figure(table: Sequence[Rate]) -> go.Figure:
    """Bars: one group per method, one bar per metric (ASR, refusal rate)."""
    fig = go.Figure()
    for metric in dict.fromkeys(r.metric for r in table):
        rows = [r for r in table if r.grouping == "overall" and r.metric == metric]
        fig.add_bar(name=metric, x=[r.method for r in rows], y=[r.value for r in rows], text=[f"{_pct(r.value)} (n={r.n})" for r in rows], textposition="auto")
    fig.update_layout(title="Overall, per method", barmode="group", yaxis=dict(title="rate", range=[0, 1], tickformat=".0%"))
    return fig


def group_figure(table: Sequence[Rate], grouping: str, metric: str) -> go.Figure:
    """Bars: one group per category (or composition), one bar per method."""
    rows = [r for r in table if r.grouping == grouping and r.metric == metric]
    fig = go.Figure()
    for method in _methods(rows):
        mine = [r for r in rows if r.method == method]
        fig.add_bar(name=method, x=[r.group for r in mine], y=[r.value for r in mine], hovertext=[f"n={r.n}" for r in mine])
    fig.update_layout(title=f"{metric} by {grouping} ({METRIC_NOTES[metric]})", barmode="group", yaxis=dict(title=metric, range=[0, 1], tickformat=".0%"))
    return fig


def figures(table: Sequence[Rate]) -> list[go.Figure]:
    """The overall chart, then one per metric × grouping that has any group."""
    figs = [overall_figure(table)]
    for grouping in GROUPINGS[1:]:
        for metric in dict.fromkeys(r.metric for r in table):
            if any(r.grouping == grouping and r.metric == metric for r in table):
                figs.append(group_figure(table, grouping, metric))
    return figs


def report_html(records: Sequence[Mapping[str, Any]], table: Sequence[Rate], info: Mapping[str, Any] | None = None, phrase: Sequence[Rate] = ()) -> str:
    """A standalone page: the summary (as preformatted markdown) and every chart."""
    info = info or {}
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures(table))]
    body = "\n".join(f'<section class="chart">{c}</section>' for c in charts)
    title = html.escape(f"Evaluation: {info.get('bench', '?')} — {info.get('model', '?')}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}pre{white-space:pre-wrap}</style></head>\n"
        f"<body><h1>{title}</h1>\n{body}\n<h2>Tables</h2><pre>{html.escape(summary_markdown(records, table, info, phrase))}</pre>\n</body></html>\n"
    )


def write_reports(
    out: Path, records: Sequence[Mapping[str, Any]], table: Sequence[Rate], info: Mapping[str, Any] | None = None, phrase: Sequence[Rate] = ()
) -> dict[str, Path]:
    """Write `summary.md` and `report.html` under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    summary, report = out / "summary.md", out / "report.html"
    summary.write_text(summary_markdown(records, table, info, phrase), encoding="utf-8")
    report.write_text(report_html(records, table, info, phrase), encoding="utf-8")
    return {"summary": summary, "report": report}


__all__ = ["figures", "group_figure", "overall_figure", "overall_rows", "report_html", "summary_markdown", "write_reports"]
