"""Check SafeSteer's premise on a model: `python -m safety_demo.eval.premise [--model builtin]`.

The paper's §3.2 finding (1), Figure 2(b): during the first decoding steps, the hidden states
of refusal tokens score HIGHER on the harm probe than those of complying tokens. That is why
eq. (6) samples from Softmax(s) and the highest-s candidate steers towards a refusal.

For harmful held-out calibration requests (the project's own; no benchmark item), decode
greedily with vanilla, score the hidden states of the first 3 answer tokens with the probe,
and read the 16-token answer with the phrase refusal detector (which does not count a bare
"I"). Reported: mean P(harmful) of the first 3 tokens for answers that open as refusals vs
answers that comply, and the AUROC of that separation (1.0 = every refusal scores above
every compliance; 0.5 = no separation; below 0.5 = the premise is reversed on this model).
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
from sklearn.metrics import roc_auc_score

from ..data.calibration import image_for
from ..decoding import GenerationConfig, run_to_end
from ..models import Request, load_adapter
from ..probe import describe_probe, get_probe
from .metrics import is_refusal
from .msav import held_out_harmful

FIRST_TOKENS = 3
ANSWER_TOKENS = 16


def measure(model: str = "builtin", per_composition: int = 20, components: int | str = "auto") -> tuple[str, dict]:
    adapter = load_adapter(model)
    probe = get_probe(adapter, components=components)
    chosen = held_out_harmful(per_composition)
    config = GenerationConfig(max_new_tokens=ANSWER_TOKENS, keep_hidden=True)
    rows = []
    for it in chosen:
        trace = run_to_end(adapter, Request(image_for(it), it.prompt), config=config)
        scores = probe.prob(trace.hidden[:FIRST_TOKENS].astype(np.float32))
        rows.append({"composition": it.composition, "refused": is_refusal(trace.text), "score": float(np.mean(scores)), "text": trace.text})

    def block(sub: list[dict]) -> tuple[str, str, str, str]:
        ref = [r["score"] for r in sub if r["refused"]]
        com = [r["score"] for r in sub if not r["refused"]]
        auroc = roc_auc_score([r["refused"] for r in sub], [r["score"] for r in sub]) if ref and com else float("nan")
        med = lambda xs: f"{statistics.mean(xs):.3f}" if xs else "—"  # noqa: E731
        return f"{len(ref)}/{len(sub)}", med(ref), med(com), "—" if np.isnan(auroc) else f"{auroc:.2f}"

    lines = [
        f"SafeSteer's premise on `{model}` ({describe_probe(probe)}): {len(rows)} harmful held-out calibration requests, "
        f"greedy vanilla, {ANSWER_TOKENS}-token answers read by the phrase detector; score = mean P(harmful) of the first {FIRST_TOKENS} answer tokens.",
        "",
        "| composition | refused | mean score, refusals | mean score, compliances | AUROC (refusal vs compliance) |",
        "|---|---|---|---|---|",
    ]
    for comp in ("CB", "TYPO", "FIGSTEP", "all"):
        sub = rows if comp == "all" else [r for r in rows if r["composition"] == comp]
        lines.append(f"| {comp} | " + " | ".join(block(sub)) + " |")
    return "\n".join(lines) + "\n", {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--per-composition", type=int, default=20)
    parser.add_argument("--components", default="auto")
    args = parser.parse_args()
    components = args.components if args.components == "auto" else int(args.components)
    print(measure(args.model, args.per_composition, components)[0])


if __name__ == "__main__":
    main()
