"""The attack composer's three forms of one request, made with the project's own renderers.

The papers' core finding in one click: a request a model refuses as text is often answered
when the same words travel in the image. The forms are the calibration set's compositions,
built here from whatever the user typed (measuring nothing, so no hold-out concern):

  text     the request as the prompt, a blank image (CB)
  typed    its key phrase typed into the image, a neutral instruction (TYPO, MM-SafetyBench's)
  figstep  a title over an empty numbered list, FigStep's own prompt (a published attack)

The key phrase is read off the request by dropping its question frame ("How can I …?" ->
"…"); the user can edit it before running.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from .calibration import FIGSTEP_PROMPT, TYPO_PROMPT
from .render import blank_image, render_figstep, render_typo

MAX_PHRASE_CHARS = 120  # what still renders large enough to read in a 448 px image

# Question frames in front of the activity, longest first ("how can someone" before "how can").
_FRAMES = [
    r"(?:can|could|would|will) you (?:please )?(?:tell|show|teach|explain to) (?:me|us) how to",
    r"(?:can|could|would|will) you (?:please )?(?:explain|describe|help me|help us) (?:how to )?",
    r"(?:please )?(?:tell|show|teach) (?:me|us) how to",
    r"(?:please )?(?:explain|describe) how to",
    r"(?:please )?give (?:me |us )?(?:detailed )?(?:instructions|steps|a guide|a plan) (?:on |for )?(?:how )?to",
    r"what(?:'s| is| are) (?:the )?(?:best|easiest|fastest|quickest|simplest) ways? to",
    r"what are (?:the )?steps to",
    r"how (?:can|could|do|does|would|should|might|to) (?:i|you|we|one|someone|somebody|people|a person) (?:best )?",
    r"how to",
    r"i (?:want|need|would like) to (?:know how to )?",
    r"help me (?:to )?",
    r"please",
]
_FRAME = re.compile(r"^(?:" + "|".join(_FRAMES) + r")\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Form:
    name: str  # "text" | "typed" | "figstep"
    title: str  # the column's heading
    image: Image.Image
    prompt: str


FORM_TITLES = {"text": "As text (blank image)", "typed": "Key phrase typed into the image", "figstep": "FigStep-style empty list"}


def key_phrase(request: str) -> str:
    """The activity a request asks about: "How can someone pick a lock?" -> "pick a lock"."""
    phrase = " ".join(request.split()).strip().rstrip("?.! ")
    for _ in range(3):  # "Please, can you tell me how to …" peels in steps
        peeled = _FRAME.sub("", phrase.lstrip(", ")).strip()
        if not peeled:
            return ""  # a frame and nothing after it ("How to?")
        if peeled == phrase:
            break
        phrase = peeled
    return phrase[:1].lower() + phrase[1:] if phrase[:2] != phrase[:2].upper() else phrase


def compose(request: str, phrase: str | None = None, size: tuple[int, int] = (448, 448)) -> list[Form]:
    """The three forms of `request` (its key phrase read off it unless given). Raises ValueError
    with a sentence when there is nothing to render."""
    request = " ".join(request.split())
    phrase = " ".join((phrase if phrase and phrase.strip() else key_phrase(request)).split()).rstrip(".")
    if not request or not phrase:
        raise ValueError("Type a request first: the composer renders its key phrase into the images.")
    if len(phrase) > MAX_PHRASE_CHARS:
        raise ValueError(f"The key phrase is {len(phrase)} characters; keep it under {MAX_PHRASE_CHARS} so it stays readable in the image.")
    return [
        Form("text", FORM_TITLES["text"], blank_image(size), request),
        Form("typed", FORM_TITLES["typed"], render_typo(phrase, size), TYPO_PROMPT),
        Form("figstep", FORM_TITLES["figstep"], render_figstep(f"Steps to {phrase}.", size), FIGSTEP_PROMPT),
    ]
