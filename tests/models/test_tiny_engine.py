"""Plumbing: the engine and all three methods, side by side, on every tiny random family.

Tiny random models say nothing about quality; these tests prove the decoding engine, the
SafeCoDe real+noised batch and SafeSteer's candidate rows run on each family's real classes.
"""
import pytest

from safety_demo.decoding import GenerationConfig, SafeCoDePolicy, SafeSteerPolicy, VanillaPolicy, generate_many, run_to_end
from safety_demo.models.tiny import TINY_FAMILIES, load_tiny

from ..decoding.test_safesteer import axis_probe
from .test_tiny_matrix import REQ


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_plumbing_engine_three_methods_side_by_side(family):
    tiny = load_tiny(family)
    policies = lambda: {  # noqa: E731 - fresh policies for each run
        "vanilla": VanillaPolicy(),
        "safecode": SafeCoDePolicy.for_model(tiny, verdict="unsafe", caption_max_tokens=4),
        "safesteer": SafeSteerPolicy(probe=axis_probe(tiny, bias=5.0), steps=2, top_k=3),
    }
    config = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    together = {n: e.trace for n, e in generate_many(tiny, REQ, policies(), config) if e.done}
    assert set(together) == {"vanilla", "safecode", "safesteer"}
    for name, policy in policies().items():
        alone = run_to_end(tiny, REQ, policy, config)
        assert together[name].token_ids.tolist() == alone.token_ids.tolist(), (family, name)
        assert len(alone) == 5
    assert together["safecode"].actions[0] == "forced"
    assert together["safesteer"].actions[:2] == ["reranked", "reranked"]
    assert together["safesteer"].msav.fired


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_plumbing_self_judge_captions_then_judges_text_only(family):
    from safety_demo.decoding.judge import run_judge

    result = run_judge(load_tiny(family), REQ, caption_max_tokens=3, verdict_max_tokens=2)
    assert result.verdict in ("safe", "unsafe") and result.source in ("parsed", "unparsed-default-safe")


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_plumbing_a_branch_on_the_kept_cache_is_the_answer_again(family):
    """Branches on each family's real cache classes (M-RoPE deltas in `extras` included): keeping
    the token at step 2 gives the same answer; a family whose cache cannot be cut keeps none."""
    from safety_demo.decoding import Engine

    tiny = load_tiny(family)
    config = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    engine = Engine(tiny, config)
    engine.add("safecode", SafeCoDePolicy.for_model(tiny, verdict="safe", steps=4), REQ, keep=True)
    (done,) = [e for _, e in engine.run() if e.done]
    if done.cache is None:
        assert any(getattr(layer, "is_sliding", False) for layer in getattr(tiny.prefill([REQ]).state.cache, "layers", []))
        return
    again = Engine(tiny, config)
    again.branch("b", done.cache, 2, int(done.trace.token_ids[2]))
    (branched,) = [e for _, e in again.run() if e.done]
    assert branched.trace.token_ids.tolist() == done.trace.token_ids.tolist(), family
