import pytest

from safety_demo.viz import (
    contrastive_delta_figure,
    figures_html,
    hidden_state_map,
    step_figure,
)


@pytest.fixture
def figures(traces, calibration):
    h, labels, comps = calibration
    return {
        "step 0 <safesteer>": step_figure(traces["safesteer"], 0),
        "deltas": contrastive_delta_figure(traces),
        "step 1": step_figure(traces["safesteer"], 1),
        "map": hidden_state_map(h, labels, comps, traces),
    }


def test_figures_serialise(figures):
    for fig in figures.values():
        assert fig.to_json()
        page = fig.to_html(include_plotlyjs="cdn")
        assert "cdn.plot.ly" in page
        assert fig.layout.template.layout.font is not None  # plotly_white applied
        tallest = 640 if "Hidden-state map" in fig.layout.title.text else 520  # the map's legend sits under it
        assert fig.layout.height and fig.layout.height <= tallest


def test_figures_html_inlines_plotly_once(figures):
    page = figures_html(figures, title="run 1")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<section>") == len(figures)
    assert "step 0 &lt;safesteer&gt;" in page  # names are escaped
    assert page.count("Plotly.newPlot") == len(figures)
    assert "src=\"https://cdn.plot.ly" not in page
    marker = "plotly.js v"  # the bundle's banner appears once when inlined once
    assert page.count(marker) == 1
