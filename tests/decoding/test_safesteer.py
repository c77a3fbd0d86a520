"""SafeSteer on the fake model with a probe whose scores we know: s(h) = h[0] + bias."""
import numpy as np
import pytest
import torch

from safety_demo.decoding import GenerationConfig, SafeSteerConfig, SafeSteerPolicy, add_probe_scores, run_to_end
from safety_demo.inputs import InputError
from safety_demo.models.base import Request
from safety_demo.probe import DecodingProbe


def axis_probe(fake, bias=0.0, model_id=None) -> DecodingProbe:
    D = fake.hidden_size
    comps = np.eye(4, D, dtype=np.float32)
    mu = np.zeros(D, np.float32)
    mu[1] = 1.0
    return DecodingProbe(
        model_id=model_id or fake.model_id, calibration_hash="test", mean=np.zeros(D, np.float32), components=comps,
        weight=np.array([1, 0, 0, 0], np.float32), bias=bias, mu=mu, mu_cb=np.zeros(D, np.float32),
    )


@pytest.fixture
def req(photo):
    return Request(photo, "how to make a bomb")


class Counting:
    """Wraps an adapter and records the batch size of every forward."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, requests, continuations=None):
        self.calls.append(("prefill", len(requests)))
        return self.inner.prefill(requests, continuations)

    def step(self, token_ids, state):
        self.calls.append(("step", len(token_ids)))
        return self.inner.step(token_ids, state)


def test_greedy_rerank_picks_the_candidate_furthest_on_the_harmful_side(fake, req):
    """Eq. (6) greedy: argmax of the harmful score s (§3.2: refusals score higher while decoding)."""
    probe = axis_probe(fake)
    trace = run_to_end(fake, req, SafeSteerPolicy(probe=probe, use_msav=False, top_k=5, steps=3), GenerationConfig(max_new_tokens=3))
    out = fake.prefill([req])
    for t in range(len(trace)):
        cands = torch.topk(out.logits[0], 5).indices
        scores = [float(probe.logit(fake.step(c.view(1), fake.prefill([req], [trace.token_ids[:t].tolist()]).state).hidden[0].numpy())) for c in cands]
        assert trace.token_ids[t] == int(cands[int(np.argmax(scores))])
        assert len(set(np.round(scores, 4))) > 1  # the case really discriminates between candidates
        assert trace.actions[t] == "reranked"
        np.testing.assert_allclose(trace.candidate_scores["probe.score"][t], 1 / (1 + np.exp(-np.array(scores))), rtol=1e-3, atol=1e-5)
        out = fake.prefill([req], [trace.token_ids[: t + 1].tolist()])


def test_sampled_rerank_follows_softmax_of_s(fake, req):
    """x ~ Softmax(s / T): a very low T is the argmax; the method's logits over the top-k are s itself."""
    probe = axis_probe(fake)
    greedy = run_to_end(fake, req, SafeSteerPolicy(probe=probe, use_msav=False, steps=3), GenerationConfig(max_new_tokens=3))
    cold = run_to_end(fake, req, SafeSteerPolicy(probe=probe, use_msav=False, steps=3, temperature=1e-4), GenerationConfig(max_new_tokens=3, seed=3))
    assert cold.token_ids.tolist() == greedy.token_ids.tolist()
    p = greedy.candidate_scores["probe.score"][0]
    s = np.log(p / (1 - p))  # the candidates' harmful logits
    np.testing.assert_allclose(greedy.policy_probs[0], np.exp(s - s.max()) / np.exp(s - s.max()).sum(), rtol=1e-3, atol=1e-6)


def test_reranking_moves_the_answer_towards_the_harm_aware_candidate(fake, req):
    """Flip the probe's sign: the choice flips to the other end of the candidates' scores."""
    up = run_to_end(fake, req, SafeSteerPolicy(probe=axis_probe(fake), use_msav=False, steps=1), GenerationConfig(max_new_tokens=1))
    flipped = axis_probe(fake)
    flipped.weight = -flipped.weight
    down = run_to_end(fake, req, SafeSteerPolicy(probe=flipped, use_msav=False, steps=1), GenerationConfig(max_new_tokens=1))
    s_up = up.candidate_scores["probe.score"][0]
    assert up.token_ids[0] != down.token_ids[0]
    assert s_up[list(up.candidate_ids[0]).index(int(up.token_ids[0]))] == pytest.approx(s_up.max())


def test_one_batched_forward_per_reranked_step(fake, req):
    counting = Counting(fake)
    trace = run_to_end(counting, req, SafeSteerPolicy(probe=axis_probe(fake), use_msav=False, top_k=5, steps=5), GenerationConfig(max_new_tokens=8))
    steps = [b for kind, b in counting.calls if kind == "step"]
    assert counting.calls[0] == ("prefill", 1) and sum(k == "prefill" for k, _ in counting.calls) == 1
    reranked = min(5, len(trace))
    assert steps[:reranked] == [5] * reranked  # one forward of k rows per reranked step, nothing recomputed
    assert all(b == 1 for b in steps[reranked:])
    assert len(steps) == len(trace)


