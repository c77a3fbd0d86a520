"""SafeSteer's Decoding-Probe and Modal Semantic Alignment Vector (MSAV).

    v = Cᵀ(h − m)      m: mean calibration h₀, C: top-k principal components (paper: k = 4)
    s = wᵀv + b        logistic regression; σ(s) = P(harmful)
    μ = mean h₀(image-carried harmful: TYPO) − mean h₀(text-only harmful: CB)

Fitted with scikit-learn, stored as plain arrays so scoring during decoding is one matmul.
A probe file is keyed by model id and calibration-set hash; a file from another model or
another calibration set is refused, a corrupt one refitted.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score

N_COMPONENTS = 4  # the paper's 4 principal components (one knob away from the default "auto")
COMPONENT_CHOICES = (4, 8, 16, 32, 64, 128)  # what "auto" tries, and what a user may pick
AUTO = "auto"  # the smallest k of COMPONENT_CHOICES whose held-out AUROC is within AUTO_TOLERANCE of the best
AUTO_TOLERANCE = 0.01


class ProbeError(RuntimeError):
    """A probe file is missing, corrupt, or belongs to another model / calibration set."""


@dataclass
class DecodingProbe:
    model_id: str  # the adapter's model_id the probe was fitted on
    calibration_hash: str  # calibration_hash() of the set it was fitted on
    mean: np.ndarray  # [D] m
    components: np.ndarray  # [k, D] C (rows = principal directions; k = 4 in the paper)
    weight: np.ndarray  # [k] w
    bias: float  # b
    mu: np.ndarray  # [D] MSAV μ
    mu_cb: np.ndarray  # [D] mean h₀ of text-only (CB) harmful items: α = ‖h₀ − μ_CB‖₂
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out accuracy / AUROC, fit times

    def __post_init__(self) -> None:
        D = self.mean.shape[0]
        k = self.components.shape[0]
        assert self.components.shape == (k, D) and self.weight.shape == (k,)
        assert self.mu.shape == (D,) and self.mu_cb.shape == (D,)
        self._torch: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    # ---- scoring ---------------------------------------------------------------------
    def logit(self, h: np.ndarray) -> np.ndarray:
        """s for hidden states [N, D] (or [D])."""
        return (np.asarray(h, dtype=np.float32) - self.mean) @ self.components.T @ self.weight + self.bias

    def prob(self, h: np.ndarray) -> np.ndarray:
        """σ(s) = P(harmful)."""
        return 1.0 / (1.0 + np.exp(-self.logit(h)))

    def logit_torch(self, h: torch.Tensor) -> torch.Tensor:
        """s for [N, D] tensors, on their device: scoring k candidates costs one small matmul."""
        if h.device not in self._torch:
            self._torch[h.device] = tuple(
                torch.as_tensor(a, dtype=torch.float32, device=h.device) for a in (self.mean, self.components, self.weight)
            )
        mean, comps, w = self._torch[h.device]
        return (h.float() - mean) @ comps.T @ w + self.bias

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, mean=self.mean, components=self.components, weight=self.weight, bias=np.float32(self.bias),
            mu=self.mu, mu_cb=self.mu_cb,
            header=np.array(json.dumps({"model_id": self.model_id, "calibration_hash": self.calibration_hash, "metrics": self.metrics})),
        )
        tmp.replace(path)  # atomic: a crash never leaves half a probe behind
        return path

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None, calibration_hash: str | None = None) -> "DecodingProbe":
        path = Path(path)
        if not path.is_file():
            raise ProbeError(f"No probe file at {path}.")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                probe = cls(
                    model_id=header["model_id"], calibration_hash=header["calibration_hash"],
                    mean=z["mean"], components=z["components"], weight=z["weight"], bias=float(z["bias"]),
                    mu=z["mu"], mu_cb=z["mu_cb"], metrics=header.get("metrics", {}),
                )
        except Exception as exc:  # truncated zip, missing array, bad JSON, wrong shapes
            raise ProbeError(f"Probe file {path} is corrupt ({type(exc).__name__}: {exc}).") from exc
        if model_id is not None and probe.model_id != model_id:
            raise ProbeError(f"Probe file {path} was fitted on {probe.model_id!r}, not on {model_id!r}; refusing to use it.")
        if calibration_hash is not None and probe.calibration_hash != calibration_hash:
            raise ProbeError(f"Probe file {path} was fitted on another calibration set ({probe.calibration_hash[:12]}…).")
        return probe


def fit_probe(
    h: np.ndarray,
    labels: Sequence[str],
    compositions: Sequence[str],
    splits: Sequence[str],
    model_id: str,
    calibration_hash: str,
    seed: int = 0,
    n_components: int | str = N_COMPONENTS,
) -> DecodingProbe:
    """Fit m, C, w, b on the train split; μ and μ_CB from the harmful train items; score held-out.

    `n_components="auto"` fits every k of COMPONENT_CHOICES and keeps the smallest whose
    held-out AUROC is within AUTO_TOLERANCE of the best: on small models the top 4 PCs can
    encode the composition (blank page, typed phrase, list) rather than the harm.
    """
    if n_components == AUTO:
        return _fit_auto(h, labels, compositions, splits, model_id, calibration_hash, seed)
    t0 = time.perf_counter()
    y = np.array([lab == "harmful" for lab in labels], dtype=np.int64)
    comp, split = np.asarray(compositions), np.asarray(splits)
    train = split == "train"
    if y[train].min() == y[train].max():
        raise ProbeError("The training split needs both harmful and harmless items.")
    pca = PCA(n_components=n_components, random_state=seed).fit(h[train])  # centres on m, keeps C
    v = pca.transform(h[train])
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(v, y[train])
    harmful_train = train & (y == 1)
    image_carried = harmful_train & np.isin(comp, ["TYPO", "FIGSTEP"])  # the calibration set has TYPO only
    text_only = harmful_train & (comp == "CB")
    if not image_carried.any() or not text_only.any():
        raise ProbeError("MSAV needs harmful items both text-only (CB) and image-carried (TYPO).")
    mu_cb = h[text_only].mean(0)
    probe = DecodingProbe(
        model_id=model_id, calibration_hash=calibration_hash,
        mean=pca.mean_.astype(np.float32), components=pca.components_.astype(np.float32),
        weight=clf.coef_[0].astype(np.float32), bias=float(clf.intercept_[0]),
        mu=(h[image_carried].mean(0) - mu_cb).astype(np.float32), mu_cb=mu_cb.astype(np.float32),
    )
    held = split == "heldout"  # rows marked otherwise (e.g. left out of training on purpose) are not scored
    probe.metrics = evaluate(probe, h[held], y[held], comp[held])
    probe.metrics["fit_seconds"] = time.perf_counter() - t0
    probe.metrics["n_train"] = int(train.sum())
    probe.metrics["explained_variance"] = [round(float(x), 4) for x in pca.explained_variance_ratio_]
    probe.metrics["components"] = int(n_components)
    return probe


def _fit_auto(h, labels, compositions, splits, model_id, calibration_hash, seed) -> DecodingProbe:
    """Fit each k in COMPONENT_CHOICES; keep the smallest within AUTO_TOLERANCE of the best held-out AUROC."""
    n_train = int((np.asarray(splits) == "train").sum())
    ks = [k for k in COMPONENT_CHOICES if k <= min(n_train, h.shape[1])]
    fitted = {k: fit_probe(h, labels, compositions, splits, model_id, calibration_hash, seed, k) for k in ks}
    auroc = {k: (p.metrics.get("overall") or {}).get("auroc") or 0.0 for k, p in fitted.items()}
    best = max(auroc.values())
    k = min(k for k in ks if auroc[k] >= best - AUTO_TOLERANCE)
    probe = fitted[k]
    probe.metrics["selection"] = {"rule": f"smallest k within {AUTO_TOLERANCE} of the best held-out AUROC", "auroc_by_k": {str(k): auroc[k] for k in ks}}
    return probe


def is_components(k: object) -> bool:
    """Whether `k` is a valid probe size as a config holds it: "auto" or an int of COMPONENT_CHOICES."""
    return k == AUTO or (isinstance(k, int) and not isinstance(k, bool) and k in COMPONENT_CHOICES)


def parse_components(value: int | str) -> int | str:
    """"auto" or one of COMPONENT_CHOICES, from a flag, a dropdown or a config; else ValueError."""
    text = str(value).strip().lower()
    k = int(text) if text.isdigit() else text
    if is_components(k):
        return k
    raise ValueError(f"probe components must be 'auto' or one of {', '.join(map(str, COMPONENT_CHOICES))}, got {str(value)[:40]!r}")


def describe_probe(probe: DecodingProbe) -> str:
    """One line for the UI and the CLI: the k in use and its held-out AUROC."""
    auroc = (probe.metrics.get("overall") or {}).get("auroc")
    how = "auto" if "selection" in probe.metrics else "fixed"
    shown = f"{auroc:.2f}" if isinstance(auroc, (int, float)) else "n/a"
    return f"probe: {probe.n_components} PCA components ({how}), held-out AUROC {shown}"


def evaluate(probe: DecodingProbe, h: np.ndarray, y: np.ndarray, compositions: np.ndarray) -> dict[str, Any]:
    """Held-out accuracy and AUROC, overall and per composition."""
    def block(mask: np.ndarray) -> dict[str, Any]:
        p = probe.prob(h[mask])
        both = len(set(y[mask].tolist())) == 2
        return {
            "n": int(mask.sum()),
            "accuracy": round(float(accuracy_score(y[mask], p > 0.5)), 4),
            "auroc": round(float(roc_auc_score(y[mask], p)), 4) if both else None,
        }

    if len(y) == 0:
        return {}
    out = {"overall": block(np.ones(len(y), dtype=bool))}
    for c in sorted(set(compositions.tolist())):
        out[c] = block(compositions == c)
    return out
