"""The built-in LM's decode step, op for op transformers' arithmetic without its per-layer machinery.

A CPU decode step of the built-in Qwen2.5-0.5B spends most of its time streaming ~1 GB of packed
weights (`models/packed.py`). Around those products, transformers' forward calls about a dozen
modules a layer (each through `nn.Module.__call__`, with output-recording hooks), views q, k and v
apart, rotates q and k one after the other and builds a mask: a few milliseconds of Python and
small ops a step. `LeanStep` runs the same arithmetic in the same order with one call per shared
product (q/k/v, gate/up) and q and k rotated in one pass (elementwise ops: the same bits either
way). Its logits, hidden state and cache are bit-identical to transformers' forward, in bfloat16
and float32, alone, in a padded batch, and on repeated and kept rows (tests/models/test_lean.py).
Prefill keeps transformers' forward.

The gain, `python -m safety_demo.eval.dtype_speed` (its "lean step" table), is in README's speed
section. Why not `torch.compile`: these layers traced into one inductor graph, or transformers'
own compiled decode, run no faster on a 2-core avx512_bf16 EPYC (`python -m
safety_demo.eval.compile_speed`, docs/PERFORMANCE-avx512.md).

It is built only for what it was checked against: a Llama-shaped decoder (Qwen2 or Llama: RMSNorm,
rotary q/k, grouped-query attention, a SiLU gated MLP) whose linear layers are packed with siblings
sharing one product, on a full-attention DynamicCache with sdpa. Anything else (`LeanStep.build`
returns None) decodes through transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import NAME as STACKED
from ..packed import PackedLinear, SharedInput, packed_product

FAMILIES = ("qwen2", "llama")  # model_type values whose decoder layer this mirrors


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights, as the step reads them."""

    norm_in: torch.Tensor  # input_layernorm.weight
    qkv: tuple[torch.Tensor, torch.Tensor | None]  # (packed weight, bias): q, k, v in one product
    o: tuple[torch.Tensor, torch.Tensor | None]
    norm_post: torch.Tensor  # post_attention_layernorm.weight
    gate_up: tuple[torch.Tensor, torch.Tensor | None]  # gate, up in one product
    down: tuple[torch.Tensor, torch.Tensor | None]