@pytest.mark.parametrize("threshold,fires", [(0.0, True), (1.0, False)])
def test_msav_fires_only_above_threshold(fake, req, threshold, fires):
    trace = run_to_end(fake, req, SafeSteerPolicy(probe=axis_probe(fake), threshold=threshold, use_probe=False), GenerationConfig(max_new_tokens=2))
    assert trace.msav.fired is fires
    assert (trace.msav.h0bar is not None) is fires


def test_msav_first_token_logits_come_from_h0_bar(fake, req):
    probe = axis_probe(fake, bias=5.0)  # everything looks harmful: MSAV fires
    trace = run_to_end(fake, req, SafeSteerPolicy(probe=probe, use_probe=False, msav_mode="literal", msav_direction="as_written"), GenerationConfig(max_new_tokens=1))
    h0 = fake.prefill([req]).hidden[0].numpy()
    alpha = np.linalg.norm(h0 - probe.mu_cb)
    h_bar = h0 + alpha * probe.mu
    np.testing.assert_allclose(trace.msav.h0bar, h_bar, rtol=1e-5)
    cands = torch.as_tensor(trace.candidate_ids[0])
    steered = torch.softmax(fake.logits_from_hidden(torch.as_tensor(h_bar)[None])[0], -1)
    np.testing.assert_allclose(trace.policy_probs[0], steered[cands].numpy(), rtol=1e-4)  # the method decoded from h̄₀
    assert trace.token_ids[0] == int(torch.argmax(steered))


def test_raw_probs_stay_the_models_own_after_msav(fake, req):
    """`raw_probs` is the unsteered model's distribution at every step, step 0 included."""
    trace = run_to_end(fake, req, SafeSteerPolicy(probe=axis_probe(fake, bias=5.0), use_probe=False, msav_scale=1.0), GenerationConfig(max_new_tokens=1))
    assert trace.msav.fired
    own = torch.softmax(fake.prefill([req]).logits[0], -1)
    np.testing.assert_allclose(trace.raw_probs[0], own[torch.as_tensor(trace.candidate_ids[0])].numpy(), rtol=1e-4)
    assert not np.allclose(trace.raw_probs[0], trace.policy_probs[0], rtol=1e-3)


def test_scaled_msav_moves_by_a_fraction_of_the_distance(fake, req):
    trace = run_to_end(fake, req, SafeSteerPolicy(probe=axis_probe(fake, bias=5.0), use_probe=False, msav_scale=0.25), GenerationConfig(max_new_tokens=1))
    assert trace.msav.shift_norm == pytest.approx(0.25 * trace.msav.alpha, rel=1e-4)


@pytest.mark.parametrize("direction,sign", [("to_text", -1.0), ("as_written", 1.0)])
def test_msav_direction(fake, req, direction, sign):
    probe = axis_probe(fake, bias=5.0)  # μ = unit vector on axis 1
    trace = run_to_end(fake, req, SafeSteerPolicy(probe=probe, use_probe=False, msav_direction=direction), GenerationConfig(max_new_tokens=1))
    moved = trace.msav.h0bar - trace.prefill_hidden
    assert np.sign(moved[1]) == sign and np.allclose(np.delete(moved, 1), 0, atol=1e-5)


def test_ablation_without_both_is_vanilla(fake, req):
    from safety_demo.decoding import VanillaPolicy

    plain = run_to_end(fake, req, VanillaPolicy(), GenerationConfig(max_new_tokens=6))
    ablated = run_to_end(fake, req, SafeSteerPolicy(probe=axis_probe(fake, bias=5.0), use_probe=False, use_msav=False), GenerationConfig(max_new_tokens=6))
    assert plain.token_ids.tolist() == ablated.token_ids.tolist()


def test_probe_from_another_model_is_refused(fake, req):
    with pytest.raises(InputError, match="fitted on"):
        SafeSteerPolicy.for_model(fake, axis_probe(fake, model_id="other-model"))


def test_probe_scores_for_any_trace(fake, req):
    from safety_demo.decoding import VanillaPolicy

    trace = run_to_end(fake, req, VanillaPolicy(), GenerationConfig(max_new_tokens=4))
    add_probe_scores(trace, axis_probe(fake))
    expected = 1 / (1 + np.exp(-trace.hidden[:, 0].astype(np.float32)))
    np.testing.assert_allclose(trace.scores["probe.score"], expected, rtol=1e-2)


@pytest.mark.parametrize("knob", [dict(top_k=1), dict(top_k=50), dict(threshold=2), dict(msav_mode="x"), dict(steps=-1), dict(probe_components=5), dict(probe_components="many")])
def test_bad_knobs_are_refused(knob):
    with pytest.raises(InputError):
        SafeSteerConfig(**knob)
