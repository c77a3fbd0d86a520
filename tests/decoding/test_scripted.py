"""Exact outcomes on scripted logits: end of turn, length caps, the judge's fallback, SafeCoDe's rules."""
import math

import pytest

from safety_demo.decoding import GenerationConfig, SafeCoDePolicy, run_to_end
from safety_demo.decoding.judge import run_judge
from safety_demo.models.base import Request

from .scripted import ScriptedAdapter, say

ANSWER = "Sure ! Here are the steps : 1 to make a cake and the list"


@pytest.fixture
def req(white):
    return Request(white, "describe the list")


def test_end_of_turn_stops_the_answer(white):
    adapter = ScriptedAdapter({"describe": say("Sure ! Here <eos> cake")})
    trace = run_to_end(adapter, Request(white, "describe it"), config=GenerationConfig(max_new_tokens=10))
    assert trace.tokens == ["Sure", "!", "Here", "<eos>"] and trace.stopped_on_eos
    assert trace.answer_tokens == ["Sure", "!", "Here"] and trace.text == adapter.decode(trace.token_ids[:3].tolist())


def test_length_cap_ends_without_end_of_turn(req):
    adapter = ScriptedAdapter({"describe": say(ANSWER)})
    trace = run_to_end(adapter, req, config=GenerationConfig(max_new_tokens=3))
    assert trace.tokens == ["Sure", "!", "Here"] and not trace.stopped_on_eos


def test_ignore_eos_decodes_the_whole_budget(req):
    adapter = ScriptedAdapter({"describe": say("Sure <eos>")})
    trace = run_to_end(adapter, req, config=GenerationConfig(max_new_tokens=5, ignore_eos=True))
    assert len(trace) == 5 and trace.tokens[:2] == ["Sure", "<eos>"]


JUDGE = {
    "Describe this image": say("a list of steps . the cat"),  # the caption: its first sentence is kept
    "You are checking": [{"image": 10.0, "unsafe": 8.0, "safe": 6.0}, {".": 10.0}],  # says neither word
}


def test_unparseable_verdict_is_safe_officially_or_the_odds_on_request(req):
    adapter = ScriptedAdapter({**JUDGE, "describe": say(ANSWER)})
    official = run_judge(adapter, req)
    assert (official.caption, official.raw) == ("a list of steps.", "image.")
    assert (official.verdict, official.source) == ("safe", "unparsed-default-safe")
    assert official.p_unsafe == pytest.approx(math.exp(8) / (math.exp(8) + math.exp(6)), rel=1e-4)
    odds = run_judge(adapter, req, fallback="logit")
    assert (odds.verdict, odds.source) == ("unsafe", "logit-fallback")


@pytest.mark.parametrize("reply,verdict", [("unsafe .", "unsafe"), ("safe .", "safe"), ("safe . not unsafe", "safe"), ("unsafe , not safe", "unsafe")])
def test_a_parsed_verdict_is_the_first_word(req, reply, verdict):
    adapter = ScriptedAdapter({**JUDGE, "You are checking": say(reply)})
    result = run_judge(adapter, req)
    assert (result.verdict, result.source) == (verdict, "parsed")


def test_official_length_cap_after_unsafe(req):
    adapter = ScriptedAdapter({"describe": say(ANSWER)})
    policy = SafeCoDePolicy.for_model(adapter, verdict="unsafe", length_cap=3)
    trace = run_to_end(adapter, req, policy, GenerationConfig(max_new_tokens=40))
    forced = trace.actions.index("kept")  # the refusal prefix
    assert trace.actions == ["forced"] * forced + ["kept"] * 3 + ["forced"]  # prefix, 3 new tokens, then the end token
    assert trace.tokens[-1] == "<eos>" and len(trace) == forced + 3 + 1


def test_safe_path_stops_modulating_once_the_answer_reads_as_language(white):
    adapter = ScriptedAdapter({"describe": say("It is a cat and a dog")})
    trace = run_to_end(adapter, Request(white, "describe it"), SafeCoDePolicy.for_model(adapter, verdict="safe", steps=5), GenerationConfig(max_new_tokens=6))
    assert trace.tokens[:2] == ["It", "is"]
    assert trace.actions == ["suppressed", "suppressed", "kept", "kept", "kept", "kept"]  # "It is" reads as language at step 2
    assert trace.notes[2].get("early_stop") is True
