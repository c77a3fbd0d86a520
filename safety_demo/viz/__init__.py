"""Views of a `Trace`: plain functions, a trace in and a `go.Figure` (or table data) out.

    answer.py      an answer as running text, coloured by the probe's P(harmful): `answer_html`
    contrast.py    log p(real image) − log p(noised image) per step: `contrastive_delta_figure`
    inspector.py   one step's candidates, both probabilities, probe scores: `step_table`, `step_figure`
    hidden_map.py  calibration h₀, the query's h₀ / h̄₀ and each method's trajectory: `hidden_state_map`

No Gradio here. Every figure shares `style()`: plotly_white, readable fonts, a title with a
one-line subtitle, sized for a ~600×400 panel (the width follows the container).
"""
from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

FONT_SIZE = 13  # body text: axis labels, legend, hover
TITLE_SIZE = 16
HEIGHT = 400  # default figure height in px; the width follows the container

HARMFUL_COLOR = "#d62728"
HARMLESS_COLOR = "#1f77b4"
VANILLA_PROB_COLOR = "#9e9e9e"  # the model's own probability in the inspector


def method_color(method: str, index: int = 0) -> str:
    """The method's colour from the registry; variants and unknown names take a spare one."""
    from ..methods import color

    return color(method, index)


def style(fig: go.Figure, title: str, subtitle: str = "", height: int = HEIGHT, **layout: Any) -> go.Figure:
    """The common look: plotly_white, 13 px text, a title and a short explanatory subtitle."""
    fig.update_layout(
        template="plotly_white",
        title=dict(
            text=title,
            subtitle=dict(text=subtitle, font=dict(size=FONT_SIZE - 1, color="#555")) if subtitle else None,
            x=0.01,
            xanchor="left",
            font=dict(size=TITLE_SIZE),
        ),
        font=dict(size=FONT_SIZE),
        height=height,
        autosize=True,
        margin=dict(l=60, r=20, t=top_margin(subtitle), b=50),
        hoverlabel=dict(font_size=FONT_SIZE, align="left"),
        **layout,
    )
    return fig


def top_margin(subtitle: str = "") -> int:
    """Room for the title and a subtitle of one or more `<br>`-separated lines (keep each ≤ 60 chars)."""
    return 50 + (20 * (subtitle.count("<br>") + 1) + 8 if subtitle else 0)


def below_plot(height: int, top: int, bottom: int, px: int) -> float:
    """Paper y that sits `px` pixels under the plot area (for legends, which take no pixel shift)."""
    return -px / max(height - top - bottom, 1)


def empty_figure(title: str, message: str, height: int = 220) -> go.Figure:
    """A figure that says, in words, why there is nothing to plot."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=FONT_SIZE, color="#555"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, title, height=height)


def esc(text: str) -> str:
    """Text safe inside plotly labels: plotly reads `<…>` as markup, so `<eos>` would vanish."""
    return html.escape(str(text), quote=False)


def token_label(token: str, limit: int = 12) -> str:
    """A token as it should read in a label: whitespace made visible, long pieces cut, escaped."""
    if token == "":
        return "∅"
    shown = token.replace("\n", "⏎").replace("\t", "⇥")
    if shown.strip() == "":
        shown = "␣" * len(shown)
    return esc(shown if len(shown) <= limit else shown[: limit - 1] + "…")


def figures_html(figures: dict[str, go.Figure], title: str = "safety_demo run") -> str:
    """One self-contained HTML page holding every figure, plotly.js inlined once."""
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        body = fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%")
        parts.append(f'<section>\n<h2>{html.escape(name)}</h2>\n{body}\n</section>')
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
        "h2{font-size:1.1em;margin:1.5em 0 0.3em}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


# The views (imported after the shared style above, which they use).
from .contrast import contrastive_delta_figure  # noqa: E402
from .hidden_map import PROBE_AXIS, PROJECTIONS, VIEWS, hidden_state_map, warm_up_umap  # noqa: E402
from .inspector import step_choices, step_figure, step_table  # noqa: E402

__all__ = [
    "PROBE_AXIS", "PROJECTIONS", "VIEWS", "contrastive_delta_figure", "empty_figure", "esc", "figures_html",
    "hidden_state_map", "method_color", "step_choices", "step_figure",
    "step_table", "style", "token_label", "warm_up_umap",
]
