"""The everyday question set: well formed, loadable offline, and read by its own name matcher."""
from __future__ import annotations

import json

import pytest

from safety_demo.data.everyday import KINDS, everyday_questions


def test_set_is_eight_photos_times_five_questions():
    questions = everyday_questions()
    assert len(questions) == 40 and len({q.id for q in questions}) == 40
    photos = {q.image for q in questions}
    assert len(photos) == 8
    for photo in photos:
        assert sorted(q.kind for q in questions if q.image == photo) == sorted(KINDS)


def test_every_photo_loads_offline():
    pytest.importorskip("skimage.data")
    seen = set()
    for q in everyday_questions():
        if q.image in seen:
            continue
        seen.add(q.image)
        image = q.load_image()
        assert image.mode == "RGB" and min(image.size) >= 100, q.image


def test_names_object_matches_expected_words():
    cat = next(q for q in everyday_questions() if q.id == "chelsea-what")
    assert cat.names_object("It is a Tabby Cat on a rug.")
    assert not cat.names_object("I'm sorry, but I can't assist with that.")


def test_malformed_line_is_one_clear_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "x", "image": "example:flower.jpg", "kind": "weather", "prompt": "?", "object": "o", "names": ["o"]}) + "\n")
    with pytest.raises(ValueError, match="line 1: kind 'weather'"):
        everyday_questions(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not a valid everyday question"):
        everyday_questions(path)


def test_example_source_cannot_leave_the_examples_folder():
    from safety_demo.data.calibration import load_photo

    with pytest.raises(ValueError, match="no example image"):
        load_photo("example:../calibration/requests.jsonl")
