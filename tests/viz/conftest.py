"""Synthetic traces for the viz tests: no model, a few tokens, tiny hidden states."""
from __future__ import annotations

import numpy as np
import pytest

from safety_demo.trace import MsavInfo, StepRecord, Trace

D = 16  # hidden size of the synthetic traces and calibration set
WORDS = ["I", " cannot", " help", " with", " that", ".", "\n", " Sure", " here", " is"]


def make_trace(
    method: str = "vanilla",
    T: int = 6,
    K: int = 3,
    seed: int = 0,
    probe: bool = True,
    delta: bool = False,
    candidate_probe: bool = False,
    steered: bool = False,
    hidden: bool = True,
    actions: list[str] | None = None,
    dims: int = D,
) -> Trace:
    rng = np.random.default_rng(seed)
    steps = []
    for t in range(T):
        token_id = 100 + t
        cands = [token_id] + [200 + t * K + j for j in range(K - 1)]  # chosen first
        if method == "safesteer" and t == 1:
            cands = cands[1:] + cands[:1]  # a reranked step where the model's top-1 lost
        raw = rng.dirichlet(np.ones(K)).tolist()
        pol = rng.dirichlet(np.ones(K)).tolist()
        scores = {}
        if probe:
            scores["probe.score"] = float(t / max(T - 1, 1))  # 0 … 1 along the answer
        if delta:
            scores["policy.contrastive.delta"] = float(rng.normal())
        notes = {}
        if delta:
            notes["movers"] = [{"token_id": 300 + t, "token": " sorry", "delta": 2.5}, {"token_id": 400 + t, "delta": -1.25}]
        steps.append(
            StepRecord(
                token_id=token_id,
                token=WORDS[t % len(WORDS)],
                candidate_ids=cands,
                raw_probs=raw,
                policy_probs=pol,
                action=(actions[t] if actions else "kept"),
                scores=scores,
                candidate_scores={"probe.score": rng.uniform(size=K).tolist()} if candidate_probe else {},
                notes=notes,
                hidden=rng.normal(size=dims).astype(np.float32) if hidden else None,
            )
        )
    run = {"knobs": {"steps": 3} if method == "safecode" else {}}
    if steered:
        run["msav"] = MsavInfo(fired=True, mode="scaled", direction="to_text", h0bar_score=0.3, h0bar=np.full(dims, 0.5, dtype=np.float32))
        run["probe_h0"] = 0.9
    h0 = np.linspace(-1, 1, dims).astype(np.float32)  # the same query h₀ for every method
    return Trace.from_steps(method, "".join(s.token for s in steps), steps, h0, **run)


@pytest.fixture
def traces() -> dict[str, Trace]:
    return {
        "vanilla": make_trace("vanilla", seed=1),
        "safecode": make_trace("safecode", T=5, seed=2, delta=True, actions=["forced", "forced", "kept", "kept", "kept"]),
        "safesteer": make_trace("safesteer", T=7, seed=3, candidate_probe=True, steered=True, actions=["reranked"] * 3 + ["kept"] * 4),
    }


@pytest.fixture
def calibration() -> tuple[np.ndarray, list[str], list[str]]:
    """[N, D] states, labels and compositions; harmful shifted along one axis."""
    rng = np.random.default_rng(0)
    labels, comps, rows = [], [], []
    for label, shift in (("harmful", 2.0), ("harmless", -2.0)):
        for comp in ("CB", "TYPO", "FIGSTEP") + (("NATURAL",) if label == "harmless" else ()):
            for _ in range(12):
                labels.append(label)
                comps.append(comp)
                rows.append(rng.normal(size=D) + shift * np.eye(D)[0])
    return np.array(rows, dtype=np.float32), labels, comps


@pytest.fixture
def probe():
    """A 2-PC probe whose direction is the calibration's harm axis (e₀): s(h) = 1.5·h₀ + 0.2."""
    from safety_demo.probe import DecodingProbe

    zeros = np.zeros(D, np.float32)
    return DecodingProbe(
        model_id="test", calibration_hash="test", mean=zeros, components=np.eye(D, dtype=np.float32)[:2],
        weight=np.array([1.5, 0.0], np.float32), bias=0.2, mu=zeros, mu_cb=zeros,
    )
