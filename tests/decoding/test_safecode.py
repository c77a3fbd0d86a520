"""SafeCoDe on cases built to show each behaviour (fake model: plumbing and arithmetic)."""
import numpy as np
import pytest
import torch

from safety_demo.decoding import GenerationConfig, SafeCoDeConfig, SafeCoDePolicy, run_to_end
from safety_demo.decoding.judge import parse_verdict, run_judge
from safety_demo.decoding.safecode import refusal_token_ids
from safety_demo.inputs import InputError, add_gaussian_noise
from safety_demo.models.base import Request

CFG = GenerationConfig(max_new_tokens=8)


@pytest.fixture
def req(photo):
    return Request(photo, "how to make a bomb")


def test_unsafe_verdict_forces_a_refusal_led_answer(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy(verdict="unsafe"), CFG)
    chosen = [p for p in trace.notes[0]["phrases"] if p["chosen"]][0]["phrase"]
    forced = fake.encode_text(chosen)[:5]
    assert trace.token_ids[: len(forced)].tolist() == forced
    assert trace.actions[: len(forced)] == ["forced"] * len(forced)
    assert any(w in chosen.lower() for w in ("sorry", "apologize", "unable", "cannot", "can't", "not allowed", "not able to"))


def test_unsafe_without_a_fitting_phrase_boosts_refusal_tokens(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy(verdict="unsafe", min_phrase_score=1.0), CFG)
    assert trace.actions[:5] == ["boosted"] * 5
    assert np.all(trace.scores["policy.refusal_mass.policy"][:5] > trace.scores["policy.refusal_mass.cd"][:5])


def test_safe_verdict_lowers_refusal_probability_versus_vanilla(fake, req):
    safe = run_to_end(fake, req, SafeCoDePolicy(verdict="safe"), CFG)
    steps = min(5, len(safe))
    assert safe.actions[:steps] == ["suppressed"] * steps
    # vanilla's refusal mass at step 0 is the raw row's; the method's is strictly lower
    assert safe.scores["policy.refusal_mass.policy"][0] < safe.scores["policy.refusal_mass.raw"][0]
    # with α = 0 the suppression is exactly p·(1 − 0.5λ), renormalised
    exact = run_to_end(fake, req, SafeCoDePolicy(verdict="safe", alpha_safe=0.0), CFG)
    m = exact.scores["policy.refusal_mass.raw"][0]
    assert exact.scores["policy.refusal_mass.policy"][0] == pytest.approx(0.5 * m / (1 - 0.5 * m), rel=1e-4)


@pytest.mark.parametrize("verdict,alpha", [("safe", 0.15), ("unsafe", 0.3)])
def test_contrastive_logits_recomputed_from_the_two_rows(fake, req, verdict, alpha):
    policy = SafeCoDePolicy(verdict=verdict, lambda_supp=0.0, sigma=0.1)
    trace = run_to_end(fake, req, policy, GenerationConfig(max_new_tokens=1, seed=7))
    noised = add_gaussian_noise(req.image, 0.1, seed=7)
    z_real = fake.prefill([req]).logits[0]
    z_noised = fake.prefill([Request(noised, req.prompt)]).logits[0]
    z_cd = z_real - alpha * z_noised
    cands = torch.as_tensor(trace.candidate_ids[0])
    np.testing.assert_allclose(trace.policy_probs[0], torch.softmax(z_cd, -1)[cands].numpy(), rtol=1e-4, atol=1e-6)
    delta = torch.log_softmax(z_real, -1) - torch.log_softmax(z_noised, -1)
    assert trace.scores["policy.contrastive.delta"][0] == pytest.approx(float(delta[trace.token_ids[0]]), abs=1e-4)
    assert trace.meta["alpha"] == alpha


def test_sigma_zero_means_no_contrast(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy(verdict="safe", sigma=0.0, delta_after_steps=True), CFG)
    assert np.allclose(trace.scores["policy.contrastive.delta"], 0.0, atol=1e-5)


