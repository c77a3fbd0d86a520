"""The trace: what every view, export and benchmark reads. Data only: this module imports numpy.

One row per generated token, plus typed run-level facts (the judge, MSAV, timings, error).
Every per-step capture has one spelling, listed in `CAPTURES`; a trace holding a name that is
not listed is refused, so a typo cannot create a second spelling.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ACTIONS = ("kept", "boosted", "suppressed", "forced", "reranked", "branched")  # branched: the user picked this token (a branch)

# Per-step scalars (`Trace.scores[name]`, [T]) and per-candidate vectors (`Trace.candidate_scores`, [T, K]).
CAPTURES: dict[str, str] = {
    "policy.contrastive.delta": "SafeCoDe: log p(real) − log p(noised) of the chosen token",
    "policy.refusal_mass.raw": "SafeCoDe: the model's own probability mass on the refusal vocabulary R",
    "policy.refusal_mass.cd": "SafeCoDe: R's mass under the contrastive distribution",
    "policy.refusal_mass.policy": "SafeCoDe: R's mass after boosting or suppressing",
    "probe.score": "P(harmful) the probe reads from the chosen token's hidden state (any method)",
    "probe.chosen_score": "SafeSteer: P(harmful) of the candidate it kept",
    "probe.top1_score": "SafeSteer: P(harmful) of the model's own top-1 candidate",
}
CANDIDATE_CAPTURES: dict[str, str] = {
    "probe.score": "SafeSteer: P(harmful) of each candidate's look-ahead hidden state",
}


@dataclass
class StepRecord:
    """What the engine saw and did at one step, before it is stacked into a `Trace`."""

    token_id: int
    token: str
    candidate_ids: list[int]  # [K] candidates, by the method's probability
    raw_probs: list[float]  # [K] the model's own probability of each candidate (real image row, unsteered)
    policy_probs: list[float]  # [K] the method's adjusted probability of each candidate
    candidate_tokens: list[str] = field(default_factory=list)  # [K] their texts (the trace has no tokenizer)
    action: str = "kept"
    scores: dict[str, float] = field(default_factory=dict)  # CAPTURES name -> value at this step
    candidate_scores: dict[str, list[float]] = field(default_factory=dict)  # CANDIDATE_CAPTURES name -> [K]
    notes: dict[str, Any] = field(default_factory=dict)  # ragged extras (top movers, forced phrase)
    hidden: np.ndarray | None = None  # [D] final-layer hidden state at this token's position
    seconds: float = 0.0  # wall time of the forward that produced this step


@dataclass
class Timings:
    """Seconds, measured by the engine."""

    prepare: float = 0.0  # before decoding: SafeCoDe's judge
    prefill: float = 0.0  # the prompt rows' forward
    decode: float = 0.0  # first token to last
    ttft: float | None = None  # request start to the first token
    total: float = 0.0


@dataclass
class JudgeInfo:
    """SafeCoDe's scene judge: its caption, raw reply and the verdict it led to."""

    caption: str
    raw: str  # the judge's reply as generated (or the probe's reading)
    verdict: str  # "safe" / "unsafe"
    source: str  # parsed / unparsed-default-safe / logit-fallback / override / probe
    p_unsafe: float  # P("unsafe") / (P("safe") + P("unsafe")) at the judge's first answer token
    seconds: float
    model: str = ""  # which model judged ("probe" for the probe judge)


@dataclass
class MsavInfo:
    """SafeSteer's MSAV at prefill: whether it fired and where it moved h₀."""

    fired: bool
    mode: str
    direction: str
    h0bar_score: float | None = None  # P(harmful | h̄₀) after the move
    shift_norm: float | None = None
    alpha: float | None = None  # ‖h₀ − μ_CB‖
    h0bar: np.ndarray | None = None  # [D] the moved h̄₀ the first token was read from


