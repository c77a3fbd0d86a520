"""A decode step's attention on the CPU: each key/value head with its query heads stacked.

With grouped-query attention (the built-in Qwen2.5: 14 query heads share 2 key/value heads),
transformers' `sdpa` hands one query row to `F.scaled_dot_product_attention(enable_gqa=True)`
when the batch has no padding mask (one row, decoding alone), and on the CPU that call is slow
in bfloat16: 41 us for 64 cached positions, 148 us for 256 and 633 us for 1024 (2 threads, 2-core
AMD EPYC with avx512_bf16), against 11, 18 and 50 us for the same product with the 7 query heads of
each key/value head stacked as 7 query rows. transformers already does the stacking when a mask
is given (a padded batch); this does it always, so a row decoding alone gets the fast kernel
too, and alone or in a batch it takes the same one. A one-row bfloat16 step after a 2541-character
prompt: 33.9 -> 25.6 ms (float32: 0.98-0.99x). Both measured by
`python -m safety_demo.eval.dtype_speed --repeats 7` (its last two tables).

Every other call (a prefill, a vision tower, a model without GQA) goes to transformers' `sdpa`
unchanged. Registered with transformers' `AttentionInterface`, under `NAME`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .cpu import wholly_on_cpu

NAME = "sdpa_stacked_gqa"  # the attn_implementation a model on the CPU is switched to
UNUSUAL = ("position_bias", "cache", "softcap", "s_aux")  # given any of these, transformers' sdpa decides


def stacked_gqa_attention(
    module: nn.Module,
    query: torch.Tensor,  # [B, H, Q, d]
    key: torch.Tensor,  # [B, Hkv, L, d]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns ([B, Q, H, d], None) as `sdpa` does."""
    B, H, Q, d = query.shape
    kv_heads = key.shape[1]
    plain = all(kwargs.get(name) is None for name in UNUSUAL) and not kwargs.get("dropout", 0.0)
    if Q != 1 or attention_mask is not None or H == kv_heads or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    stacked = query.reshape(B, kv_heads, H // kv_heads, d)  # one query row per head -> rows of its KV head
    out = F.scaled_dot_product_attention(stacked, key, value, scale=scaling)  # [B, Hkv, H/Hkv, d]
    return out.reshape(B, H, Q, d).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `NAME` a valid attn_implementation (its mask is sdpa's); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, stacked_gqa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_stacked_gqa(model: nn.Module) -> bool:
    """Switch a model that lies wholly on the CPU and uses `sdpa` to `NAME`; True if switched.
    (On a GPU, torch's GQA kernels are the fast ones: nothing changes there.)"""
    on_cpu = wholly_on_cpu(model)
    config = getattr(model, "config", None)
    plan = _plan(config) if config is not None and hasattr(config, "_attn_implementation") else {}
    if not on_cpu or NAME not in str(plan):
        return False
    register()
    model.set_attn_implementation(plan)
    return True


def _plan(config) -> dict:
    """{"": this config's implementation, sub-config: its plan, ...} with every `sdpa` made `NAME`
    (a VLM's text model is a sub-config; a vision tower on `eager` stays on it)."""
    own = config._attn_implementation
    plan = {"": NAME if own == "sdpa" else own}
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            plan[key] = _plan(sub)
    return plan
