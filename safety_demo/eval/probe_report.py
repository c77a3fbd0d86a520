"""How well the Decoding-Probe separates, per k and out of domain: `python -m safety_demo.eval.probe_report`.

Reads the cached calibration h₀ of a model (no model calls when the cache exists) and prints:
  - held-out AUROC for every k of COMPONENT_CHOICES, and which k `auto` keeps;
  - the AUROC of a probe fitted WITHOUT the FigStep-style rows (train split minus FIGSTEP),
    scored on the held-out rows of every composition, so FIGSTEP is out of domain, as for
    the paper's probe, which never saw FigStep.
"""
from __future__ import annotations

import argparse

import numpy as np

from ..models import load_adapter
from ..probe import AUTO, COMPONENT_CHOICES, calibration_key, fit_probe
from ..probe import calibration_features


def report(model: str = "builtin") -> str:
    adapter = load_adapter(model)
    key = calibration_key()
    f = calibration_features(adapter, key, progress=True)
    h, labels, comps, splits = f["h"].astype(np.float32), f["labels"], f["compositions"], f["splits"]

    def row(probe, name: str) -> str:
        m = probe.metrics
        cells = [f"{(m.get(c) or {}).get('auroc') or float('nan'):.3f}" for c in ("overall", "CB", "TYPO", "FIGSTEP")]
        return f"| {name} | {probe.n_components} | " + " | ".join(cells) + " |"

    lines = [f"Decoding-Probe on `{model}` ({adapter.model_id}); held-out calibration split, AUROC.", "",
             "| probe | k | overall | CB | TYPO | FIGSTEP |", "|---|---|---|---|---|---|"]
    for k in COMPONENT_CHOICES:
        lines.append(row(fit_probe(h, labels, comps, splits, adapter.model_id, key, n_components=k), f"k = {k}"))
    auto = fit_probe(h, labels, comps, splits, adapter.model_id, key, n_components=AUTO)
    lines.append(row(auto, "auto"))
    # out of domain: the train split without the FigStep-style rows; the held-out rows unchanged
    ood_splits = np.where((comps == "FIGSTEP") & (splits == "train"), "unused", splits)
    for k in (4, auto.n_components):
        lines.append(row(fit_probe(h, labels, comps, ood_splits, adapter.model_id, key, n_components=k), f"no FIGSTEP rows in training, k = {k}"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin")
    print(report(parser.parse_args().model))


if __name__ == "__main__":
    main()
