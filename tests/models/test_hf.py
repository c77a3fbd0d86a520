"""`load_hf`: presets, the operator allow-list, clear errors, and the real loading path.

No test downloads anything. The loading path (AutoProcessor + AutoModelForImageTextToText from
safetensors) runs on tiny random models saved to a temporary folder that is allow-listed.
"""

from __future__ import annotations

import json

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from safety_demo.models.base import ModelLoadError, Request
from safety_demo.models.hf import ALLOW_ENV, PRESETS, HFAdapter, load_hf, resolve_repo_id
from safety_demo.models.tiny import TINY_FAMILIES, load_tiny


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, also for a huggingface_hub that read the variable at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_refuses_repo_that_is_neither_preset_nor_allowed(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(ModelLoadError, match=ALLOW_ENV):
        load_hf("someone/some-vlm")


def test_allow_listed_repo_that_cannot_be_fetched_raises_model_load_error(monkeypatch, offline):
    monkeypatch.setenv(ALLOW_ENV, "other/vlm, someone/not-cached-vlm")
    with pytest.raises(ModelLoadError, match="someone/not-cached-vlm"):
        load_hf("someone/not-cached-vlm")


def test_preset_not_in_cache_raises_model_load_error(offline):
    with pytest.raises(ModelLoadError, match="Qwen/Qwen2.5-VL-3B-Instruct"):
        load_hf("qwen2.5-vl-3b")


def test_allow_listed_repo_that_is_not_a_vlm_raises_model_load_error(
    tmp_path, monkeypatch, offline
):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(tmp_path)
    monkeypatch.setenv(ALLOW_ENV, str(tmp_path))
    with pytest.raises(ModelLoadError, match="'llama'"):
        load_hf(str(tmp_path))


def test_presets_resolve_by_name_and_repo_id(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    for name, preset in PRESETS.items():
        assert resolve_repo_id(name) == (preset.repo_id, preset)
        assert resolve_repo_id(preset.repo_id) == (preset.repo_id, preset)


def test_preset_supported_flags_match_transformers():
    from transformers import AutoModelForImageTextToText
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for name, preset in PRESETS.items():
        has_config = preset.family in CONFIG_MAPPING
        has_model = (
            has_config
            and CONFIG_MAPPING[preset.family] in AutoModelForImageTextToText._model_mapping
        )
        assert preset.supported == has_model, name
    # transformers 5.23, as pinned here, has every preset family
    assert all(p.supported for p in PRESETS.values())


def test_every_preset_family_has_a_tiny_model():
    assert {p.family for p in PRESETS.values()} <= set(TINY_FAMILIES)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_plumbing_load_hf_from_allow_listed_folder(family, tmp_path, monkeypatch, offline):
    """The real path: AutoProcessor + AutoModelForImageTextToText from safetensors on disk.

    Qwen2.5-VL also covers the processor fallback: the folder declares a video processor (as
    Hub repos do), which needs torchvision; the adapter loads the processor without it.
    """
    tiny = load_tiny(family)
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    if family == "qwen2_5_vl":
        video = {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 14, "merge_size": 2}
        (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))
    monkeypatch.setenv(ALLOW_ENV, str(tmp_path))

    loaded = load_hf(str(tmp_path), device="cpu")

    assert isinstance(loaded, HFAdapter) and loaded.model_id == str(tmp_path)
    assert loaded.dtype == torch.float32 and loaded.eos_token_ids == tiny.eos_token_ids
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    request = Request(image, "Describe the image.")
    assert torch.allclose(
        loaded.prefill([request]).logits, tiny.prefill([request]).logits, atol=1e-5
    )
