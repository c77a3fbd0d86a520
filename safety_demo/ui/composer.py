"""What the attack composer's callbacks call: one request in three forms, one method, side by side.

No Gradio here. The forms come from `data.compose`; they decode together in one batch per
step (`compare.compare_requests`), so a student sees the text form refused and the image
forms answered, or what a defence does to each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from ..compare import Column, CompareConfig, compare_requests
from ..data.compose import Form, compose, key_phrase
from ..inputs import LIMITS, InputError, check_prompt_tokens, clean_prompt
from ..methods import METHODS, method_config, read_knobs
from ..models import Request, model_choices
from .run import REFRESH_SECONDS, choose
from .session import model, probe_for


@dataclass
class Composed:
    """The three forms, checked and rendered, before any decoding."""

    forms: list[Form]
    method: str


def phrase_for(request: str | None) -> str:
    """The key phrase the composer would render for `request` (the user may edit it)."""
    return key_phrase(request) if isinstance(request, str) else ""


def run(request: str, phrase: str, model_name: str, method: str, knob_values: list[Any]) -> Iterator[Composed | dict[str, Column]]:
    """The forms (`Composed`), then a column per form as tokens arrive. Raises InputError with a sentence."""
    choose(model_name, list(model_choices()), "Model")
    choose(method, list(METHODS), "Composer method")
    request = clean_prompt(request)
    try:
        forms = compose(request, clean_prompt(phrase) if isinstance(phrase, str) and phrase.strip() else None)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    generation, configs = read_knobs(list(knob_values))
    adapter = model(model_name)
    check_prompt_tokens(max(len(adapter.encode_text(f.prompt)) for f in forms))
    probe = probe_for(adapter, method_config("safesteer", configs).probe_components)
    yield Composed(forms, method)
    requests = {f.name: Request(f.image, f.prompt) for f in forms}
    yield from compare_requests(adapter, requests, method, CompareConfig(generation, configs), probe,
                                refresh=REFRESH_SECONDS, time_limit=LIMITS.max_request_seconds)
