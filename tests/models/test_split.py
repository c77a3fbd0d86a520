"""A model split over two "devices" by accelerate, on CPU: the CPU and the disk (offloaded layers
run on the CPU through accelerate's hooks). The same plumbing carries a split over GPUs: inputs
go to the first device, logits and hidden states come back there, the KV cache lives per layer."""
import re

import pytest
import torch

from safety_demo.decoding import GenerationConfig, SafeCoDePolicy, SafeSteerPolicy, VanillaPolicy, generate_many
from safety_demo.models import ModelLoadError
from safety_demo.models.hf import input_device, load_hf, parse_max_memory, placement
from safety_demo.models.tiny import load_tiny

from ..decoding.test_safesteer import axis_probe
from .test_tiny_matrix import REQ

pytest.importorskip("accelerate")
FAMILIES = ["qwen2_5_vl", "llava", "idefics3"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each family's tiny random model and processor, saved as a local repo."""
    dirs = {}
    for family in FAMILIES:
        tiny = load_tiny(family)
        path = tmp_path_factory.mktemp(family)
        tiny.model.save_pretrained(path)
        tiny.processor.save_pretrained(path)
        dirs[family] = str(path)
    return dirs


def _half_on_disk(path: str) -> dict[str, str]:
    """An explicit device_map: the second half of the language model's layers on "disk", the rest on the CPU."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path))
    layers = sorted({m[1] for n, _ in model.named_parameters() if (m := re.match(r"(.*(?:language_model|text_model).*?layers\.\d+)\.", n))},
                    key=lambda n: int(n.rsplit(".", 1)[1]))
    far = set(layers[len(layers) // 2 :])
    return {n.rsplit(".", 1)[0]: ("disk" if any(n.startswith(f + ".") for f in far) else "cpu") for n, _ in model.named_parameters()}


def _answers(adapter) -> dict[str, list[int]]:
    policies = {
        "vanilla": VanillaPolicy(),
        "safecode": SafeCoDePolicy.for_model(adapter, verdict="unsafe", caption_max_tokens=4),  # + a noised row
        "safesteer": SafeSteerPolicy(probe=axis_probe(adapter, bias=5.0), steps=2, top_k=3),  # + candidate rows
    }
    config = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    return {n: e.trace.token_ids.tolist() for n, e in generate_many(adapter, REQ, policies, config) if e.done}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["device_map dict", "auto + max_memory"])
def test_a_split_model_answers_as_the_whole_one(saved, family, how, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_DEMO_ALLOWED_MODELS", saved[family])
    whole = load_hf(saved[family], device="cpu")
    assert getattr(whole.model, "hf_device_map", None) is None
    if how == "device_map dict":
        split = load_hf(saved[family], device="cpu", device_map=_half_on_disk(saved[family]), offload_folder=str(tmp_path))
    else:
        split = load_hf(saved[family], device="cpu", device_map="auto", max_memory={"cpu": "300KB"}, offload_folder=str(tmp_path))
    assert set(split.model.hf_device_map.values()) == {"cpu", "disk"}  # two places, accelerate's hooks between them
    assert split.device == torch.device("cpu") and input_device(split.model) == torch.device("cpu")
    assert _answers(split) == _answers(whole)
    out = split.prefill([REQ])
    torch.testing.assert_close(out.logits, whole.prefill([REQ]).logits, atol=1e-4, rtol=1e-4)
    assert out.logits.device == out.hidden.device == split.device


def test_placement_follows_the_operator_and_the_gpus(monkeypatch):
    monkeypatch.delenv("SAFETY_DEMO_DEVICE_MAP", raising=False)
    monkeypatch.delenv("SAFETY_DEMO_MAX_MEMORY", raising=False)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert placement(cpu) == {}
    assert placement(gpu) == {"device_map": "cuda"}  # one GPU: straight onto it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert placement(gpu) == {"device_map": "auto"}  # several GPUs: split by accelerate
    monkeypatch.setenv("SAFETY_DEMO_MAX_MEMORY", "0=20GiB, 1=30GiB, cpu=64GiB")
    assert placement(gpu, device_map="balanced") == {"device_map": "balanced", "max_memory": {0: "20GiB", 1: "30GiB", "cpu": "64GiB"}}
    assert parse_max_memory("") is None
    with pytest.raises(ModelLoadError, match="DEVICE=SIZE"):
        parse_max_memory("gpu0:20GiB")


def test_input_device_of_a_split_map():
    class Split(torch.nn.Module):
        hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}

    assert input_device(Split()) == torch.device("cuda:0")
    Split.hf_device_map = {"model.embed_tokens": "cuda:1", "model.layers.0": "disk"}
    assert input_device(Split()) == torch.device("cuda:1")
