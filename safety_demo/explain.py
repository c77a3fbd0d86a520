"""Plain-words walk-through of a side-by-side run: which token flipped, why, where to look.

Generated from the traces (never canned), so a teacher can click an example and read what
happened on this model, this time.
"""
from __future__ import annotations

import math

from .methods import METHODS, title
from .trace import Trace


def _tok(text: str) -> str:
    return "`" + (text.replace("`", "'").replace("\n", "⏎") or "∅") + "`"


def _pct(p: float) -> str:
    return "n/a" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{100 * p:.0f}%"


def first_divergence(a: Trace, b: Trace) -> int | None:
    """First step where two answers chose different tokens (None if one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a.token_ids.tolist(), b.token_ids.tolist())):
        if x != y:
            return i
    return None


def walkthrough(traces: dict[str, Trace]) -> str:
    """Markdown: the judge, MSAV, the first flipped token of each method vs vanilla, and why."""
    lines = ["### What happened in this run"]
    vanilla = traces.get("vanilla")
    if vanilla is not None and len(vanilla):
        lines.append(f"**Vanilla** (the model alone) starts with {_tok(''.join(vanilla.tokens[:6]))} …")
    sc = traces.get("safecode")
    if sc is not None and sc.judge is not None:
        j = sc.judge
        how = {"parsed": "its own words", "logit-fallback": "its first-token odds (it said neither word)", "override": "your override"}.get(j.source, j.source)
        lines.append(
            f"**SafeCoDe's judge** captioned the image as *{j.caption or '(empty)'}* and, from the prompt and that caption, "
            f"called the request **{j.verdict}** (decided by {how}). So SafeCoDe contrasts the real image with a noised copy "
            f"using α = {sc.facts.get('alpha')} and, for the first tokens, "
            + ("forces a refusal opening." if j.verdict == "unsafe" else "halves the probability of refusal tokens.")
        )
    ss = traces.get("safesteer")
    if ss is not None and ss.msav is not None:
        m = ss.msav
        fired = (
            f"above the threshold, so **MSAV fired**: h₀ was moved along the image-vs-text harm direction and the probe now says {_pct(m.h0bar_score)}."
            if m.fired else "below the threshold, so MSAV did not fire (h₀ left as it is)."
        )
        lines.append(f"**SafeSteer's probe** reads P(harmful) = {_pct(ss.probe_h0)} from the prompt's last hidden state h₀: {fired}")
    for name in (n for n in METHODS if n != "vanilla"):
        t = traces.get(name)
        if t is None or vanilla is None or not len(t):
            continue
        step = first_divergence(vanilla, t)
        if step is None:
            lines.append(f"**{title(name)}** chose the same tokens as vanilla for as long as both ran: the method did not change this answer.")
            continue
        why = _why(t, step)
        lines.append(
            f"**{title(name)}** first differs at step {step}: vanilla chose {_tok(vanilla.tokens[step])}, "
            f"{title(name)} chose {_tok(t.tokens[step])} ({t.actions[step]}). {why} "
            f"→ Open the *Step inspector*, pick {title(name)} and step {step}."
        )
    lines.append(
        "**Where to look next:** the token colours show the probe's P(harmful) of each answer token; "
        "the *Contrastive delta* tab shows which tokens the real image favoured over the noised one; "
        "the *Hidden-state map* shows where this prompt lands among harmful and harmless reference requests."
    )
    return "\n\n".join(lines)


def _why(t: Trace, step: int) -> str:
    action = t.actions[step]
    if action == "forced":
        phrases = t.notes[0].get("phrases", []) if t.notes else []
        chosen = next((p["phrase"] for p in phrases if p.get("chosen")), None)
        return f"The judge said unsafe, so SafeCoDe forced the opening of the refusal phrase *{chosen}*." if chosen else "The token was forced."
    if action == "reranked":
        scores = t.candidate_scores.get("probe.score")
        if scores is not None:
            j = list(t.candidate_ids[step]).index(t.token_ids[step])
            top = t.candidate_tokens[step][0]
            return (
                f"The model's favourite was {_tok(top)} with P(harmful) {_pct(float(scores[step, 0]))}; "
                f"the probe preferred {_tok(t.tokens[step])} at {_pct(float(scores[step, j]))}."
            )
    if action == "suppressed":
        return "The judge said safe, so refusal tokens were halved and the contrast with the noised image shifted the choice."
    if action == "boosted":
        return "No refusal phrase fitted, so refusal tokens were boosted."
    if step > 0:
        return "Earlier choices differed in context only: an earlier forced or reranked token changed what came next."
    return ""
