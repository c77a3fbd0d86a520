"""Answers as running text: coloured spans, escaped, with a card per token and the marks."""
import numpy as np

from safety_demo.viz.answer import TokenView, answer_html, harm_color, streamed_views, trace_views

from .conftest import make_trace


def test_harm_colour_runs_from_pale_to_red():
    assert harm_color(0.0) == "rgb(255,255,255)" and harm_color(1.0) == "rgb(232,89,74)"
    assert harm_color(None) == harm_color(float("nan")) == "transparent"


def test_tokens_stay_inside_the_words_and_markup_is_escaped():
    page = answer_html([TokenView("I"), TokenView(" can"), TokenView("'t"), TokenView(" <b>x</b>", 0.9)])
    assert page.count('class="tok') == 4 and "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert ">I<span" in page and ">&#x27;t<span" in page  # no gaps added: the text is the tokens, joined as they are


def test_streamed_tokens_keep_their_probability_and_markup_reaches_the_page_escaped():
    views = streamed_views([("a", 0.0), ("<eos>", 1.0), ("c", None)])
    assert [v.p_harm for v in views] == [0.0, 1.0, None]
    page = answer_html(views)
    assert "&lt;eos&gt;" in page and "rgb(232,89,74)" in page and "transparent" in page


def test_a_growing_answer_extends_the_last_update_so_only_new_tokens_are_sent():
    """While streaming, each update's HTML begins with the last one's: Gradio's diff is then an
    "append" of the new tokens, not the whole answer again (gradio.utils.diff)."""
    from gradio.utils import diff

    tokens = [("I", 0.1), (" can", 0.2), (" help", None)]
    before, after = (answer_html(streamed_views(tokens[:n]), growing=True) for n in (2, 3))
    assert after.startswith(before) and diff(before, after) == [["append", [], after[len(before):]]]
    assert after[len(before):].count('class="tok') == 1  # one token's span goes over the wire
    assert answer_html(streamed_views(tokens)).endswith("</div>")  # a finished answer is closed


def test_finished_tokens_carry_rank_the_models_own_choice_and_the_parting_mark():
    trace = make_trace("safesteer", T=4, actions=["reranked"] * 2 + ["kept"] * 2)  # step 1: the model's top-1 lost
    trace.raw_probs[1] = np.array([0.7, 0.2, 0.1], np.float32)  # the model's favourite is candidate 0; the chosen token is the last
    views = trace_views(trace, parts_at=1)
    assert trace.token_ids[1] == trace.candidate_ids[1, 2]
    assert views[1].model_top == trace.candidate_tokens[1][0] and views[1].parts and views[1].action == "reranked"
    assert views[0].model_top is None or views[0].model_top != trace.tokens[0]
    assert all(v.rank is not None and 1 <= v.rank <= v.candidates for v in views)
    page = answer_html(views)
    assert "tok changed parts" in page and "model's own top choice" in page and "parts from vanilla" in page
