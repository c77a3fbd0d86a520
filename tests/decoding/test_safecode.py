"""SafeCoDe on cases built to show each behaviour (fake model: plumbing and arithmetic)."""
import numpy as np
import pytest
import torch

from safety_demo.decoding import GenerationConfig, SafeCoDeConfig, SafeCoDePolicy, run_to_end
from safety_demo.decoding.judge import JUDGE_SYSTEM, VERDICT_PROMPT, parse_verdict, run_judge
from safety_demo.decoding.safecode import natural_prefix, official_length_cap, refusal_token_ids
from safety_demo.inputs import InputError, add_gaussian_noise
from safety_demo.models.base import Request

CFG = GenerationConfig(max_new_tokens=8)


@pytest.fixture
def req(photo):
    return Request(photo, "how to make a bomb")


def test_unsafe_verdict_forces_a_refusal_led_answer(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="unsafe"), CFG)
    chosen = [p for p in trace.notes[0]["phrases"] if p["chosen"]][0]["phrase"]
    forced = fake.encode_text(chosen)[:5]
    assert trace.token_ids[: len(forced)].tolist() == forced
    assert trace.actions[: len(forced)] == ["forced"] * len(forced)
    assert any(w in chosen.lower() for w in ("sorry", "apologize", "unable", "cannot", "can't", "not allowed", "not able to"))


def test_unsafe_without_a_fitting_phrase_boosts_refusal_tokens(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="unsafe", min_phrase_score=1.0), CFG)
    assert trace.actions[:5] == ["boosted"] * 5
    assert np.all(trace.scores["policy.refusal_mass.policy"][:5] > trace.scores["policy.refusal_mass.cd"][:5])


def test_safe_verdict_lowers_refusal_probability_versus_vanilla(fake, req):
    safe = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="safe"), CFG)
    steps = min(5, len(safe))
    assert safe.actions[:steps] == ["suppressed"] * steps
    # vanilla's refusal mass at step 0 is the raw row's; the method's is strictly lower
    assert safe.scores["policy.refusal_mass.policy"][0] < safe.scores["policy.refusal_mass.raw"][0]
    # with α = 0 the suppression is exactly p·(1 − 0.5λ), renormalised
    exact = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="safe", alpha_safe=0.0), CFG)
    m = exact.scores["policy.refusal_mass.raw"][0]
    assert exact.scores["policy.refusal_mass.policy"][0] == pytest.approx(0.5 * m / (1 - 0.5 * m), rel=1e-4)


@pytest.mark.parametrize("verdict,alpha", [("safe", 0.15), ("unsafe", 0.3)])
def test_contrastive_logits_recomputed_from_the_two_rows(fake, req, verdict, alpha):
    policy = SafeCoDePolicy.for_model(fake, verdict=verdict, lambda_supp=0.0, sigma=0.1)
    trace = run_to_end(fake, req, policy, GenerationConfig(max_new_tokens=1, seed=7))
    noised = add_gaussian_noise(req.image, 0.1, seed=7)
    z_real = fake.prefill([req]).logits[0]
    z_noised = fake.prefill([Request(noised, req.prompt)]).logits[0]
    z_cd = z_real - alpha * z_noised
    cands = torch.as_tensor(trace.candidate_ids[0])
    np.testing.assert_allclose(trace.policy_probs[0], torch.softmax(z_cd, -1)[cands].numpy(), rtol=1e-4, atol=1e-6)
    delta = torch.log_softmax(z_real, -1) - torch.log_softmax(z_noised, -1)
    assert trace.scores["policy.contrastive.delta"][0] == pytest.approx(float(delta[trace.token_ids[0]]), abs=1e-4)
    assert trace.facts["alpha"] == alpha


def test_sigma_zero_means_no_contrast(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="safe", sigma=0.0, delta_after_steps=True), CFG)
    assert np.allclose(trace.scores["policy.contrastive.delta"], 0.0, atol=1e-5)


