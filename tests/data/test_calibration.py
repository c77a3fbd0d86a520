"""The shipped calibration set and its renderers: counts, splits, validation, determinism."""
import hashlib
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from safety_demo.data import calibration as cal
from safety_demo.data import render


@pytest.fixture(scope="module")
def requests():
    return cal.load_requests()


def _dark_bands(image, threshold=128):
    """Runs of consecutive pixel rows that contain at least one dark pixel."""
    dark_rows = (np.asarray(image.convert("L")) < threshold).any(axis=1)
    bands, inside = 0, False
    for dark in dark_rows:
        bands += dark and not inside
        inside = dark
    return bands


# ---------------------------------------------------------------------------- content


def test_at_least_200_per_label(requests):
    counts = Counter(r["label"] for r in requests)
    assert counts["harmful"] >= 200
    assert counts["harmless"] >= 200


def test_several_categories_per_label(requests):
    cats = defaultdict(set)
    for r in requests:
        cats[r["label"]].add(r["category"])
    assert len(cats["harmful"]) >= 10
    assert len(cats["harmless"]) >= 10


def test_ids_unique_and_texts_not_duplicated(requests):
    ids = [r["id"] for r in requests]
    assert len(ids) == len(set(ids))
    texts = [" ".join(r["text"].lower().split()) for r in requests]
    assert len(texts) == len(set(texts))
    phrases = [r["key_phrase"].lower() for r in requests]
    assert len(phrases) == len(set(phrases))


def test_titles_look_like_figstep_instructions(requests):
    for r in requests:
        assert r["figstep_title"].endswith("."), r["id"]
        assert len(r["key_phrase"]) <= 60, r["id"]


# ---------------------------------------------------------------------------- splits


def test_every_label_category_has_both_splits(requests):
    groups = defaultdict(set)
    for r in requests:
        groups[(r["label"], r["category"])].add(r["split"])
    for key, splits in groups.items():
        assert splits == {"train", "heldout"}, key


def test_split_is_the_hash_rule_and_about_a_quarter(requests):
    expected = cal.assign_splits(requests)
    assert {r["id"]: r["split"] for r in requests} == expected
    assert cal.assign_splits(list(reversed(requests))) == expected  # order does not matter
    for label in cal.LABELS:
        rows = [r for r in requests if r["label"] == label]
        share = sum(r["split"] == "heldout" for r in rows) / len(rows)
        assert 0.2 <= share <= 0.3, (label, share)


# ---------------------------------------------------------------------------- validation


def _write(tmp_path, rows):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {
    "id": "x-1", "label": "harmless", "category": "cooking", "text": "How do I bake bread?",
    "key_phrase": "bake bread", "figstep_title": "Steps to bake bread.", "split": "train",
}


def test_malformed_json_names_the_line(tmp_path):
    path = _write(tmp_path, [GOOD, '{"id": "x-2", "label": '])
    with pytest.raises(cal.CalibrationFormatError, match=r"requests\.jsonl:2: not valid JSON"):
        cal.load_requests(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"label": "evil"}, "label 'evil' is not one of"),
        ({"split": "test"}, "split 'test' is not one of"),
        ({"text": "  "}, "field 'text' must be a non-empty string"),
        ({"extra": 1}, "unexpected \\['extra'\\]"),
        ({"id": "x-1", "text": "Other"}, "duplicate id 'x-1'"),
        ({"id": "x-2", "text": "how do I  BAKE bread?"}, "duplicate text"),
    ],
)
def test_invalid_fields_give_clear_errors(tmp_path, change, message):
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "x-2", "text": "Another question?", **change}])
    with pytest.raises(cal.CalibrationFormatError, match=message):
        cal.load_requests(path)


def test_missing_field_and_non_object(tmp_path):
    row = {k: v for k, v in GOOD.items() if k != "key_phrase"}
    with pytest.raises(cal.CalibrationFormatError, match=r":1: .*missing \['key_phrase'\]"):
        cal.load_requests(_write(tmp_path, [row]))
    with pytest.raises(cal.CalibrationFormatError, match="expected a JSON object"):
        cal.load_requests(_write(tmp_path, ["[1, 2]"]))


# ---------------------------------------------------------------------------- items


