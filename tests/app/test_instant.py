"""Instant examples: a stored run is shown only while everything that shaped it is unchanged."""
import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file

from safety_demo.data.examples import EXAMPLES, EXAMPLES_DIR
from safety_demo.methods import knob_values
from safety_demo.ui import instant
from safety_demo.ui import run as run_views

FLOWER = next(e for e in EXAMPLES if e.file == "flower.jpg")
OUTPUTS = ["status", "vanilla", "safecode", "safesteer", "stats_v", "stats_c", "stats_s", "info_v", "info_c", "info_s",
           "story", "delta", "map", "step", "rows", "slider", "json", "html", "legend", "branch_token"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_DEMO_CACHE", str(tmp_path))
    return tmp_path / "examples"


def test_a_stored_example_is_the_live_run_and_survives_a_round_trip(cache, fake_probe):
    assert instant.precompute("fake", [FLOWER]) == [FLOWER.name]
    assert instant.precompute("fake", [FLOWER]) == []  # stored: not run again
    assert len(list(cache.glob("flower-*.json"))) == 1 and len(list(cache.glob("flower-*.npz"))) == 1
    shown = instant.show(str(EXAMPLES_DIR / FLOWER.file), FLOWER.prompt, "fake", knob_values(), "Probe axis", "safesteer")
    assert isinstance(shown, run_views.Finished) and shown.message.startswith("Precomputed example")
    *_, live = run_views.generate(str(EXAMPLES_DIR / FLOWER.file), FLOWER.prompt, "fake", knob_values())
    for m, t in live.run.traces.items():
        stored = shown.run.traces[m]
        assert stored.tokens == t.tokens and stored.actions == t.actions  # the same answers, step by step
        np.testing.assert_array_equal(stored.hidden, t.hidden)  # the map has what it needs
        np.testing.assert_allclose(stored.prefill_hidden, t.prefill_hidden)
    assert shown.parts == live.parts and shown.step_at == live.step_at


def test_a_change_to_what_shaped_the_run_falls_back_to_a_live_run(cache, fake_probe, monkeypatch):
    instant.precompute("fake", [FLOWER])
    image, prompt = str(EXAMPLES_DIR / FLOWER.file), FLOWER.prompt
    moved = instant.show(image, prompt, "fake", knob_values(max_new_tokens=7), "Probe axis", "safesteer")
    assert isinstance(moved, str) and "knobs differ" in moved
    assert "Press Generate" in instant.show(image, prompt + " Please.", "fake", knob_values(), "Probe axis", "safesteer")
    assert "Press Generate" in instant.show(str(EXAMPLES_DIR / "blank.png"), prompt, "fake", knob_values(), "Probe axis", "safesteer")
    monkeypatch.setattr(fake_probe, "weight", fake_probe.weight * 2)  # a refitted probe
    assert "not been precomputed" in instant.show(image, prompt, "fake", knob_values(), "Probe axis", "safesteer")
    monkeypatch.undo()
    monkeypatch.setenv("SAFETY_DEMO_CACHE", str(cache.parent))
    instant.code_version.cache_clear()
    monkeypatch.setattr(instant, "code_version", lambda: "an edited policy")
    assert "not been precomputed" in instant.show(image, prompt, "fake", knob_values(), "Probe axis", "safesteer")


def test_the_code_version_follows_trace_making_code_only():
    instant.code_version.cache_clear()
    files = [p.relative_to(instant.PACKAGE).parts[0] for p in instant.PACKAGE.rglob("*.py")]
    assert {"decoding", "models", "probe", "methods.py"} <= set(files)
    assert len(instant.code_version()) == 16


def test_a_torn_store_is_recomputed_not_shown(cache, fake_probe):
    instant.precompute("fake", [FLOWER])
    (meta,) = cache.glob("flower-*.json")
    meta.write_text(meta.read_text()[:100])
    assert "not been precomputed" in instant.show(str(EXAMPLES_DIR / FLOWER.file), FLOWER.prompt, "fake", knob_values(), "PCA", "vanilla")
    assert instant.precompute("fake", [FLOWER]) == [FLOWER.name]


def test_the_app_shows_a_clicked_example_at_once(client, cache, fake_probe, knob_defaults):
    image = handle_file(str(EXAMPLES_DIR / FLOWER.file))
    out = dict(zip(OUTPUTS, client.predict(image, FLOWER.prompt, "fake", "Probe axis", "safesteer", *knob_defaults, api_name="/show_example")))
    assert "not been precomputed" in out["status"]
    instant.precompute("fake", [FLOWER])
    out = dict(zip(OUTPUTS, client.predict(image, FLOWER.prompt, "fake", "Probe axis", "safesteer", *knob_defaults, api_name="/show_example")))
    assert out["status"].startswith("Precomputed example")
    for m in ("vanilla", "safecode", "safesteer"):
        assert out[m].count('class="tok') >= 1
    assert set(json.loads(Path(out["json"]).read_text())) == {"vanilla", "safecode", "safesteer"}