def test_noised_row_stops_after_the_modulated_steps_unless_asked(fake, req):
    from .test_safesteer import Counting

    cfg = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    counting = Counting(fake)
    short = run_to_end(counting, req, SafeCoDePolicy.for_model(fake, verdict="safe", steps=3), cfg)
    batch = [b for kind, b in counting.calls if kind == "step"][-8:]
    assert batch == [2, 2, 2, 1, 1, 1, 1, 1]  # real + noised for 3 steps, then the real row alone
    assert np.isfinite(short.scores["policy.contrastive.delta"][:3]).all() and np.isnan(short.scores["policy.contrastive.delta"][3:]).all()
    full = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="safe", steps=3, delta_after_steps=True), cfg)
    assert np.isfinite(full.scores["policy.contrastive.delta"]).all()
    assert full.token_ids.tolist() == short.token_ids.tolist()  # the extra row changes nothing but the views


def test_noised_row_runs_beside_the_real_row_in_one_batch(fake, req):
    rows = SafeCoDePolicy.for_model(fake, verdict="safe").rows(req, seed=0)
    assert len(rows) == 2 and rows[1].prompt == rows[0].prompt
    assert not np.array_equal(np.asarray(rows[0].image), np.asarray(rows[1].image))


def test_seeded_sampling_repeats(fake, req):
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=5)
    a, b = (run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="safe"), cfg) for _ in range(2))
    assert a.token_ids.tolist() == b.token_ids.tolist()
    np.testing.assert_array_equal(a.scores["policy.contrastive.delta"], b.scores["policy.contrastive.delta"])


def test_length_cap_after_unsafe_counts_from_the_end_of_the_refusal_prefix(fake, req):
    trace = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="unsafe", length_cap=6), GenerationConfig(max_new_tokens=40, ignore_eos=True))
    forced = trace.actions.count("forced") - 1  # the prefix, then the end token that closes the answer
    assert len(trace) == forced + 6 + 1 and trace.token_ids[-1] in fake.eos_token_ids
    off = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="unsafe", length_cap=0), GenerationConfig(max_new_tokens=40, ignore_eos=True))
    assert len(off) == 40


@pytest.mark.parametrize("name,cap", [("Qwen/Qwen2.5-VL-3B-Instruct", 30), ("builtin", 30), ("llava-hf/llava-1.5-7b-hf", 20), ("fake", 0)])
def test_official_length_cap_per_family(name, cap):
    class A:
        model_id = "builtin:qwen2.5-coder-0.5b" if name == "builtin" else name
    A.name = name
    assert official_length_cap(A) == cap


@pytest.mark.parametrize("text,stop", [("The image", True), ("The", False), ("I can", False), ("**Sure thing", False), ("sure thing", False), ("Yes, here", True)])
def test_safe_path_early_stop_rule(text, stop):
    assert natural_prefix(text) is stop  # official: ≥ 2 words, first word ≥ 2 characters and capitalised


def test_safe_path_stops_modulating_once_the_answer_reads_as_language(fake, req, monkeypatch):
    policy = SafeCoDePolicy.for_model(fake, verdict="safe", steps=5)
    trace = run_to_end(fake, req, policy, GenerationConfig(max_new_tokens=8, ignore_eos=True))
    texts = [fake.decode(trace.token_ids[:t].tolist()) for t in range(len(trace))]
    first_stop = next((t for t in range(2, 5) if natural_prefix(texts[t])), None)
    expected = ["suppressed"] * (first_stop if first_stop is not None else 5)
    assert trace.actions[: len(expected)] == expected
    if first_stop is not None:
        assert trace.actions[first_stop] == "kept"
    no_stop = run_to_end(fake, req, SafeCoDePolicy.for_model(fake, verdict="safe", steps=5, safe_early_stop=False), GenerationConfig(max_new_tokens=8, ignore_eos=True))
    assert no_stop.actions[:5] == ["suppressed"] * 5


def test_curated_vocabulary_has_no_generic_tokens(fake):
    curated = fake.token_texts(refusal_token_ids(fake, "curated"))
    official = fake.token_texts(refusal_token_ids(fake, "official"))
    assert "I" in official and "I" not in curated and "sorry" in curated


@pytest.mark.parametrize(
    "text,expected",
    [
        ("safe", "safe"), ("UNSAFE", "unsafe"), ("Unsafe.", "unsafe"), (" Safe\n", "safe"),
        ("I think it's safe, not unsafe", "safe"), ("unsafe  \nReason: a child with a knife", "unsafe"),
        ("Decision: unsafe. Reason: the scene is safe otherwise", "unsafe"),
        ("I cannot decide", None), ("", None), ("safety first", None),
    ],
)
def test_verdict_parser(text, expected):
    assert parse_verdict(text) == expected


