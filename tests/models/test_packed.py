"""Pre-packed oneDNN weights change the speed of a CPU decode step, never what it computes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from safety_demo.models.base import Request
from safety_demo.models.packed import LAYOUT_ROWS, PackedLinear, layout_rows, pack_linears, supported, wanted

needs_bf16 = pytest.mark.skipif(not supported(torch.bfloat16), reason="this torch build cannot pack bfloat16 weights")
needs_fp32 = pytest.mark.skipif(not supported(torch.float32), reason="this torch build cannot pack float32 weights")


def _layer(dtype: torch.dtype, bias: bool, out_f: int = 96, in_f: int = 80) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_f, out_f, bias=bias).to(dtype).eval()


@needs_bf16
@pytest.mark.parametrize("shape", [(1, 80), (3, 80), (3, 1, 80), (1, 37, 80), (8, 1, 80)])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_packed_is_bit_identical(shape, bias):
    """The decode step's rows (1, 3, 8), a prefill (37 positions): same bits as F.linear."""
    layer = _layer(torch.bfloat16, bias)
    x = torch.randn(*shape).bfloat16()
    with torch.no_grad():
        assert torch.equal(PackedLinear(layer)(x), layer(x))


@needs_fp32
def test_fp32_packed_is_within_rounding():
    layer = _layer(torch.float32, True, 300, 200)
    x = torch.randn(4, 1, 200)
    with torch.no_grad():
        torch.testing.assert_close(PackedLinear(layer)(x), layer(x), atol=1e-4, rtol=1e-4)


@needs_fp32
@pytest.mark.parametrize("out_f,in_f", [(4864, 896), (896, 4864)])
def test_a_float32_row_gets_the_same_bits_alone_and_in_a_batch(out_f, in_f):
    """Side by side, a method's row rides in a batch of 2 to 9: the float32 layout is chosen so that
    it computes what the row computes alone (where this CPU has such a layout)."""
    packed = PackedLinear(_layer(torch.float32, True, out_f, in_f))
    x = torch.randn(9, 1, in_f)
    with torch.no_grad():
        alone = packed(x[:1])
        same = [torch.equal(alone, packed(x[:m])[:1]) for m in (2, 3, 5, 8, 9)]
    if packed.rows == 1 and not all(same):
        pytest.skip(f"no float32 layout in {LAYOUT_ROWS} is batch-invariant on this CPU")
    assert all(same) and packed.rows == layout_rows(torch.float32, in_f) in LAYOUT_ROWS


@needs_bf16
def test_bfloat16_keeps_the_one_row_layout():
    assert layout_rows(torch.bfloat16, 896) == 1 and PackedLinear(_layer(torch.bfloat16, False)).rows == 1


class _TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.block = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied, as in Qwen2.5-0.5B

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids)))


@needs_fp32
def test_pack_linears_swaps_every_linear_and_keeps_ties():
    torch.manual_seed(0)
    model = _TiedLM().eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        before = model(ids)
        assert pack_linears(model, enabled=True) == 3
        after = model(ids)
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert model.head.weight is model.embed.weight  # the input embedding still reads the same Parameter
    assert isinstance(model.head, PackedLinear) and "packed=oneDNN" in repr(model.head)
    assert "packed" not in model.state_dict() and "head.weight" in model.state_dict()  # checkpoints unchanged
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_turned_off_keeps_plain_layers():
    model = _TiedLM().eval()
    assert pack_linears(model, enabled=False) == 0
    assert type(model.head) is nn.Linear
    assert not wanted("off") and not wanted(" 0 ") and wanted("1")


def test_unsupported_dtype_is_left_alone():
    model = _TiedLM().half().eval()
    assert not supported(torch.float16)
    assert pack_linears(model, enabled=True) == 0 and type(model.head) is nn.Linear


