"""The model registry keeps at most SAFETY_DEMO_MAX_MODELS loaded and refuses absurd names."""
import pytest

import safety_demo.models as models


def test_least_recently_used_model_is_let_go(monkeypatch):
    monkeypatch.setenv("SAFETY_DEMO_MAX_MODELS", "2")
    monkeypatch.setattr(models, "_LOADED", models.OrderedDict())
    monkeypatch.setattr(models, "_load", lambda name: object())
    first = models.load_adapter("a")
    models.load_adapter("b")
    assert models.load_adapter("a") is first  # used again: now the most recent
    models.load_adapter("c")
    assert models.loaded_models() == ["a", "c"]


@pytest.mark.parametrize("name", ["", "x" * 1000, None])
def test_absurd_names_are_refused_with_a_short_sentence(name):
    with pytest.raises(models.ModelLoadError) as err:
        models.load_adapter(name)
    assert len(str(err.value)) < 200