@dataclass
class Trace:
    """A whole decode, one row per generated token (T rows, K candidates each).

    Per-step fields:
      token_ids        [T] int64 chosen tokens
      tokens           [T] str text of each token
      candidate_ids    [T, K] int64 the method's top-K candidates (chosen token always included)
      candidate_tokens [T][K] str their texts
      raw_probs        [T, K] float32 the model's own probability of each candidate (real-image row, before any steering)
      policy_probs     [T, K] float32 the method's adjusted probability of each candidate
      actions          [T] str one of ACTIONS
      scores           CAPTURES name -> [T] float32 (NaN where a step has no value)
      candidate_scores CANDIDATE_CAPTURES name -> [T, K] float32 (NaN where absent)
      hidden           [T, D] float16 hidden state at each generated token (empty if not kept)
      notes            [T] dicts of ragged per-step extras
    Run-level fields: h₀, the judge, MSAV, P(harmful | h₀), timings, error and the knobs.
    """

    method: str
    text: str
    token_ids: np.ndarray
    tokens: list[str]
    candidate_ids: np.ndarray
    candidate_tokens: list[list[str]]
    raw_probs: np.ndarray
    policy_probs: np.ndarray
    actions: list[str]
    scores: dict[str, np.ndarray]
    candidate_scores: dict[str, np.ndarray]
    hidden: np.ndarray
    prefill_hidden: np.ndarray  # [D] float32 h₀: last prompt position at prefill
    notes: list[dict[str, Any]]
    model: str = ""
    model_id: str = ""
    prompt: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the generation config
    knobs: dict[str, Any] = field(default_factory=dict)  # the method's config
    timings: Timings = field(default_factory=Timings)
    judge: JudgeInfo | None = None
    msav: MsavInfo | None = None
    probe_h0: float | None = None  # P(harmful | h₀): the one spelling, whichever method read it
    probe: str = ""  # which probe read the scores (k, held-out AUROC)
    facts: dict[str, Any] = field(default_factory=dict)  # the method's other run facts (α, R, length cap)
    rows: int = 1  # rows this method decoded per step at the end
    shared_with: list[str] = field(default_factory=list)  # methods decoded in the same batch
    stopped_on_eos: bool = False
    cut: str | None = None  # why decoding ended early, when it did (the request's time limit)
    error: str | None = None  # this method failed; the others may have finished

    def __post_init__(self) -> None:
        T = len(self.token_ids)
        _require(len(self.tokens) == T and len(self.actions) == T and len(self.notes) == T and len(self.candidate_tokens) == T,
                 f"tokens, actions, notes and candidate_tokens need {T} rows")
        _require(self.candidate_ids.shape[0] == T and self.candidate_ids.shape == self.raw_probs.shape == self.policy_probs.shape,
                 f"candidate_ids, raw_probs and policy_probs need the same [T, K] shape, got {self.candidate_ids.shape}, "
                 f"{self.raw_probs.shape}, {self.policy_probs.shape}")
        _require(all(v.shape == (T,) for v in self.scores.values()), f"every score needs shape ({T},)")
        _require(all(v.shape == self.candidate_ids.shape for v in self.candidate_scores.values()), "every candidate score needs the [T, K] shape")
        _require(self.hidden.shape[0] in (0, T), f"hidden needs 0 or {T} rows, got {self.hidden.shape[0]}")
        _require(set(self.actions) <= set(ACTIONS), f"unknown actions {sorted(set(self.actions) - set(ACTIONS))}")
        _require(set(self.scores) <= set(CAPTURES), f"scores not in CAPTURES: {sorted(set(self.scores) - set(CAPTURES))}")
        _require(set(self.candidate_scores) <= set(CANDIDATE_CAPTURES),
                 f"candidate scores not in CANDIDATE_CAPTURES: {sorted(set(self.candidate_scores) - set(CANDIDATE_CAPTURES))}")

    def __len__(self) -> int:
        return len(self.token_ids)

    def keys(self) -> list[str]:
        """Names of every per-step capture, TransformerLens style."""
        return sorted([*self.scores, *(f"candidates.{k}" for k in self.candidate_scores)])

    def __repr__(self) -> str:
        return f"Trace(method={self.method!r}, tokens={len(self)}, keys={self.keys()})"

    @property
    def tokens_per_second(self) -> float:
        return len(self) / self.timings.decode if self.timings.decode > 0 else float("nan")

    @property
    def answer_tokens(self) -> list[str]:
        """The tokens a reader sees: without the end-of-turn token."""
        return self.tokens[:-1] if self.stopped_on_eos else list(self.tokens)

    @classmethod
    def from_steps(cls, method: str, text: str, steps: list[StepRecord], prefill_hidden: np.ndarray, **run: Any) -> "Trace":
        """Stack per-step records into [T, K] arrays; `run` holds the run-level fields."""
        T = len(steps)
        K = max((len(s.candidate_ids) for s in steps), default=0)

        def grid(get, dtype, fill):
            out = np.full((T, K), fill, dtype=dtype)
            for i, s in enumerate(steps):
                row = get(s)
                out[i, : len(row)] = row
            return out

        score_names = sorted({n for s in steps for n in s.scores})
        cand_names = sorted({n for s in steps for n in s.candidate_scores})
        hidden = [s.hidden for s in steps]
        return cls(
            method=method,
            text=text,
            token_ids=np.array([s.token_id for s in steps], dtype=np.int64),
            tokens=[s.token for s in steps],
            candidate_ids=grid(lambda s: s.candidate_ids, np.int64, -1),
            candidate_tokens=[list(s.candidate_tokens) or ["?"] * len(s.candidate_ids) for s in steps],
            raw_probs=grid(lambda s: s.raw_probs, np.float32, np.nan),
            policy_probs=grid(lambda s: s.policy_probs, np.float32, np.nan),
            actions=[s.action for s in steps],
            scores={n: np.array([s.scores.get(n, np.nan) for s in steps], dtype=np.float32) for n in score_names},
            candidate_scores={n: grid(lambda s: s.candidate_scores.get(n, []), np.float32, np.nan) for n in cand_names},
            hidden=np.stack(hidden).astype(np.float16) if steps and all(h is not None for h in hidden) else np.zeros((0, 0), np.float16),
            prefill_hidden=np.asarray(prefill_hidden, dtype=np.float32),
            notes=[s.notes for s in steps],
            **run,
        )

    # ---- export -------------------------------------------------------------------------
    def run_facts(self) -> dict[str, Any]:
        """The run-level fields as plain data (h̄₀ only as its norm; hidden states are large)."""
        msav = None
        if self.msav is not None:
            msav = {k: v for k, v in asdict(self.msav).items() if k != "h0bar"}
        return {
            "model": self.model, "model_id": self.model_id, "prompt": self.prompt, "config": self.config, "knobs": self.knobs,
            "timings": asdict(self.timings), "judge": asdict(self.judge) if self.judge else None, "msav": msav,
            "probe_h0": self.probe_h0, "probe": self.probe, "facts": self.facts, "rows": self.rows,
            "shared_with": self.shared_with, "stopped_on_eos": self.stopped_on_eos, "cut": self.cut, "error": self.error,
        }

    def to_dict(self, include_hidden: bool = False) -> dict[str, Any]:
        """JSON-ready dict; hidden states are large, so they are opt-in."""
        out: dict[str, Any] = {
            "method": self.method,
            "text": self.text,
            **_jsonable(self.run_facts()),
            "steps": [self._step_dict(i) for i in range(len(self))],
            "prefill_hidden_norm": float(np.linalg.norm(self.prefill_hidden)) if self.prefill_hidden.size else None,
        }
        if include_hidden:
            out["hidden"] = self.hidden.astype(np.float32).tolist()
            out["prefill_hidden"] = self.prefill_hidden.tolist()
            if self.msav is not None and self.msav.h0bar is not None:
                out["msav"]["h0bar"] = self.msav.h0bar.tolist()
        return out

    def _step_dict(self, i: int) -> dict[str, Any]:
        candidates = [
            {
                "token_id": int(c),
                "token": self.candidate_tokens[i][j] if j < len(self.candidate_tokens[i]) else None,
                "raw_prob": _num(self.raw_probs[i, j]),
                "policy_prob": _num(self.policy_probs[i, j]),
                **{k: _num(v[i, j]) for k, v in self.candidate_scores.items()},
            }
            for j, c in enumerate(self.candidate_ids[i])
            if c >= 0
        ]
        return {
            "step": i, "token_id": int(self.token_ids[i]), "token": self.tokens[i], "action": self.actions[i],
            "candidates": candidates, "scores": {k: _num(v[i]) for k, v in self.scores.items()}, "notes": _jsonable(self.notes[i]),
        }

    def save_json(self, path: str | Path, include_hidden: bool = False) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(include_hidden), ensure_ascii=False, indent=1))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        """Rebuild from `to_dict` output (hidden states only if they were included)."""
        steps = [
            StepRecord(
                token_id=s["token_id"],
                token=s["token"],
                candidate_ids=[c["token_id"] for c in s["candidates"]],
                candidate_tokens=[c.get("token") or "?" for c in s["candidates"]],
                raw_probs=[_unnum(c["raw_prob"]) for c in s["candidates"]],
                policy_probs=[_unnum(c["policy_prob"]) for c in s["candidates"]],
                action=s["action"],
                scores={k: _unnum(v) for k, v in s["scores"].items()},
                candidate_scores=_candidate_columns(s["candidates"]),
                notes=s["notes"],
                hidden=np.asarray(data["hidden"][i], dtype=np.float32) if "hidden" in data else None,
            )
            for i, s in enumerate(data["steps"])
        ]
        prefill = np.asarray(data.get("prefill_hidden", []), dtype=np.float32)
        run = {name: data[name] for name in _RUN_FIELDS if name in data}
        run["timings"] = Timings(**data.get("timings", {}))
        run["judge"] = JudgeInfo(**data["judge"]) if data.get("judge") else None
        if data.get("msav"):
            msav = dict(data["msav"])
            h0bar = msav.pop("h0bar", None)
            run["msav"] = MsavInfo(**msav, h0bar=np.asarray(h0bar, dtype=np.float32) if h0bar is not None else None)
        return cls.from_steps(data["method"], data["text"], steps, prefill, **run)


_RUN_FIELDS = ("model", "model_id", "prompt", "config", "knobs", "probe_h0", "probe", "facts", "rows", "shared_with", "stopped_on_eos", "cut", "error")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"Trace: {message}.")


def _candidate_columns(cands: list[dict[str, Any]]) -> dict[str, list[float]]:
    fixed = {"token_id", "token", "raw_prob", "policy_prob"}
    names = sorted({k for c in cands for k in c} - fixed)
    return {n: [_unnum(c.get(n)) for c in cands] for n in names}


def _num(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)


def _unnum(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and np.isnan(x):
        return None
    return x
