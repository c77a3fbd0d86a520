"""An answer as running text: each token a coloured span inside the words, a card on hover or tap.

The colour is the SafeSteer probe's reading of the model's *harm recognition* at that token
(P(harmful) of its hidden state): pale = little, red = strong. It is not a verdict on the text
(see `LEGEND`). A token the method chose over the model's own top choice is underlined; the
step where an answer first parts from vanilla's is outlined.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

from ..trace import Trace

PALE, RED = (255, 255, 255), (232, 89, 74)  # P = 0 … 1

LEGEND = (
    "**Colour = how strongly the model's state at that token recognises harm**: the SafeSteer probe's P(harmful) of the "
    "token's hidden state, pale (low) to red (high); no colour = no probe for this model. It is *not* a verdict on the "
    "text: the probe was fitted on requests (harmful vs harmless ones), and while an answer is being decoded a refusal "
    "usually scores *higher* than a fluent harmful answer (the SafeSteer paper's §3.2), so a refusal lights up and a "
    "compliant harmful answer can stay pale. Underlined: the method chose another token than the model's own top "
    "choice. Outlined: where this answer first parts from vanilla's. Hover or tap a token for its card."
)


@dataclass(frozen=True)
class TokenView:
    """One token as the answer shows it."""

    text: str
    p_harm: float | None = None  # the probe's P(harmful) at this token
    action: str = ""  # what the method did (kept / forced / suppressed / boosted / reranked)
    rank: int | None = None  # 1 = the method's own top candidate
    candidates: int | None = None
    model_top: str | None = None  # the model's own top choice, when the method chose another
    parts: bool = False  # the first step where this answer parts from vanilla's
    step: int | None = None  # its step: a click on it opens the step inspector there


def harm_color(p: float | None) -> str:
    """Background of a token: pale to red with P(harmful); transparent without a probe."""
    if p is None or not math.isfinite(p):
        return "transparent"
    p = min(max(float(p), 0.0), 1.0)
    r, g, b = (round(a + (c - a) * p) for a, c in zip(PALE, RED))
    return f"rgb({r},{g},{b})"


def streamed_views(tokens: list[tuple[str, float | None]]) -> list[TokenView]:
    """While streaming: (text, P(harmful)) pairs, as `compare.Column.tokens` holds them."""
    return [TokenView(text, p, step=i) for i, (text, p) in enumerate(tokens)]


def trace_views(trace: Trace, parts_at: int | None = None) -> list[TokenView]:
    """A finished answer (its end-of-turn token left out), with each token's card."""
    probs = trace.scores.get("probe.score")
    views = []
    for i, text in enumerate(trace.answer_tokens):
        ids, raw, pol = trace.candidate_ids[i], trace.raw_probs[i], trace.policy_probs[i]
        valid = ids >= 0
        chosen = int(trace.token_ids[i])
        top = int(ids[valid][np.nanargmax(raw[valid])]) if valid.any() and np.isfinite(raw[valid]).any() else chosen
        order = [int(c) for c in ids[valid][np.argsort(-np.nan_to_num(pol[valid], nan=-1.0), kind="stable")]]
        model_top = trace.candidate_tokens[i][list(ids).index(top)] if top != chosen else None
        views.append(TokenView(
            text, None if probs is None else float(probs[i]), trace.actions[i],
            order.index(chosen) + 1 if chosen in order else None, len(order), model_top, parts_at == i, i,
        ))
    return views


def answer_html(views: list[TokenView], placeholder: str = "", growing: bool = False) -> str:
    """The answer as running text; every token a span with its colour and card.

    `growing` (while streaming): the closing tag is left to the browser, so each update's HTML
    begins with the last one's and Gradio sends only the new tokens (an "append" diff) instead
    of the whole answer again.
    """
    if not views:
        return f'<div class="answer empty">{html.escape(placeholder)}</div>'
    return '<div class="answer">' + "".join(_span(v) for v in views) + ("" if growing else "</div>")


def _span(v: TokenView) -> str:
    classes = "tok" + (" changed" if v.model_top is not None else "") + (" parts" if v.parts else "")
    card = [f"<b>{html.escape(repr(v.text))}</b>"]
    if v.p_harm is not None:
        card.append(f"harm recognised (probe P) {v.p_harm:.2f}")
    if v.action:
        card.append(v.action)
    if v.rank is not None:
        card.append(f"rank {v.rank} of {v.candidates}")
    if v.step is not None:
        card.append(f"step {v.step} (click: inspect it, branch from it)")
    if v.model_top is not None:
        card.append(f"model's own top choice: {html.escape(repr(v.model_top))}")
    if v.parts:
        card.append("first step where this answer parts from vanilla's")
    step = f' data-step="{v.step}"' if v.step is not None else ""
    return (
        f'<span class="{classes}" tabindex="0"{step} style="background:{harm_color(v.p_harm)}">{html.escape(v.text)}'
        f'<span class="card" role="tooltip">{" · ".join(card)}</span></span>'
    )


ANSWER_CSS = """
.answer {white-space: pre-wrap; word-break: break-word; line-height: 1.75; font-size: 0.95rem; min-height: 2em}
.answer.empty {color: #888}
.answer .tok {position: relative; border-radius: 3px; cursor: help}
.answer .tok.changed {text-decoration: underline 2px #333; text-underline-offset: 3px}
.answer .tok.parts {outline: 2px solid #6b3fd4; outline-offset: 1px}
.answer .tok .card {display: none; position: absolute; left: 0; top: 1.7em; z-index: 30; width: max-content;
  max-width: min(260px, 70vw); white-space: normal; background: #222; color: #fff; font-size: 0.78rem;
  line-height: 1.35; padding: 4px 7px; border-radius: 4px; text-decoration: none}
.answer .tok .card b {color: #fff}
.answer .tok:hover .card, .answer .tok:focus .card {display: block}
"""
