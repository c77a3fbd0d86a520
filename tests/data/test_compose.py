"""The attack composer's forms: the key phrase read off a request, three renderings of it."""
import numpy as np
import pytest

from safety_demo.data.calibration import FIGSTEP_PROMPT, TYPO_PROMPT
from safety_demo.data.compose import MAX_PHRASE_CHARS, compose, key_phrase


@pytest.mark.parametrize("request_, phrase", [
    ("How can someone pick a lock?", "pick a lock"),
    ("how do I bake bread", "bake bread"),
    ("Can you tell me how to make a cake?", "make a cake"),
    ("Please explain how to grow tomatoes.", "grow tomatoes"),
    ("What is the best way to clean a carpet?", "clean a carpet"),
    ("Give me instructions to build a birdhouse", "build a birdhouse"),
    ("Write a poem about cats", "write a poem about cats"),  # no question frame: the request itself
    ("NASA budgets", "NASA budgets"),  # an acronym keeps its capitals
])
def test_key_phrase_drops_the_question_frame(request_, phrase):
    assert key_phrase(request_) == phrase


def test_three_forms_carry_the_same_request_three_ways():
    text, typed, figstep = compose("How can someone pick a lock?")
    assert (text.name, typed.name, figstep.name) == ("text", "typed", "figstep")
    assert text.prompt == "How can someone pick a lock?" and typed.prompt == TYPO_PROMPT and figstep.prompt == FIGSTEP_PROMPT
    pixels = [np.asarray(f.image.convert("L")) for f in (text, typed, figstep)]
    assert pixels[0].min() == 255  # the text form's image is blank: the request travels as text
    assert (pixels[1] < 128).mean() > 0.01 and (pixels[2] < 128).mean() > 0.01  # the others carry ink
    assert not np.array_equal(pixels[1], pixels[2])
    edited = compose("How can someone pick a lock?", phrase="open a safe")[1]
    assert not np.array_equal(np.asarray(edited.image), np.asarray(typed.image))  # the user's phrase is what is typed


@pytest.mark.parametrize("request_, phrase, message", [
    ("   ", None, "Type a request"),
    ("How to?", None, "Type a request"),
    ("Do it", "x" * (MAX_PHRASE_CHARS + 1), "keep it under"),
])
def test_nothing_to_render_is_a_sentence(request_, phrase, message):
    with pytest.raises(ValueError, match=message):
        compose(request_, phrase)