class LeanStep:
    """`step(token_ids, mask, positions, cache) -> (logits [B, V], hidden [B, D])` for one new token a row."""

    product = staticmethod(packed_product)  # x @ W.T + b from a packed weight (eval/compile_speed.py swaps in an opaque op)

    def __init__(self, model: nn.Module) -> None:
        config, body = model.config, model.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.embed, self.rotary, self.norm, self.head = body.embed_tokens, body.rotary_emb, body.norm, model.lm_head
        self.intermediate = config.intermediate_size
        self.layers = [
            _Layer(layer.input_layernorm.weight, _weights(layer.self_attn.q_proj.shared), _weights(layer.self_attn.o_proj),
                   layer.post_attention_layernorm.weight, _weights(layer.mlp.gate_proj.shared), _weights(layer.mlp.down_proj))
            for layer in body.layers
        ]

    @classmethod
    def build(cls, model: nn.Module) -> "LeanStep | None":
        """A `LeanStep` for `model`, or None where it is not the model this step mirrors."""
        return cls(model) if fits(model) else None

    @torch.no_grad()
    def __call__(self, token_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """token_ids [B]; mask [B, T+1] (1 = real, the new token included); positions [B, 1]; cache: a
        DynamicCache holding T positions, extended in place."""
        padded = None if bool(mask.all()) else mask[:, None, None, :].bool()  # [B, 1, 1, T+1]: sdpa's mask
        x, cos, sin = self.embed_and_rotary(token_ids, positions)
        for i, layer in enumerate(self.layers):
            x = self.layer(x, layer, cos, sin, padded, lambda k, v: cache.update(k, v, i))
        return self.read_out(x)

    def embed_and_rotary(self, token_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, 1, D], and cos, sin [B, 1, 1, d] for the new positions, shared by every layer."""
        d = self.head_dim
        x = self.embed(token_ids[:, None])
        cos, sin = (t[:, None] for t in self.rotary(x, positions))
        sin = torch.cat((-sin[..., : d // 2], sin[..., d // 2 :]), dim=-1)  # rotate_half's sign moved onto sin: (-a) * s == a * (-s), bit for bit
        return x, cos, sin

    def read_out(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, V], hidden [B, D]) in float32 from the last layer's x [B, 1, D]."""
        hidden = self.norm(x)
        return self.head(hidden)[:, -1].float(), hidden[:, -1].float()

    def layer(self, x: torch.Tensor, layer: _Layer, cos: torch.Tensor, sin: torch.Tensor, padded: torch.Tensor | None,
              update: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One decoder layer on x [B, 1, D]; `update(k, v)` appends the new key and value [B, Hkv, 1, d] to
        the layer's cache and returns all of them [B, Hkv, T+1, d]."""
        B, H, Hkv, d = x.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = self.product(self._rms(x, layer.norm_in), *layer.qkv)  # [B, 1, (H + 2 Hkv) d]
        qk = qkv[..., : (H + Hkv) * d].view(B, 1, H + Hkv, d).transpose(1, 2)  # q's heads, then k's
        qk = qk * cos + _swap_halves(qk) * sin  # rotary position embedding, q and k at once
        v = qkv[..., (H + Hkv) * d :].view(B, 1, Hkv, d).transpose(1, 2)
        k, v = update(qk[:, H:], v)  # [B, Hkv, T+1, d]
        q = qk[:, :H].reshape(B, Hkv, H // Hkv, d)  # each KV head's query heads as rows (models/attention.py)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=padded, scale=self.scaling)
        x = x + self.product(o.reshape(B, 1, H * d), *layer.o)
        gate_up = self.product(self._rms(x, layer.norm_post), *layer.gate_up)  # [B, 1, 2I]
        return x + self.product(F.silu(gate_up[..., : self.intermediate]) * gate_up[..., self.intermediate :], *layer.down)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """transformers' Qwen2/Llama RMSNorm, op for op: in float32, cast back, then scaled."""
        x32 = x.to(torch.float32)
        scale = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * torch.mul(x32, scale, out=torch.empty_like(x))  # product in float32, written in x's dtype: `(x32 * scale).to(x.dtype)` in one op


def _weights(layer: PackedLinear | SharedInput) -> tuple[torch.Tensor, torch.Tensor | None]:
    return layer.packed, layer.bias


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[a, b] -> [b, a] along the last dim: transformers' rotate_half without its minus (moved onto sin)."""
    *lead, d = x.shape
    return x.reshape(*lead, 2, d // 2).flip(-2).reshape(*lead, d)


def fits(model: nn.Module) -> bool:
    """Whether `model` is what `LeanStep` mirrors, op for op: see the module docstring."""
    config, body = getattr(model, "config", None), getattr(model, "model", None)
    if config is None or body is None or model.training or getattr(config, "model_type", None) not in FAMILIES:
        return False
    if config.hidden_act != "silu" or getattr(config, "mlp_bias", False) or getattr(config, "pretraining_tp", 1) != 1:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", STACKED) or getattr(config, "use_sliding_window", False):
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, gate_up = (attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)
        if not all(isinstance(p, PackedLinear) for p in (*qkv, *gate_up, attn.o_proj, mlp.down_proj)):
            return False
        for group in (qkv, gate_up):  # each group one shared product, sliced in order
            if group[0].shared is None or any(p.shared is not group[0].shared or p.part != n for n, p in enumerate(group)):
                return False
        if attn.o_proj.shared is not None or mlp.down_proj.shared is not None:
            return False
        if qkv[0].shared.sizes != [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]:
            return False
        if gate_up[0].shared.sizes != [config.intermediate_size] * 2:
            return False
    return True
