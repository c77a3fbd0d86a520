"""Branching: go on from any step of a kept answer with another token, on the kept KV cache."""
from dataclasses import replace

import numpy as np
import pytest

from safety_demo.compare import Column, branch
from safety_demo.decoding import Engine, GenerationConfig, SafeCoDePolicy, SafeSteerPolicy, VanillaPolicy, run_to_end
from safety_demo.inputs import InputError
from safety_demo.models.base import Request

from .test_safesteer import Counting, axis_probe

CONFIG = GenerationConfig(max_new_tokens=8, ignore_eos=True)


def _policies(fake):
    return {
        "vanilla": VanillaPolicy(),
        "safecode-safe": SafeCoDePolicy.for_model(fake, verdict="safe", steps=4),
        "safecode-unsafe": SafeCoDePolicy.for_model(fake, verdict="unsafe", steps=4),
        "safesteer": SafeSteerPolicy(probe=axis_probe(fake, bias=5.0), steps=3),
    }


def _kept(adapter, request, policy, config=CONFIG):
    """One lane added with keep=True: its trace and its kept cache."""
    engine = Engine(adapter, config)
    engine.add("m", policy, request, keep=True)
    (done,) = [e for _, e in engine.run() if e.done]
    return done.trace, done.cache


def _branch(adapter, cache, step, token):
    engine = Engine(adapter, cache.config)
    engine.branch("b", cache, step, token)
    (done,) = [e for _, e in engine.run() if e.done]
    return done


@pytest.mark.parametrize("method", ["vanilla", "safecode-safe", "safecode-unsafe", "safesteer"])
@pytest.mark.parametrize("step", [0, 2, 5])
def test_a_branch_that_keeps_the_token_is_the_answer_again(fake, photo, method, step):
    """The kept cache cut back to step s, plus the method's state there, equals decoding from the start."""
    request = Request(photo, "how to make a bomb")
    trace, cache = _kept(fake, request, _policies(fake)[method])
    again = _branch(fake, cache, step, int(trace.token_ids[step])).trace
    assert again.token_ids.tolist() == trace.token_ids.tolist()
    assert again.actions[:step] == trace.actions[:step] and again.actions[step] == "branched"
    after = slice(step + 1, None)
    np.testing.assert_allclose(again.raw_probs[after], trace.raw_probs[after], rtol=1e-4, atol=1e-6)
    for key, values in trace.scores.items():  # SafeCoDe's contrastive deltas: the noised row came back too
        np.testing.assert_allclose(again.scores[key][after], values[after], rtol=1e-3, atol=1e-5)
    assert again.actions[after] == trace.actions[after]


def _forced(inner, prefix):
    """`inner`, with the first len(prefix) tokens forced (its own state and rows otherwise)."""

    class Forced(type(inner)):
        def step(self, view):
            d = super().step(view)
            if view.step < len(prefix) and (d.steer_hidden is None):
                return replace(d, forced_token=prefix[view.step], lookahead=None, action="forced")
            return d

    forced = Forced.__new__(Forced)
    forced.__dict__.update(inner.__dict__)
    return forced


@pytest.mark.parametrize("method", ["vanilla", "safecode-safe", "safesteer"])
def test_a_branch_with_another_token_equals_a_decode_forced_to_that_prefix(fake, photo, method):
    request = Request(photo, "how to make a bomb")
    trace, cache = _kept(fake, request, _policies(fake)[method])
    step = 2
    other = next(int(c) for c in trace.candidate_ids[step] if c >= 0 and c != trace.token_ids[step])
    branched = _branch(fake, cache, step, other).trace
    prefix = [*trace.token_ids[:step].tolist(), other]
    scratch = run_to_end(fake, request, _forced(_policies(fake)[method], prefix), CONFIG)
    assert branched.token_ids.tolist() == scratch.token_ids.tolist()
    assert branched.token_ids[step] == other and branched.token_ids.tolist() != trace.token_ids.tolist()
    np.testing.assert_allclose(branched.raw_probs[step + 1 :], scratch.raw_probs[step + 1 :], rtol=1e-4, atol=1e-6)


def test_a_branch_runs_no_prefill_and_feeds_only_the_rows_alive_at_its_step(fake, photo):
    request = Request(photo, "how to make a bomb")
    trace, cache = _kept(fake, request, _policies(fake)["safecode-safe"])
    assert sorted(cache.rows) == [0, 1] and cache.rows[1][1] == 4  # the noised row left after the 4 modulated steps
    for step, rows in ((1, 2), (5, 1)):
        counting = Counting(fake)
        engine = Engine(counting, CONFIG)
        engine.branch("b", cache, step, int(trace.token_ids[step]))
        list(engine.run())
        assert [k for k, _ in counting.calls].count("prefill") == 0
        assert counting.calls[0] == ("step", rows)  # inside SafeCoDe's window the noised row is back


def test_a_branch_can_be_branched_again_and_leaves_the_kept_cache_as_it_was(fake, photo):
    request = Request(photo, "describe the image")
    trace, cache = _kept(fake, request, VanillaPolicy())
    first = _branch(fake, cache, 3, int(trace.candidate_ids[3][1]))
    assert first.cache is not None
    second = _branch(fake, first.cache, 5, int(first.trace.candidate_ids[5][1])).trace
    assert second.token_ids[:5].tolist() == first.trace.token_ids[:5].tolist() and second.actions[3] == second.actions[5] == "branched"
    again = _branch(fake, cache, 4, int(trace.token_ids[4])).trace  # the kept cache is unchanged by the branches
    assert again.token_ids.tolist() == trace.token_ids.tolist()


def test_compare_branch_streams_a_column_and_refuses_bad_requests(fake, photo):
    request = Request(photo, "describe the image")
    trace, cache = _kept(fake, request, VanillaPolicy())
    column = Column("vanilla", tokens=[(t, None) for t in trace.answer_tokens], done=True, trace=trace, cache=cache)
    other = int(trace.candidate_ids[2][1])
    columns = list(branch(fake, column, 2, other))
    assert columns[-1].done and columns[-1].trace.token_ids[2] == other
    assert [t for t, _ in columns[-1].tokens[:2]] == list(trace.answer_tokens[:2])
    with pytest.raises(InputError, match="not a candidate"):
        list(branch(fake, column, 2, 10**9))
    with pytest.raises(InputError, match="not in this answer"):
        list(branch(fake, column, 99, other))
    with pytest.raises(InputError, match="no cache"):
        list(branch(fake, Column("vanilla", trace=trace), 2, other))
