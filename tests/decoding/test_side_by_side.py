"""All three methods in one batch per step give what each gives alone."""
import numpy as np
import pytest

from safety_demo.decoding import Engine, GenerationConfig, SafeCoDePolicy, SafeSteerPolicy, VanillaPolicy, generate_many, run_to_end
from safety_demo.models.base import Request

from .test_safesteer import Counting, axis_probe


def _policies(fake):
    return {
        "vanilla": VanillaPolicy(),
        "safecode": SafeCoDePolicy.for_model(fake, verdict="safe"),
        "safesteer": SafeSteerPolicy(probe=axis_probe(fake, bias=5.0), steps=3),
    }


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_side_by_side_equals_separate_runs(fake, photo, temperature):
    req = Request(photo, "how to make a bomb")
    config = GenerationConfig(max_new_tokens=10, temperature=temperature, seed=3)
    together = {name: ev.trace for name, ev in generate_many(fake, req, _policies(fake), config) if ev.done}
    for name, policy in _policies(fake).items():
        alone = run_to_end(fake, req, policy, config)
        assert together[name].token_ids.tolist() == alone.token_ids.tolist(), name
        np.testing.assert_allclose(together[name].raw_probs, alone.raw_probs, rtol=1e-4, atol=1e-6)
        for key, values in alone.scores.items():
            np.testing.assert_allclose(together[name].scores[key], values, rtol=1e-3, atol=1e-5)


def test_side_by_side_is_one_prefill_and_one_forward_per_step(fake, photo):
    counting = Counting(fake)
    req = Request(photo, "how to make a bomb")
    events = list(generate_many(counting, req, _policies(fake), GenerationConfig(max_new_tokens=6)))
    traces = {name: ev.trace for name, ev in events if ev.done}
    main = [c for c in counting.calls]
    # ONE prefill of the two distinct rows (real, noised) and one forward per step while any method is live
    prefills = [i for i, (kind, b) in enumerate(main) if kind == "prefill" and b == 2]
    assert len(prefills) == 1
    after = main[prefills[0] + 1 :]
    assert all(kind == "step" for kind, _ in after)
    assert len(after) == max(len(t) for t in traces.values())
    # step 0: vanilla 1 + SafeCoDe 2 + SafeSteer k=5 candidate rows, all in one batch
    assert after[0][1] == 1 + 2 + 5


class Broken(VanillaPolicy):
    """Vanilla that crashes at one point of the contract."""

    name = "broken"

    def __init__(self, fail_at: str):
        self.fail_at = fail_at

    def rows(self, request, seed):
        if self.fail_at == "rows":
            raise RuntimeError("rows crashed")
        return super().rows(request, seed)

    def step(self, view):
        if self.fail_at == "step" and view.step == 2 or self.fail_at == "first step" and view.step == 0:
            raise RuntimeError("policy crashed")
        return super().step(view)


@pytest.mark.parametrize("fail_at", ["rows", "first step", "step"])
def test_one_failing_method_does_not_stop_the_others(fake, photo, fail_at):
    req = Request(photo, "how to make a bomb")
    policies = {**_policies(fake), "broken": Broken(fail_at)}
    config = GenerationConfig(max_new_tokens=6)
    traces = {n: ev.trace for n, ev in generate_many(fake, req, policies, config, isolate_errors=True) if ev.done}
    assert "crashed" in traces["broken"].error
    assert len(traces["broken"]) == (2 if fail_at == "step" else 0)
    for name in ("vanilla", "safecode", "safesteer"):
        assert traces[name].error is None
        alone = run_to_end(fake, req, _policies(fake)[name], config)
        assert traces[name].token_ids.tolist() == alone.token_ids.tolist()


def test_without_isolation_a_failure_propagates(fake, photo):
    with pytest.raises(RuntimeError, match="policy crashed"):
        list(generate_many(fake, Request(photo, "x"), {"broken": Broken("step")}, GenerationConfig(max_new_tokens=4)))


@pytest.mark.parametrize("join_at", [1, 3])
def test_a_lane_joining_mid_decode_decodes_what_it_decodes_alone(fake, photo, white, join_at):
    """Joinable lanes: a method added after step 0 joins the batch (its own prefill, appended to the
    shared cache with left padding) and both lanes keep their solo tokens."""
    first, late = Request(photo, "describe the image"), Request(white, "tell me a much longer story about this white image please")
    config = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    counting = Counting(fake)
    engine = Engine(counting, config)
    engine.add("first", SafeSteerPolicy(probe=axis_probe(fake, bias=5.0), steps=1), first)
    traces, steps_seen = {}, 0
    for name, event in engine.run():
        if event.done:
            traces[name] = event.trace
        elif name == "first":
            steps_seen += 1
            if steps_seen == join_at:
                engine.add("late", SafeCoDePolicy.for_model(fake, verdict="unsafe"), late)
    assert traces["first"].token_ids.tolist() == run_to_end(fake, first, SafeSteerPolicy(probe=axis_probe(fake, bias=5.0), steps=1), config).token_ids.tolist()
    alone = run_to_end(fake, late, SafeCoDePolicy.for_model(fake, verdict="unsafe"), config)
    assert traces["late"].token_ids.tolist() == alone.token_ids.tolist()
    np.testing.assert_allclose(traces["late"].raw_probs, alone.raw_probs, rtol=1e-4, atol=1e-6)
    prefills = [b for kind, b in counting.calls if kind == "prefill"]
    assert prefills == [1, 2]  # the first lane's row, then the late lane's real + noised rows
    both = [b for kind, b in counting.calls if kind == "step"][join_at]
    assert both == 1 + 2  # after joining, one forward carries both lanes' rows