@needs_fp32
def test_tiny_vlm_packed_answers_like_plain(monkeypatch):
    """A whole (tiny) VLM on the CPU: packed and plain layers give the same greedy answer."""
    from safety_demo.decoding import GenerationConfig, run_to_end
    from safety_demo.models.tiny import TINY_FAMILIES, load_tiny

    family = next(iter(TINY_FAMILIES))
    request = Request(Image.new("RGB", (64, 64), "orange"), "What is in the picture?")
    config = GenerationConfig(max_new_tokens=12)
    monkeypatch.setenv("SAFETY_DEMO_PACK", "0")
    plain = load_tiny(family)  # seeded: the same weights both times
    assert plain.packed == 0
    monkeypatch.setenv("SAFETY_DEMO_PACK", "1")
    packed = load_tiny(family)
    assert packed.packed > 0
    a, b = run_to_end(plain, request, config=config), run_to_end(packed, request, config=config)
    assert list(a.token_ids) == list(b.token_ids)
    torch.testing.assert_close(torch.as_tensor(a.hidden), torch.as_tensor(b.hidden), atol=1e-3, rtol=1e-3)


def test_a_model_split_by_accelerate_is_left_alone():
    """Layers accelerate placed (over GPUs, or offloaded to disk) stay plain: packing is for a model
    wholly on the CPU."""
    model = _TiedLM().eval()
    model.hf_device_map = {"embed": "cpu", "block": "disk", "head": "cpu"}
    assert pack_linears(model, enabled=True) == 0 and type(model.head) is nn.Linear


class _Attention(nn.Module):
    """Siblings as transformers names them: q, k and v read the same input, one after another."""

    def __init__(self, dtype: torch.dtype, bias: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(80, n, bias=bias).to(dtype) for n in (96, 32, 32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=needs_bf16), pytest.param(torch.float32, marks=needs_fp32)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_fused_siblings_give_each_layer_its_own_bits(dtype, bias, rows):
    """One product for q, k and v, sliced: the bits each packed layer gives alone."""
    separate, fused = _Attention(dtype, bias).eval(), _Attention(dtype, bias).eval()
    separate.q_proj, separate.k_proj, separate.v_proj = (PackedLinear(l) for l in (separate.q_proj, separate.k_proj, separate.v_proj))
    assert pack_linears(fused, enabled=True) == 3
    assert fused.q_proj.shared is fused.v_proj.shared is not None and "fused" in repr(fused.k_proj)
    assert not hasattr(fused.q_proj, "packed")  # no copy of its own beside the shared one
    x = torch.randn(rows, 1, 80).to(dtype)
    with torch.no_grad():
        for mine, theirs in zip(fused(x), separate(x)):
            assert torch.equal(mine, theirs)


@needs_bf16
def test_the_shared_product_is_computed_once_and_let_go(monkeypatch):
    model = _Attention(torch.bfloat16, True).eval()
    pack_linears(model, enabled=True)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(1, 5, 80).bfloat16()
    with torch.no_grad():
        q, k, v = model(x)
    assert len(calls) == 1 and (q.shape[-1], k.shape[-1], v.shape[-1]) == (96, 32, 32)
    assert model.q_proj.shared.last[0] is None  # every slice taken: a prefill's product is not kept
    with torch.no_grad():  # a sibling alone on another tensor (cross-attention): computed afresh, right
        other = torch.randn(2, 80).bfloat16()
        assert torch.equal(model.k_proj(other), F.linear(other, model.k_proj.weight, model.k_proj.bias))
        assert torch.equal(model.k_proj(other), F.linear(other, model.k_proj.weight, model.k_proj.bias))


def test_siblings_unalike_are_not_fused():
    """q with a bias and k, v without: three products, as before."""
    if not supported(torch.float32):
        pytest.skip("this torch build cannot pack float32 weights")
    model = _Attention(torch.float32, True).eval()
    model.k_proj, model.v_proj = nn.Linear(80, 32, bias=False), nn.Linear(80, 32, bias=False)
    assert pack_linears(model, enabled=True) == 3 and model.q_proj.shared is None and hasattr(model.q_proj, "packed")
