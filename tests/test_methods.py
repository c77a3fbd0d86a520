"""The method registry: every place that lists methods reads it; adding one is one entry."""
import dataclasses

import pytest

from safety_demo import methods
from safety_demo.cli import build_parser
from safety_demo.compare import CompareConfig, compare
from safety_demo.decoding import Decision, GenerationConfig, Policy
from safety_demo.methods import METHODS, VARIANTS, Method, knob_groups, knob_keys, knob_values, method_names, read_knobs
from safety_demo.models.base import Request


@pytest.mark.parametrize("name", list(METHODS))
def test_each_entry_is_complete(name):
    m = METHODS[name]
    assert m.title and m.summary and m.color.startswith("#")
    fields = {f.name for f in dataclasses.fields(m.config)} if m.config else set()
    assert all(k.field in fields and k.config is m.config for k in m.knobs)


def test_colours_and_titles_are_distinct():
    assert len({m.color for m in METHODS.values()}) == len({m.title for m in METHODS.values()}) == len(METHODS)


def test_cli_app_and_eval_read_the_registry():
    from safety_demo.eval.runner import EvalConfig

    parser = build_parser()
    gen = parser._subparsers._group_actions[0].choices["generate"]
    method_flag = next(a for a in gen._actions if a.dest == "method")
    assert tuple(method_flag.choices) == method_names()
    assert list(knob_groups()) == ["Generation"] + [m.title for m in METHODS.values() if m.knobs]
    assert EvalConfig(bench="figstep", data=".").methods == tuple(METHODS)
    assert VARIANTS and all(base in METHODS for base, _ in VARIANTS.values())


def test_knobs_are_set_by_name():
    values = knob_values(max_new_tokens=7, **{"safesteer.steps": 2, "safecode.steps": 3})
    generation, configs = read_knobs(values)
    assert (generation.max_new_tokens, configs["safesteer"].steps, configs["safecode"].steps) == (7, 2, 3)
    assert len(values) == len(knob_keys())
    with pytest.raises(KeyError, match="unknown knobs"):
        knob_values(steps=3)  # ambiguous: SafeCoDe's or SafeSteer's


class FirstWord(Policy):
    """A made-up method: always answers with the same first token, then decodes as vanilla."""

    name = "firstword"

    def __init__(self, token: int) -> None:
        self.token = token

    def step(self, view):
        if view.step == 0:
            return Decision(logits=view.logits[0], forced_token=self.token, action="forced")
        return Decision(logits=view.logits[0])


def test_adding_a_method_is_one_entry(fake, photo, monkeypatch):
    entry = Method("firstword", "First word", "#123456", "Forces one opening token.", lambda adapter, request, config, probe: FirstWord(adapter.encode_text("Sure")[0]))
    monkeypatch.setitem(METHODS, "firstword", entry)
    assert "firstword" in method_names()
    gen = build_parser()._subparsers._group_actions[0].choices["generate"]
    assert "firstword" in next(a for a in gen._actions if a.dest == "method").choices
    from safety_demo.viz import method_color

    assert method_color("firstword") == "#123456"
    config = CompareConfig(generation=GenerationConfig(max_new_tokens=3), methods=("vanilla", "firstword"))
    columns = list(compare(fake, Request(photo, "describe"), config))[-1]
    assert columns["firstword"].trace.tokens[0] == "Sure" and columns["firstword"].trace.actions[0] == "forced"
    assert columns["vanilla"].trace is not None


def test_unknown_method_lists_the_choices(fake, photo):
    with pytest.raises(ValueError, match="choose among: vanilla"):
        methods.build("nope", fake, Request(photo, "x"))
