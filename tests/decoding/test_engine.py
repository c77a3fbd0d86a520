"""The engine on the fake model: caching, determinism, streaming, lookahead, trace export."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from safety_demo.decoding import Decision, GenerationConfig, Policy, Trace, generate, run_to_end
from safety_demo.inputs import InputError
from safety_demo.models.base import Request


def test_cached_steps_match_full_recompute(fake, photo):
    req = Request(photo, "describe the image")
    trace = run_to_end(fake, req, config=GenerationConfig(max_new_tokens=8))
    ids = trace.token_ids.tolist()
    out = fake.prefill([req])
    for t, tok in enumerate(ids[:-1]):
        out = fake.step(torch.tensor([tok]), out.state)
        full = fake.prefill([req], [ids[: t + 1]])
        torch.testing.assert_close(out.logits, full.logits, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_equals_single_rows(fake, photo, white):
    a, b = Request(photo, "describe"), Request(white, "tell me about the image of a cat and a dog")
    both = fake.prefill([a, b])
    torch.testing.assert_close(both.logits[0], fake.prefill([a]).logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both.logits[1], fake.prefill([b]).logits[0], atol=1e-4, rtol=1e-4)
    stepped = fake.step(torch.tensor([7, 7]), both.state)
    alone = fake.step(torch.tensor([7]), fake.prefill([a]).state)
    torch.testing.assert_close(stepped.logits[0], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_image_changes_first_token_logits(fake, photo, white):
    diff = (fake.prefill([Request(photo, "describe")]).logits - fake.prefill([Request(white, "describe")]).logits).abs().max()
    assert diff > 1e-3


def test_greedy_is_deterministic_and_seeded_sampling_repeats(fake, photo):
    req = Request(photo, "tell me about the image")
    greedy = [run_to_end(fake, req, config=GenerationConfig(max_new_tokens=10)).token_ids for _ in range(2)]
    np.testing.assert_array_equal(*greedy)
    sampled = [run_to_end(fake, req, config=GenerationConfig(max_new_tokens=10, temperature=1.5, seed=s)).token_ids for s in (1, 1, 2, 3)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert any(not np.array_equal(sampled[0], s) for s in sampled[2:]), "different seeds never differed"


def test_streams_one_event_per_token_then_done(fake, photo):
    events = list(generate(fake, Request(photo, "describe"), config=GenerationConfig(max_new_tokens=6)))
    assert events[-1].done and not any(e.done for e in events[:-1])
    trace = events[-1].trace
    assert [e.token_id for e in events[:-1]] == trace.token_ids.tolist()
    assert events[-2].text == trace.text
    # trace invariants: chosen token among candidates, probabilities are probabilities
    for i, tok in enumerate(trace.token_ids):
        assert tok in trace.candidate_ids[i]
    assert np.all((trace.raw_probs >= 0) & (trace.raw_probs <= 1))
    assert trace.hidden.shape == (len(trace), fake.hidden_size)
    assert trace.prefill_hidden.shape == (fake.hidden_size,)


def test_stops_on_eos(fake, photo):
    class EosNow(Policy):
        name = "vanilla"

        def step(self, view):
            return Decision(logits=view.logits[0], forced_token=fake.tokenizer.eos_token_id, action="forced")

    trace = run_to_end(fake, Request(photo, "x"), EosNow(), GenerationConfig(max_new_tokens=20))
    assert len(trace) == 1 and trace.stopped_on_eos


class PickLast(Policy):
    """Asks the engine to look 3 candidates ahead and always keeps the last one."""

    name = "vanilla"

    def step(self, view):
        return Decision(logits=view.logits[0], lookahead=torch.topk(view.logits[0], 3).indices, action="reranked")

    def choose(self, view, decision, ahead_hidden):
        assert ahead_hidden.shape[0] == 3
        return replace(decision, candidate_scores={"probe.score": ahead_hidden[:, 0]}, choice=2)


def test_lookahead_keeps_the_chosen_rows_cache_and_logits(fake, photo):
    req = Request(photo, "describe")
    trace = run_to_end(fake, req, PickLast(), GenerationConfig(max_new_tokens=4))
    ids = trace.token_ids.tolist()
    assert ids == trace.candidate_ids[:, 2].tolist()[: len(ids)]
    # the kept state continues exactly like a fresh recompute of the chosen prefix
    full = fake.prefill([req], [ids])
    out = fake.prefill([req])
    for tok in ids:
        out = fake.step(torch.tensor([tok]), out.state)
    torch.testing.assert_close(out.logits, full.logits, atol=1e-4, rtol=1e-4)
    assert np.isfinite(trace.candidate_scores["probe.score"]).all()


def test_trace_json_round_trip(fake, photo, tmp_path):
    trace = run_to_end(fake, Request(photo, "describe"), config=GenerationConfig(max_new_tokens=5))
    path = trace.save_json(tmp_path / "t.json", include_hidden=True)
    data = json.loads(path.read_text())
    back = Trace.from_dict(data)
    assert back.tokens == trace.tokens and back.text == trace.text
    np.testing.assert_allclose(back.raw_probs, trace.raw_probs, atol=1e-5)
    np.testing.assert_allclose(back.hidden.astype(np.float32), trace.hidden.astype(np.float32), atol=1e-2)


@pytest.mark.parametrize(
    "kwargs", [dict(max_new_tokens=0), dict(max_new_tokens=10**6), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5)]
)
def test_out_of_range_knobs_are_refused(kwargs):
    with pytest.raises(InputError):
        GenerationConfig(**kwargs)


def test_policy_probabilities_are_the_methods_own(fake, photo):
    """Vanilla's distribution is the model's (computed once); a method that changes the logits records its own."""
    class Hotter(Policy):
        name = "hotter"

        def step(self, view):
            return Decision(logits=view.logits[0] * 2.0, state=view.state)

    req, gen = Request(photo, "describe"), GenerationConfig(max_new_tokens=4)
    plain = run_to_end(fake, req, config=gen)
    np.testing.assert_array_equal(plain.policy_probs, plain.raw_probs)
    hot = run_to_end(fake, req, Hotter(), gen)
    assert not np.allclose(hot.policy_probs, hot.raw_probs)
    np.testing.assert_array_equal(hot.candidate_ids[0], plain.candidate_ids[0])  # doubling keeps the order
    np.testing.assert_array_equal(hot.raw_probs[0], plain.raw_probs[0])  # the model's own, whatever the method does
