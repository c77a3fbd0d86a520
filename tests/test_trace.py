"""The trace: one spelling per capture, typed run facts, invariants that raise ValueError."""
import json

import numpy as np
import pytest

from safety_demo.trace import CAPTURES, JudgeInfo, MsavInfo, StepRecord, Timings, Trace


def _steps(T=3, scores=None, cands=None, action="kept"):
    return [
        StepRecord(token_id=i, token=f"t{i}", candidate_ids=[i, 9], raw_probs=[0.6, 0.4], policy_probs=[0.7, 0.3], action=action,
                   scores=scores or {}, candidate_scores=cands or {}, hidden=np.full(4, i, np.float32))
        for i in range(T)
    ]


def test_the_trace_module_imports_only_numpy():
    import ast
    from pathlib import Path

    import safety_demo.trace as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "json", "dataclasses", "pathlib", "typing", "numpy"}, imported


def test_a_capture_outside_the_table_is_refused():
    with pytest.raises(ValueError, match="not in CAPTURES"):
        Trace.from_steps("vanilla", "", _steps(scores={"probe.h0_score": 0.5}), np.zeros(4))
    trace = Trace.from_steps("vanilla", "", _steps(scores={"probe.score": 0.5}), np.zeros(4))
    assert trace.keys() == ["probe.score"] and "probe.score" in CAPTURES


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda kw: kw.update(tokens=kw["tokens"][:-1]), "rows"),
        (lambda kw: kw.update(raw_probs=kw["raw_probs"][:, :1]), "shape"),
        (lambda kw: kw.update(actions=["kept", "kept", "jumped"]), "unknown actions"),
        (lambda kw: kw.update(hidden=np.zeros((2, 4), np.float16)), "hidden"),
    ],
)
def test_broken_invariants_raise_value_error(change, message):
    good = Trace.from_steps("vanilla", "", _steps(), np.zeros(4))
    kw = {f: getattr(good, f) for f in good.__dataclass_fields__}
    change(kw)
    with pytest.raises(ValueError, match=message):
        Trace(**kw)


def test_typed_run_facts_survive_the_json_round_trip(tmp_path):
    trace = Trace.from_steps(
        "safesteer", "t0t1t2", _steps(action="reranked", cands={"probe.score": [0.2, 0.9]}), np.ones(4),
        timings=Timings(prepare=0.0, prefill=0.5, decode=1.5, ttft=0.7, total=2.0),
        judge=JudgeInfo("a sign", "unsafe", "unsafe", "parsed", 0.8, 1.2, "builtin"),
        msav=MsavInfo(fired=True, mode="scaled", direction="to_text", h0bar_score=0.3, shift_norm=1.0, alpha=2.0, h0bar=np.full(4, 0.5, np.float32)),
        probe_h0=0.9, facts={"alpha": 0.3}, error=None, model="builtin", model_id="builtin:x",
    )
    data = json.loads(trace.save_json(tmp_path / "t.json", include_hidden=True).read_text())
    assert data["judge"]["verdict"] == "unsafe" and data["msav"]["fired"] and data["probe_h0"] == 0.9
    back = Trace.from_dict(data)
    assert back.judge == trace.judge and back.timings == trace.timings and back.probe_h0 == 0.9
    np.testing.assert_allclose(back.msav.h0bar, 0.5)
    assert back.tokens_per_second == pytest.approx(3 / 1.5)
    np.testing.assert_allclose(back.candidate_scores["probe.score"], trace.candidate_scores["probe.score"])
