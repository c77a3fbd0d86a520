import plotly.graph_objects as go
import pytest

from safety_demo.viz import step_choices, step_figure, step_table
from safety_demo.viz.inspector import STEP_TABLE_HEADERS



@pytest.mark.parametrize("name", ["vanilla", "safecode", "safesteer"])
def test_step_table_marks_exactly_one_chosen(traces, name):
    trace = traces[name]
    for step in range(len(trace)):
        rows = step_table(trace, step)
        assert len(rows) == 3
        chosen = [r for r in rows if r["chosen"]]
        assert len(chosen) == 1
        assert chosen[0]["token_id"] == int(trace.token_ids[step])
        assert chosen[0]["token"] == trace.tokens[step]
        assert set(rows[0]) <= set(STEP_TABLE_HEADERS)


def test_step_table_probe_scores_only_when_recorded(traces):
    assert "probe_score" in step_table(traces["safesteer"], 0)[0]
    assert "probe_score" not in step_table(traces["vanilla"], 0)[0]


def test_step_table_ranked_by_method_probability(traces):
    trace = traces["safesteer"]
    rows = step_table(trace, 1)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["method_prob"] for r in rows] == sorted((r["method_prob"] for r in rows), reverse=True)
    assert all(r["action"] == "reranked" for r in rows)


def test_step_table_candidate_text_sources(traces):
    trace = traces["vanilla"]
    rows = step_table(trace, 0)
    other = next(r for r in rows if not r["chosen"])
    assert other["token"] == f"#{other['token_id']}"  # a trace without candidate texts shows ids
    named = step_table(trace, 0, token_texts=lambda ids: [f"t{i}" for i in ids])
    assert [r["token"] for r in named] == [f"t{r['token_id']}" for r in rows]
    trace.candidate_tokens[0] = [f"n{int(i)}" for i in trace.candidate_ids[0]]  # what the engine records
    noted = step_table(trace, 0)
    assert [r["token"] for r in noted] == [f"n{r['token_id']}" if not r["chosen"] else trace.tokens[0] for r in rows]


def test_step_table_rejects_bad_step(traces):
    with pytest.raises(ValueError, match="step must be in"):
        step_table(traces["vanilla"], 99)


def test_step_figure_grouped_bars(traces):
    trace = traces["safesteer"]
    fig = step_figure(trace, 1)
    assert isinstance(fig, go.Figure)
    assert fig.layout.barmode == "group"
    assert [t.type for t in fig.data] == ["bar", "bar"] and all(t.orientation == "h" for t in fig.data)
    assert [len(t.x) for t in fig.data] == [3, 3]
    starred = [y for y in fig.data[0].y if y.startswith("★")]
    assert len(starred) == 1
    assert any("P(harm)" in t for t in fig.data[1].text)
    assert "reranked" in fig.layout.title.text


def test_step_choices_labels(traces):
    choices = step_choices(traces["safesteer"])
    assert choices[0] == ("0: 'I' (reranked)", 0)
    assert choices[4] == ("4: ' that'", 4)
    assert [v for _, v in choices] == list(range(len(traces["safesteer"])))


def test_step_figure_escapes_markup_tokens(traces):
    trace = traces["vanilla"]
    trace.tokens[0] = "<eos>"
    fig = step_figure(trace, 0)
    assert "&lt;eos&gt;" in fig.layout.title.text
    assert any("&lt;eos&gt;" in y for y in fig.data[0].y)


def test_step_figure_one_series_when_method_equals_model(traces):
    trace = traces["vanilla"]
    trace.policy_probs[:] = trace.raw_probs
    fig = step_figure(trace, 0)
    assert [t.visible is not False for t in fig.data] == [True, False]
    assert fig.data[0].name == "p (model = vanilla)"
