import time

import numpy as np
import pytest

from safety_demo.viz import PROJECTIONS, hidden_state_map
from safety_demo.viz import hidden_map

from .conftest import D, make_trace


# Every projection in the dict; UMAP is slow (~20 s import and numba compile the first time).
ALL = [pytest.param(m, marks=pytest.mark.slow) if m == "UMAP" else m for m in PROJECTIONS]


def _named(fig, name):
    return [t for t in fig.data if t.name == name]


def test_map_has_star_diamond_arrow_and_one_line_per_method(calibration, traces):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, traces)
    assert len(_named(fig, "h₀ (query, prefill)")) == 1  # the same h₀ in all three traces
    star = _named(fig, "h₀ (query, prefill)")[0]
    assert star.marker.symbol == "star" and len(star.x) == 1
    diamonds = _named(fig, "h̄₀ (after MSAV)")
    assert len(diamonds) == 1 and diamonds[0].marker.symbol == "diamond"
    assert any(a.showarrow for a in fig.layout.annotations)
    for name, trace in traces.items():
        (line,) = _named(fig, f"{name} tokens")
        assert line.mode == "lines+markers+text" and len(line.x) == len(trace)
        assert list(line.text) == [str(i) for i in range(len(trace))]  # step numbers on the line
        assert "step 0" in line.hovertext[0] and repr(trace.tokens[0]) in line.hovertext[0]
    colours = {t.name: t.line.color for t in fig.data if t.name.endswith("tokens")}
    assert colours == {"vanilla tokens": "#7f7f7f", "safecode tokens": "#ff7f0e", "safesteer tokens": "#2ca02c"}
    calib = [t for t in fig.data if t.legendgroup in ("harmful", "harmless")]
    assert sum(len(t.x) for t in calib) == len(h)
    assert {t.marker.symbol for t in calib} == {"circle", "square", "triangle-up", "cross"}
    assert {t.marker.color for t in calib} == {hidden_map.HARMFUL_COLOR, hidden_map.HARMLESS_COLOR}


def test_map_no_diamond_without_msav(calibration):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, {"vanilla": make_trace("vanilla")})
    assert not _named(fig, "h̄₀ (after MSAV)")
    assert not any(a.showarrow for a in fig.layout.annotations)
    assert len(_named(fig, "h₀ (query, prefill)")) == 1


def test_map_skips_trace_with_other_hidden_size(calibration):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, {"vanilla": make_trace(), "other": make_trace(dims=D + 1)})
    assert not _named(fig, "other tokens")
    assert any("other" in (a.text or "") for a in fig.layout.annotations)


def test_map_without_calibration_or_hidden(traces):
    fig = hidden_state_map(None, [], [], traces)
    assert len(_named(fig, "h₀ (query, prefill)")) == 1
    fig = hidden_state_map(None, [], [], {"vanilla": make_trace(hidden=False)})
    assert not _named(fig, "vanilla tokens")
    fig = hidden_state_map(None, [], [], {})
    assert len(fig.data) == 0


def test_map_labels_as_ints(calibration, traces):
    h, labels, comps = calibration
    fig = hidden_state_map(h, [lab == "harmful" for lab in labels], comps, traces)
    assert {t.legendgroup for t in fig.data} >= {"harmful", "harmless"}


def test_subsample_is_deterministic_and_stratified(calibration):
    _, labels, comps = calibration
    a = hidden_map.subsample(labels, comps, 20)
    b = hidden_map.subsample(labels, comps, 20)
    assert len(a) == 20 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert {(labels[i], comps[i]) for i in a} == set(zip(labels, comps))  # every group kept
    assert len(hidden_map.subsample(labels, comps, 5)) == 5
    assert len(hidden_map.subsample(labels, comps, 10_000)) == len(labels)


def test_map_max_points(calibration, traces):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, traces, max_points=30)
    calib = [t for t in fig.data if t.legendgroup in ("harmful", "harmless")]
    assert sum(len(t.x) for t in calib) == 30
    assert "30 of 84 calibration points" in fig.layout.title.subtitle.text


def test_unknown_projection_lists_options(calibration, traces):
    h, labels, comps = calibration
    with pytest.raises(ValueError, match="PCA"):
        hidden_state_map(h, labels, comps, traces, method="LDA")


@pytest.mark.parametrize("method", ALL)
def test_projection_shape_and_finite(method):
    x = np.random.default_rng(0).normal(size=(40, D)).astype(np.float16)
    y = PROJECTIONS[method](x, None)
    assert y.shape == (40, 2) and np.isfinite(y).all()


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("n", [1, 2, 4, 6, 20])
def test_projection_tiny_inputs(method, n):
    y = PROJECTIONS[method](np.random.default_rng(n).normal(size=(n, D)), None)
    assert y.shape == (n, 2) and np.isfinite(y).all()


def test_pca_fit_rows_fixes_the_frame():
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(50, D))
    a = PROJECTIONS["PCA"](np.vstack([calib, rng.normal(size=(5, D)) * 100]), 50)
    b = PROJECTIONS["PCA"](np.vstack([calib, rng.normal(size=(3, D))]), 50)
    np.testing.assert_allclose(a[:50], b[:50])  # the query does not move the calibration points