def test_unparseable_verdict_is_safe_by_default_or_the_odds_on_request(fake, req, monkeypatch):
    import safety_demo.decoding.judge as judge

    monkeypatch.setattr(judge, "parse_verdict", lambda text: None)  # the judge says neither word
    result = run_judge(fake, req)
    assert (result.verdict, result.source) == ("safe", "unparsed-default-safe")
    odds = run_judge(fake, req, fallback="logit")
    assert odds.source == "logit-fallback" and (odds.verdict == "unsafe") == (odds.p_unsafe >= 0.5)


def test_judge_prompt_is_the_official_shape_and_carries_no_benchmark_item():
    import re

    assert VERDICT_PROMPT.count("Decision:") == 6 and VERDICT_PROMPT.count("Reason:") == 5  # five examples + the case
    assert [m for m in re.findall(r"Decision: (\w+)", VERDICT_PROMPT)] == ["unsafe", "safe", "unsafe", "safe", "unsafe"]
    lowered = VERDICT_PROMPT[VERDICT_PROMPT.index("---"):].lower()  # the examples and the case slot
    for leak in ("list", "item", "1.", "steps to", "generate detailed", "typograph", "weapon", "text in the image"):
        assert leak not in lowered, leak
    assert JUDGE_SYSTEM and "{prompt}" in VERDICT_PROMPT and "{caption}" in VERDICT_PROMPT


def test_judge_verdict_turn_has_the_system_message(fake, req, monkeypatch):
    import safety_demo.decoding.engine as engine

    seen = []
    real = engine.run_to_end
    monkeypatch.setattr(engine, "run_to_end", lambda adapter, request, *a, **k: seen.append(request) or real(adapter, request, *a, **k))
    run_judge(fake, req)
    assert seen[0].image is req.image and seen[0].system is None  # the caption sees the image
    assert seen[1].image is None and seen[1].system == JUDGE_SYSTEM and req.prompt in seen[1].prompt


@pytest.mark.parametrize("bias,verdict", [(5.0, "unsafe"), (-5.0, "safe")])
def test_probe_judge_reads_h0_and_decodes_nothing_extra(fake, req, bias, verdict):
    from .test_safesteer import Counting, axis_probe

    counting = Counting(fake)
    trace = run_to_end(counting, req, SafeCoDePolicy.for_model(fake, judge="probe", probe=axis_probe(fake, bias=bias)), CFG)
    assert trace.judge.verdict == verdict and trace.judge.source == "probe"
    assert trace.facts["alpha"] == (0.3 if verdict == "unsafe" else 0.15)
    assert [c for c in counting.calls if c[0] == "prefill"] == [("prefill", 2)]  # real + noised, no judge decoding
    if verdict == "unsafe":
        assert trace.actions[0] == "forced"


def test_override_skips_the_verdict(fake, req):
    result = run_judge(fake, req, override="unsafe")
    assert result.verdict == "unsafe" and result.source == "override"


@pytest.mark.parametrize("knob", [dict(alpha_unsafe=-1), dict(sigma=3), dict(vocabulary="x"), dict(verdict="maybe"), dict(steps=-1), dict(length_cap=-2), dict(verdict_fallback="x"), dict(judge="")])
def test_bad_knobs_are_refused(knob):
    with pytest.raises(InputError):
        SafeCoDeConfig(**knob)


def test_a_second_local_model_can_judge(fake, req, monkeypatch):
    import safety_demo.models as models
    from safety_demo.methods import build
    from safety_demo.models.fake import FakeAdapter

    judge = FakeAdapter(seed=1)
    judge.name = "fake-judge"
    monkeypatch.setattr(models, "load_adapter", lambda name: judge if name == "fake-judge" else pytest.fail(name))
    policy = build("safecode", fake, req, {"safecode": SafeCoDeConfig(judge="fake-judge")})
    trace = run_to_end(fake, req, policy, CFG)
    assert trace.judge.model == "fake-judge"


def test_auto_verdict_without_a_judge_is_refused(fake):
    with pytest.raises(ValueError, match="no verdict"):
        SafeCoDePolicy.for_model(fake)
