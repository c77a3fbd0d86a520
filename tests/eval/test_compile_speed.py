"""`compile_speed`: the compiled steps it times compute what the lean step and transformers' forward compute."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from safety_demo.eval import compile_speed
from safety_demo.eval.compile_speed import CompiledLayers, StaticDecode, has_compiler, opaque_product
from safety_demo.models import Request
from safety_demo.models.builtin.lean import LeanStep
from safety_demo.models.fake import FakeAdapter
from safety_demo.models.packed import pack_linears, packed_product

needs_compiler = pytest.mark.skipif(not has_compiler(), reason="no C++ compiler: inductor cannot compile for the CPU")


def packed_fake() -> FakeAdapter:
    adapter = FakeAdapter(seed=0)  # a tiny Qwen2: the built-in model's layers, small
    if not pack_linears(adapter.model, enabled=True):
        pytest.skip("this torch build cannot pack float32 weights")
    return adapter


def decode(adapter: FakeAdapter, step, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n greedy steps of `step` (the lean step's call) from a one-row prefill: (logits, hidden) each."""
    out = adapter.prefill([Request(Image.new("RGB", (64, 64), "orange"), "describe the photo")])
    cache, mask, token, seen = out.state.cache, out.state.attention_mask, out.logits.argmax(-1), []
    for _ in range(n):
        positions = mask.sum(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        logits, hidden = step(token, mask, positions, cache)
        seen.append((logits, hidden))
        token = logits.argmax(-1)
    return seen


def test_the_opaque_product_is_the_packed_product():
    adapter = packed_fake()
    qkv = LeanStep(adapter.model).layers[0].qkv
    x = torch.randn(2, 1, adapter.hidden_size)
    assert torch.equal(opaque_product(x, *qkv), packed_product(x, *qkv))


def test_without_a_compiler_it_says_so_and_times_nothing(monkeypatch, capsys):
    monkeypatch.setattr(compile_speed, "has_compiler", lambda: False)
    monkeypatch.setattr(compile_speed, "BuiltinAdapter", lambda *a, **k: pytest.fail("a model was loaded"))
    compile_speed.main([])
    assert "No C++ compiler" in capsys.readouterr().out


@pytest.mark.slow
@needs_compiler
def test_the_compiled_layers_decode_as_the_lean_step_does():
    """Same logits and hidden states within float32 rounding, step after step, the cache grown alike;
    padded rows are refused, not decoded wrongly."""
    adapter = packed_fake()
    lean, compiled = LeanStep.build(adapter.model), CompiledLayers(adapter.model)
    assert lean is not None
    for (a, ha), (b, hb) in zip(decode(adapter, lean, 6), decode(adapter, compiled, 6)):
        assert torch.allclose(a, b, atol=1e-4) and torch.allclose(ha, hb, atol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    out = adapter.prefill([Request(None, "hi"), Request(None, "describe the photo of a cat")])
    mask = torch.cat([out.state.attention_mask, torch.ones_like(out.state.attention_mask[:, :1])], dim=-1)
    with pytest.raises(ValueError, match="padding"):
        compiled(out.logits.argmax(-1), mask, out.state.attention_mask.sum(-1, keepdim=True), out.state.cache)


@pytest.mark.slow
@needs_compiler
def test_transformers_compiled_forward_decodes_as_its_plain_forward():
    adapter = FakeAdapter(seed=0)
    ids = torch.tensor([adapter.encode_text("describe the photo of a cat")])
    plain, compiled = StaticDecode(adapter.model, ids, 6, False), StaticDecode(adapter.model, ids, 6, True)
    ms, tokens = plain(6)
    assert ms > 0 and len(tokens) == 6
    assert compiled(6)[1] == tokens
    assert compiled(6)[1] == tokens  # a second run starts from a reset cache
