import pytest

from safety_demo.viz import highlighted_tokens

from .conftest import make_trace


def test_highlighted_tokens_maps_probability_to_minus_one_plus_one():
    trace = make_trace(T=5)  # probe.score goes 0, 0.25, …, 1
    pairs = highlighted_tokens(trace)
    assert [t for t, _ in pairs] == trace.tokens
    assert pairs[0][1] == pytest.approx(-1.0)
    assert pairs[2][1] == pytest.approx(0.0)
    assert pairs[-1][1] == pytest.approx(1.0)


def test_highlighted_tokens_none_without_score():
    trace = make_trace(probe=False)
    assert all(v is None for _, v in highlighted_tokens(trace))


def test_highlighted_tokens_nan_step_is_none():
    trace = make_trace(T=4)
    trace.scores["probe.score"][1] = float("nan")
    assert highlighted_tokens(trace)[1][1] is None


def test_highlighted_tokens_signed_score_scaled_by_peak():
    trace = make_trace(delta=True)
    values = [v for _, v in highlighted_tokens(trace, "policy.contrastive.delta")]
    assert max(abs(v) for v in values) == pytest.approx(1.0)
    assert all(-1 <= v <= 1 for v in values)


def test_markup_like_tokens_reach_gradio_raw():
    trace = make_trace(T=3)
    trace.tokens[1] = "<eos>"
    assert highlighted_tokens(trace)[1][0] == "<eos>"  # Gradio gets the raw text and escapes it itself