def test_calibration_set_has_no_benchmark_shaped_rows(requests):
    """Hold-out discipline: by default no row is a title over an empty numbered list with FigStep's prompt."""
    items = cal.calibration_items()
    assert {i.composition for i in items} == {"CB", "TYPO"} and "FIGSTEP" not in cal.CALIBRATION_COMPOSITIONS
    assert all(cal.FIGSTEP_PROMPT not in i.prompt for i in items)
    from safety_demo.probe import _compositions

    assert "FIGSTEP" not in _compositions()


def test_items_expand_each_request_into_its_compositions(requests):
    items = cal.calibration_items(compositions=("CB", "TYPO", "FIGSTEP"))  # FIGSTEP: opt-in, measuring only
    assert len(items) == 3 * len(requests)
    assert len({i.id for i in items}) == len(items)
    by_comp = defaultdict(set)
    for item in items:
        by_comp[item.composition].add(item.prompt)
    # TYPO and FIGSTEP share one prompt across labels: only the image differs.
    assert by_comp["TYPO"] == {cal.TYPO_PROMPT}
    assert by_comp["FIGSTEP"] == {cal.FIGSTEP_PROMPT}
    assert by_comp["CB"] == {r["text"] for r in requests}


def test_split_filter_and_bad_arguments(requests):
    heldout = cal.calibration_items(split="heldout", compositions=("CB",))
    assert len(heldout) == sum(r["split"] == "heldout" for r in requests)
    assert {i.split for i in heldout} == {"heldout"}
    with pytest.raises(ValueError, match="unknown compositions"):
        cal.calibration_items(compositions=("CB", "SVG"))
    with pytest.raises(ValueError, match="split must be"):
        cal.calibration_items(split="test")


def test_natural_is_harmless_only_or_skipped_with_a_warning(monkeypatch):
    if cal.natural_photo_sources():
        items = cal.calibration_items(compositions=("NATURAL",))
        assert items and {i.label for i in items} == {"harmless"}
        image = cal.image_for(items[0])
        assert image.size == render.DEFAULT_SIZE and image.mode == "RGB"
    monkeypatch.setattr(cal, "natural_photo_sources", lambda: [])
    with pytest.warns(UserWarning, match="NATURAL composition skipped"):
        assert cal.calibration_items(compositions=("NATURAL",)) == []


# ---------------------------------------------------------------------------- rendering


def _digest(image):
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_rendering_is_deterministic():
    items = cal.calibration_items(compositions=("CB", "TYPO", "FIGSTEP"))[:6]
    for item in items:
        a, b = cal.image_for(item), cal.image_for(item)
        assert a.mode == "RGB" and a.size == render.DEFAULT_SIZE
        assert _digest(a) == _digest(b)
    assert _digest(render.render_typo("bake bread")) == _digest(render.render_typo("bake bread"))
    assert _digest(render.render_typo("bake bread")) != _digest(render.render_typo("bake cake"))


def test_figstep_has_title_and_three_numbered_lines():
    image = render.render_figstep("Steps to bake sourdough bread at home.")
    assert _dark_bands(image) >= 4  # at least one title line + "1." + "2." + "3."
    arr = np.asarray(image.convert("L"))
    assert arr[: arr.shape[0] // 4].min() < 128  # the title sits at the top


def test_long_text_stays_inside_the_image():
    text = "a deliberately long phrase " * 6
    for image in (render.render_typo(text), render.render_figstep(text)):
        arr = np.asarray(image.convert("L"))
        assert (arr[:, :8] == 255).all() and (arr[:, -8:] == 255).all()  # side margins kept
        assert arr.min() < 128


def test_blank_is_white():
    assert np.asarray(render.blank_image((32, 16))).min() == 255


def test_typo_text_is_readable_by_ocr():
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    ocr = rapidocr.RapidOCR()
    result, _ = ocr(np.asarray(render.render_typo("sharpen a kitchen knife")))
    read = " ".join(r[1] for r in result or []).lower()
    assert "kitchen" in read and "knife" in read


# ---------------------------------------------------------------------------- hash


def test_calibration_hash_tracks_file_and_renderer(tmp_path, monkeypatch):
    shipped = cal.calibration_hash()
    assert len(shipped) == 64 and shipped == cal.calibration_hash()
    path = _write(tmp_path, [GOOD])
    before = cal.calibration_hash(path)
    monkeypatch.setattr(render, "RENDER_VERSION", "test")
    assert cal.calibration_hash(path) != before
