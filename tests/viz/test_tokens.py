import math

import plotly.graph_objects as go
import pytest

from safety_demo.viz import highlighted_tokens, token_strip_figure

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


def test_token_strip_wraps_rows_and_has_colour_bar():
    trace = make_trace(T=60, actions=["forced"] * 5 + ["kept"] * 55)
    fig = token_strip_figure(trace, per_row=8)
    assert isinstance(fig, go.Figure)
    heat = [t for t in fig.data if t.type == "heatmap" and t.showscale]
    assert len(heat) == 1
    assert len(heat[0].z) == math.ceil(60 / 8) and len(heat[0].z[0]) == 8
    assert heat[0].colorbar.title.text == "P(harmful)"
    assert heat[0].zmin == 0 and heat[0].zmax == 1
    hover = [h for row in heat[0].hovertext for h in row if h]
    assert len(hover) == 60 and "step 0" in hover[0] and "forced" in hover[0]
    text = [t for t in fig.data if t.type == "scatter" and t.mode == "text"][0]
    assert "cannot" in text.text  # tokens are written in the cells
    assert any(t.name == "method changed this step" and len(t.x) == 5 for t in fig.data)
    assert fig.layout.template.layout.paper_bgcolor == "white"  # plotly_white


def test_token_strip_without_scores_still_shows_tokens():
    fig = token_strip_figure(make_trace(probe=False))
    assert "no 'probe.score'" in fig.layout.title.subtitle.text
    assert not any(t.type == "heatmap" and t.showscale for t in fig.data)  # no colour bar for nothing
    assert [t for t in fig.data if t.type == "scatter" and t.mode == "text"]


def test_token_strip_empty_trace():
    fig = token_strip_figure(make_trace(T=0))
    fig.to_json()


def test_markup_like_tokens_are_escaped():
    trace = make_trace(T=3)
    trace.tokens[1] = "<eos>"
    fig = token_strip_figure(trace)
    text = [t for t in fig.data if t.type == "scatter" and t.mode == "text"][0].text
    assert "&lt;eos&gt;" in text
    assert "&lt;eos&gt;" in [h for row in fig.data[1].hovertext for h in row][1]
    assert highlighted_tokens(trace)[1][0] == "<eos>"  # Gradio gets the raw text