def test_projection_cache_hits():
    hidden_map._cache.clear()
    x = np.random.default_rng(1).normal(size=(60, D))
    first = hidden_map.project(x, "t-SNE")
    t0 = time.perf_counter()
    again = hidden_map.project(x, "t-SNE")
    assert time.perf_counter() - t0 < 0.05
    np.testing.assert_array_equal(first, again)
    again[0, 0] = 1e9  # callers get copies
    assert hidden_map.project(x, "t-SNE")[0, 0] != 1e9
    for i in range(hidden_map.CACHE_SIZE + 2):
        hidden_map.project(x + i, "PCA")
    assert len(hidden_map._cache.items) == hidden_map.CACHE_SIZE


@pytest.mark.parametrize("method", ALL)
def test_map_for_every_projection(calibration, traces, method):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, traces, method=method)
    assert fig.layout.xaxis.title.text == f"{hidden_map.AXIS_NAMES[method]} 1"
    assert len(_named(fig, "safesteer tokens")[0].x) == len(traces["safesteer"])
    assert len(_named(fig, "h₀ (query, prefill)")) == 1 and len(_named(fig, "h̄₀ (after MSAV)")) == 1
    for t in fig.data:
        assert np.isfinite(np.asarray(t.x, dtype=float)).all() and np.isfinite(np.asarray(t.y, dtype=float)).all()
    fig.to_json()


@pytest.mark.slow
def test_warm_up_umap():
    assert hidden_map.warm_up_umap() >= 0


def test_nearly_equal_h0s_are_one_star_different_ones_two(calibration):
    h, labels, comps = calibration
    a, b = make_trace("vanilla"), make_trace("safecode", delta=True)
    b.prefill_hidden = b.prefill_hidden * 1.001  # bf16 batching noise
    fig = hidden_state_map(h, labels, comps, {"vanilla": a, "safecode": b})
    assert sum(t.marker.symbol == "star" for t in fig.data) == 1
    b.prefill_hidden = -b.prefill_hidden  # another query
    fig = hidden_state_map(h, labels, comps, {"vanilla": a, "safecode": b})
    assert [t.name for t in fig.data if t.marker.symbol == "star"] == ["h₀ (query, prefill)", "h₀ (safecode)"]


def test_h0_hover_takes_the_msav_score_from_any_trace(calibration, traces):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, traces)
    (star,) = _named(fig, "h₀ (query, prefill)")
    assert "P(harmful) = 0.900" in star.hovertemplate
    (diamond,) = _named(fig, "h̄₀ (after MSAV)")
    assert "P(harmful) = 0.300" in diamond.hovertemplate


# ---- the probe axis: the view that shows harm ------------------------------------------------
def test_probe_axis_x_is_the_probe_score_and_separates_harm(calibration, traces, probe):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, traces, probe=probe)
    assert fig.layout.title.text.startswith("Hidden-state map (Probe axis)")
    harmful = np.concatenate([t.x for t in fig.data if t.legendgroup == "harmful"])
    harmless = np.concatenate([t.x for t in fig.data if t.legendgroup == "harmless"])
    expected = probe.logit(h)
    np.testing.assert_allclose(np.sort(np.concatenate([harmful, harmless])), np.sort(expected), rtol=1e-5, atol=1e-5)
    assert (harmful > 0).mean() > 0.9 and (harmless < 0).mean() > 0.9  # the decision line x = 0 splits them
    (star,) = _named(fig, "h₀ (query, prefill)")
    assert star.x[0] == pytest.approx(float(probe.logit(traces["vanilla"].prefill_hidden)), abs=1e-4)
    assert [s.x0 for s in fig.layout.shapes] == [0]  # the probe's decision, dashed
    assert "P = 0.5" in fig.layout.title.subtitle.text


def test_probe_axis_y_ignores_the_probe_direction(probe):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, D))
    moved = x + np.outer(rng.normal(size=30) * 5, np.eye(D)[0])  # slide every point along the probe's direction
    a, b = hidden_map.probe_axes(x, probe, 30), hidden_map.probe_axes(moved, probe, 30)
    np.testing.assert_allclose(a[:, 1], b[:, 1], atol=1e-9)  # y is what is left
    np.testing.assert_allclose(b[:, 0] - a[:, 0], (moved - x)[:, 0] * 1.5, rtol=1e-5)


def test_probe_axis_without_probe_says_so_and_shows_pca(calibration, traces, probe):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, traces, method=hidden_map.PROBE_AXIS)
    assert "No probe" in fig.layout.title.subtitle.text and fig.layout.xaxis.title.text == "PC 1"
    fig = hidden_state_map(h[:, :8], labels, comps, {}, probe=probe)  # a probe of another hidden size
    assert "No probe" in fig.layout.title.subtitle.text


def test_trajectories_show_the_first_steps_and_all_on_demand(calibration, traces, probe):
    h, labels, comps = calibration
    fig = hidden_state_map(h, labels, comps, traces, probe=probe, steps=3)
    for name in traces:
        (line,) = _named(fig, f"{name} tokens")
        assert list(line.text) == ["0", "1", "2"] and len(line.hovertext) == 3
    assert "first 3 steps" in fig.layout.title.subtitle.text
    fig = hidden_state_map(h, labels, comps, traces, probe=probe, steps=None)
    assert len(_named(fig, "safesteer tokens")[0].x) == len(traces["safesteer"])
    assert "first" not in fig.layout.title.subtitle.text
    with pytest.raises(ValueError, match="steps"):
        hidden_state_map(h, labels, comps, traces, steps=0)
