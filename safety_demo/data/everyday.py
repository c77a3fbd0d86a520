"""The project's everyday image questions: does the built-in model answer an ordinary photo?

Eight shipped photos (the project's examples, scikit-image's and scikit-learn's) x five plain
questions (what is in it, describe it, what colour, how many, what could I do here), each with
the object a reader would expect the answer to name. Written for this project; no benchmark
item, and never used to fit or tune anything: `python -m safety_demo.eval.everyday` measures.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .calibration import load_photo

EVERYDAY_PATH = Path(__file__).resolve().parents[2] / "assets" / "everyday" / "questions.jsonl"
KINDS = ("what", "describe", "colour", "count", "do")


@dataclass(frozen=True)
class EverydayQuestion:
    id: str
    image: str  # photo source, as `load_photo` reads it ("skimage:chelsea", "example:flower.jpg")
    kind: str  # one of KINDS
    prompt: str
    object: str  # what the photo shows, in words
    names: tuple[str, ...]  # words that count as naming it (lower case)

    def load_image(self) -> Image.Image:
        return load_photo(self.image)

    def names_object(self, answer: str) -> bool:
        """Whether `answer` names what the photo shows (any of `names`, case-insensitive)."""
        text = answer.lower()
        return any(name in text for name in self.names)


def everyday_questions(path: Path = EVERYDAY_PATH) -> list[EverydayQuestion]:
    """The question set, in file order; a malformed line raises ValueError naming it."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            q = EverydayQuestion(row["id"], row["image"], row["kind"], row["prompt"], row["object"],
                                 tuple(w.lower() for w in row["names"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path.name} line {n} is not a valid everyday question: {e}") from None
        if q.kind not in KINDS:
            raise ValueError(f"{path.name} line {n}: kind {q.kind!r} is not one of {', '.join(KINDS)}")
        out.append(q)
    return out
