"""How well the Decoding-Probe separates, per k and out of domain: `python -m safety_demo.eval.probe_report`.

Reads the cached calibration h₀ of a model (no model calls when the cache exists) and prints:
  - held-out AUROC for every k of COMPONENT_CHOICES, and which k `auto` keeps;
  - how well each axis of the hidden-state map separates harmful from harmless held-out rows
    (the probe axis against the top PCs: why the map opens on the probe axis);
  - with `--figstep-ood`: how the probe, which never saw a FigStep-shaped row (the calibration
    set has none: hold-out discipline), reads the project's own requests rendered FigStep-style
    (held-out split, measuring only; their h₀ are extracted here, about 2 minutes on CPU).
"""
from __future__ import annotations

import argparse

import numpy as np

from ..models import load_adapter
from ..probe import AUTO, COMPONENT_CHOICES, calibration_key, fit_probe
from ..probe import calibration_features


def report(model: str = "builtin", figstep_ood: bool = False) -> str:
    adapter = load_adapter(model)
    key = calibration_key()
    f = calibration_features(adapter, key, progress=True)
    h, labels, comps, splits = f["h"].astype(np.float32), f["labels"], f["compositions"], f["splits"]

    def row(probe, name: str) -> str:
        m = probe.metrics
        cells = [f"{(m.get(c) or {}).get('auroc') or float('nan'):.3f}" for c in ("overall", "CB", "TYPO")]
        return f"| {name} | {probe.n_components} | " + " | ".join(cells) + " |"

    lines = [f"Decoding-Probe on `{model}` ({adapter.model_id}); held-out calibration split, AUROC.", "",
             "| probe | k | overall | CB | TYPO |", "|---|---|---|---|---|"]
    for k in COMPONENT_CHOICES:
        lines.append(row(fit_probe(h, labels, comps, splits, adapter.model_id, key, n_components=k), f"k = {k}"))
    auto = fit_probe(h, labels, comps, splits, adapter.model_id, key, n_components=AUTO)
    lines.append(row(auto, "auto"))
    lines += ["", *map_axes(h, labels, splits, auto)]
    if figstep_ood:
        from sklearn.metrics import roc_auc_score

        from ..data.calibration import calibration_items, image_for
        from ..models import Request
        from ..probe import extract_h0

        items = calibration_items(split="heldout", compositions=("FIGSTEP",))
        h_fig = extract_h0(adapter, [lambda it=it: Request(image_for(it), it.prompt) for it in items], progress=False)
        y = np.array([it.label == "harmful" for it in items])
        four = fit_probe(h, labels, comps, splits, adapter.model_id, key, n_components=4)
        lines += ["", f"Out of domain: {len(items)} held-out requests rendered FigStep-style (never in training; measuring only).", "",
                  "| probe | AUROC on FigStep-style rows |", "|---|---|"]
        for name, probe in (("k = 4", four), (f"auto (k = {auto.n_components})", auto)):
            lines.append(f"| {name} | {roc_auc_score(y, probe.prob(h_fig)):.3f} |")
    return "\n".join(lines) + "\n"


def map_axes(h: np.ndarray, labels, splits, probe) -> list[str]:
    """AUROC of harmful vs harmless held-out rows along each axis of the map (a PC's sign is
    arbitrary, so max(AUROC, 1 − AUROC) there), the axes fitted on the training rows."""
    from sklearn.metrics import roc_auc_score

    from ..viz.hidden_map import pca_2d, probe_axes

    train, held = np.asarray(splits) == "train", np.asarray(splits) != "train"
    y = np.asarray(labels)[held] == "harmful"
    rows = np.concatenate([h[train], h[held]])
    pcs, axes = pca_2d(rows, int(train.sum()))[train.sum():], probe_axes(rows, probe, int(train.sum()))[train.sum():]
    either = lambda v: max(roc_auc_score(y, v), 1 - roc_auc_score(y, v))
    return [f"Axes of the hidden-state map, AUROC harmful vs harmless on the {int(held.sum())} held-out rows:", "",
            "| axis | AUROC |", "|---|---|",
            f"| probe axis x (the probe's score, auto k = {probe.n_components}) | {roc_auc_score(y, axes[:, 0]):.3f} |",
            f"| probe axis y (main direction of the rest) | {either(axes[:, 1]):.3f} |",
            f"| PC 1 | {either(pcs[:, 0]):.3f} |", f"| PC 2 | {either(pcs[:, 1]):.3f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--figstep-ood", action="store_true", help="also score FigStep-style renderings of held-out requests")
    args = parser.parse_args()
    print(report(args.model, args.figstep_ood))


if __name__ == "__main__":
    main()
