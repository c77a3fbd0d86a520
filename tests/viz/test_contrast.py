import plotly.graph_objects as go

from safety_demo.viz import contrastive_delta_figure

from .conftest import make_trace


def _annotations(fig):
    return " ".join(a.text for a in fig.layout.annotations if a.text)


def test_delta_figure_omits_methods_without_delta(traces):
    fig = contrastive_delta_figure(traces)
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert names == ["safecode"]
    assert fig.data[0].type == "bar" and len(fig.data[0].y) == len(traces["safecode"])
    note = _annotations(fig)
    assert "vanilla" in note and "safesteer" in note and "native to SafeCoDe" in note
    assert "log p(real image) − log p(noised image)" in fig.layout.title.text
    assert "log p(real)" in fig.layout.yaxis.title.text


def test_delta_hover_names_token_and_movers(traces):
    fig = contrastive_delta_figure(traces)
    hover = fig.data[0].hovertext[0]
    assert repr(traces["safecode"].tokens[0]) in hover
    assert "moved most" in hover and "' sorry' +2.500" in hover and "#400 -1.250" in hover
    assert list(fig.layout.xaxis.ticktext)[:2] == ["I", " cannot"]


def test_delta_zero_line_and_modulated_steps(traces):
    fig = contrastive_delta_figure(traces)
    shapes = fig.layout.shapes
    assert any(s.type == "line" and s.y0 == 0 and s.y1 == 0 for s in shapes)
    assert any(s.type == "rect" for s in shapes)  # SafeCoDe's modulated steps


def test_delta_several_methods_are_lines():
    traces = {"safecode": make_trace("safecode", delta=True), "vanilla": make_trace("vanilla", delta=True, seed=4)}
    fig = contrastive_delta_figure(traces)
    assert [t.type for t in fig.data] == ["scatter", "scatter"]
    assert not _annotations(fig).count("native")


def test_delta_none_available():
    fig = contrastive_delta_figure({"vanilla": make_trace()})
    assert len(fig.data) == 0
    assert "native to SafeCoDe" in _annotations(fig)
