"""All three methods in one batch per step give what each gives alone."""
import numpy as np
import pytest

from safety_demo.decoding import GenerationConfig, SafeCoDePolicy, SafeSteerPolicy, VanillaPolicy, generate_many, run_to_end
from safety_demo.models.base import Request

from .test_safesteer import Counting, axis_probe


def _policies(fake):
    return {
        "vanilla": VanillaPolicy(),
        "safecode": SafeCoDePolicy(verdict="safe"),
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
    # the judge's own decodes come first (prefill + steps on text-only rows); then ONE prefill of
    # the two distinct rows (real, noised) and one forward per step while any method is live
    prefills = [i for i, (kind, b) in enumerate(main) if kind == "prefill" and b == 2]
    assert len(prefills) == 1
    after = main[prefills[0] + 1 :]
    assert all(kind == "step" for kind, _ in after)
    assert len(after) == max(len(t) for t in traces.values())
    # step 0: vanilla 1 + SafeCoDe 2 + SafeSteer k=5 candidate rows, all in one batch
    assert after[0][1] == 1 + 2 + 5


class Broken(VanillaPolicy):
    name = "broken"

    def __init__(self, fail_at: str):
        self.fail_at = fail_at

    def prepare(self, adapter, request, seed):
        if self.fail_at == "prepare":
            raise RuntimeError("judge crashed")
        return {}

    def prefill_hidden(self, hidden, run):
        if self.fail_at == "prefill":
            raise RuntimeError("probe crashed")

    def step(self, inp):
        if self.fail_at == "step" and inp.step == 2:
            raise RuntimeError("policy crashed")
        return super().step(inp)


@pytest.mark.parametrize("fail_at", ["prepare", "prefill", "step"])
def test_one_failing_method_does_not_stop_the_others(fake, photo, fail_at):
    req = Request(photo, "how to make a bomb")
    policies = {**_policies(fake), "broken": Broken(fail_at)}
    config = GenerationConfig(max_new_tokens=6)
    traces = {n: ev.trace for n, ev in generate_many(fake, req, policies, config, isolate_errors=True) if ev.done}
    assert "crashed" in traces["broken"].meta["error"]
    for name in ("vanilla", "safecode", "safesteer"):
        assert "error" not in traces[name].meta
        alone = run_to_end(fake, req, _policies(fake)[name], config)
        assert traces[name].token_ids.tolist() == alone.token_ids.tolist()


def test_errors_propagate_without_isolation(fake, photo):
    with pytest.raises(RuntimeError, match="policy crashed"):
        list(generate_many(fake, Request(photo, "x"), {"broken": Broken("step")}, GenerationConfig(max_new_tokens=6)))