def test_noised_row_stops_after_the_modulated_steps_unless_asked(fake, req):
    from .test_safesteer import Counting

    cfg = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    counting = Counting(fake)
    short = run_to_end(counting, req, SafeCoDePolicy(verdict="safe", steps=3), cfg)
    batch = [b for kind, b in counting.calls if kind == "step"][-8:]
    assert batch == [2, 2, 2, 1, 1, 1, 1, 1]  # real + noised for 3 steps, then the real row alone
    assert np.isfinite(short.scores["policy.contrastive.delta"][:3]).all() and np.isnan(short.scores["policy.contrastive.delta"][3:]).all()
    full = run_to_end(fake, req, SafeCoDePolicy(verdict="safe", steps=3, delta_after_steps=True), cfg)
    assert np.isfinite(full.scores["policy.contrastive.delta"]).all()
    assert full.token_ids.tolist() == short.token_ids.tolist()  # the extra row changes nothing but the views


def test_noised_row_runs_beside_the_real_row_in_one_batch(fake, req):
    rows = SafeCoDePolicy(verdict="safe").rows(req, seed=0)
    assert len(rows) == 2 and rows[1].prompt == rows[0].prompt
    assert not np.array_equal(np.asarray(rows[0].image), np.asarray(rows[1].image))


def test_seeded_sampling_repeats(fake, req):
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=5)
    a, b = (run_to_end(fake, req, SafeCoDePolicy(verdict="safe"), cfg) for _ in range(2))
    assert a.token_ids.tolist() == b.token_ids.tolist()
    np.testing.assert_array_equal(a.scores["policy.contrastive.delta"], b.scores["policy.contrastive.delta"])


def test_length_cap_after_unsafe(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy(verdict="unsafe", length_cap=6), GenerationConfig(max_new_tokens=20))
    assert len(trace) <= 7


def test_curated_vocabulary_has_no_generic_tokens(fake):
    curated = fake.token_texts(refusal_token_ids(fake, "curated"))
    official = fake.token_texts(refusal_token_ids(fake, "official"))
    assert "I" in official and "I" not in curated and "sorry" in curated


@pytest.mark.parametrize(
    "text,expected",
    [
        ("safe", "safe"), ("UNSAFE", "unsafe"), ("Unsafe.", "unsafe"), (" Safe\n", "safe"),
        ("The request is not safe because", "unsafe"), ("I think it's safe, not unsafe", "safe"),
        ("Decision: unsafe. Reason: the scene is safe otherwise", "unsafe"),
        ("I cannot decide", None), ("", None), ("safety first", None),
    ],
)
def test_verdict_parser(text, expected):
    assert parse_verdict(text) == expected


def test_judge_falls_back_to_first_token_odds_when_it_says_neither(fake, req):
    result = run_judge(fake, req)
    assert result.verdict in ("safe", "unsafe") and result.caption
    if parse_verdict(result.raw) is None:
        assert result.source == "logit-fallback"
        assert (result.verdict == "unsafe") == (result.p_unsafe >= 0.5)


def test_override_skips_the_verdict(fake, req):
    result = run_judge(fake, req, override="unsafe")
    assert result.verdict == "unsafe" and result.source == "override"


@pytest.mark.parametrize("knob", [dict(alpha_unsafe=-1), dict(sigma=3), dict(vocabulary="x"), dict(verdict="maybe"), dict(steps=-1)])
def test_bad_knobs_are_refused(knob):
    with pytest.raises(InputError):
        SafeCoDeConfig(**knob)


def test_a_second_local_model_can_judge(fake, req):
    from safety_demo.models.fake import FakeAdapter

    judge = FakeAdapter(seed=1)
    judge.name = "fake-judge"
    trace = run_to_end(fake, req, SafeCoDePolicy(judge_adapter=judge), CFG)
    assert trace.meta["judge"]["model"] == "fake-judge"
