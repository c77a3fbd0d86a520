"""A decode row's attention with its query heads stacked per key/value head: the same numbers as
transformers' sdpa, on the fast CPU kernel, and only where that kernel applies."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from safety_demo.models.attention import NAME, stacked_gqa_attention, use_stacked_gqa
from safety_demo.models.base import ModelLoadError, Request


class Layer(nn.Module):
    """What transformers' attention functions read off the layer calling them."""

    num_key_value_groups = 3
    is_causal = True
    training = False


def qkv(batch: int, queries: int, positions: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 6, queries, 16, generator=g).to(dtype)
    k, v = (torch.randn(batch, 2, positions, 16, generator=g).to(dtype) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("batch,positions", [(1, 5), (1, 300), (3, 40)])
def test_one_query_row_gets_what_sdpa_computes(dtype, tol, batch, positions):
    q, k, v = qkv(batch, 1, positions, dtype)
    mine, _ = stacked_gqa_attention(Layer(), q, k, v, None, scaling=0.25)
    theirs, _ = sdpa_attention_forward(Layer(), q, k, v, None, scaling=0.25)
    assert mine.shape == theirs.shape == (batch, 1, 6, 16)
    torch.testing.assert_close(mine.float(), theirs.float(), atol=tol, rtol=tol)


def test_it_stacks_the_heads_instead_of_asking_for_gqa(monkeypatch):
    """The point of it: torch's `enable_gqa` path is the slow one on the CPU (6.7x at 256
    positions in bfloat16, `eval/dtype_speed`), so a decode row must not take it."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        calls.append((tuple(query.shape), kwargs.get("enable_gqa", False)))
        return real(query, key, value, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    stacked_gqa_attention(Layer(), *qkv(2, 1, 9), None, scaling=0.25)
    assert calls == [((2, 2, 3, 16), False)]  # 6 query heads as 3 rows of each of 2 key/value heads


@pytest.mark.parametrize("queries,masked", [(4, False), (1, True)])
def test_every_other_call_is_transformers_sdpa_to_the_bit(queries, masked):
    """A prefill (several query rows) or a padded batch (a mask): sdpa's own code, unchanged."""
    q, k, v = qkv(2, queries, 9)
    mask = torch.ones(2, 1, queries, 9, dtype=torch.bool) if masked else None
    if masked:
        mask[0, ..., :3] = False  # row 0 left-padded
    mine, _ = stacked_gqa_attention(Layer(), q, k, v, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(Layer(), q, k, v, mask, scaling=0.25)
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize("extra", [{"dropout": 0.5}, {"position_bias": torch.zeros(1, 6, 1, 9)}, {"softcap": 30.0}])
def test_a_call_with_what_only_sdpa_handles_goes_to_sdpa(monkeypatch, extra):
    """Dropout, a position bias, a softcap: the fast path would drop them; sdpa's code decides."""
    calls = []
    monkeypatch.setattr("safety_demo.models.attention.sdpa_attention_forward",
                        lambda *args, **kwargs: calls.append(kwargs) or ("sdpa", None))
    assert stacked_gqa_attention(Layer(), *qkv(1, 1, 9), None, scaling=0.25, **extra)[0] == "sdpa"
    assert calls and all(calls[0][k] is v for k, v in extra.items())
    assert stacked_gqa_attention(Layer(), *qkv(1, 1, 9), None, scaling=0.25)[0].shape == (1, 1, 6, 16)  # without them: the fast path


def test_only_a_model_on_the_cpu_using_sdpa_is_switched():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    with torch.device("meta"):  # weights elsewhere than the CPU (as on a GPU)
        elsewhere = Qwen2ForCausalLM(config)
    assert not use_stacked_gqa(elsewhere) and elsewhere.config._attn_implementation == "sdpa"
    eager = Qwen2ForCausalLM(Qwen2Config(**{**config.to_dict(), "attn_implementation": "eager"}))
    assert not use_stacked_gqa(eager) and eager.config._attn_implementation == "eager"
    here = Qwen2ForCausalLM(config)
    assert use_stacked_gqa(here) and here.config._attn_implementation == NAME


def test_the_builtin_model_decodes_the_same_tokens_with_it():
    """The built-in LM (SmolLM2: 9 query heads on 3 key/value heads) is switched at load; in float32
    its greedy answer is the one transformers' sdpa gives."""
    from safety_demo.models.builtin.adapter import BuiltinAdapter

    try:
        adapter = BuiltinAdapter("fast", dtype=torch.float32)
    except ModelLoadError as e:
        pytest.skip(f"built-in 'fast' weights unavailable: {e}")
    assert adapter.stacked_gqa and adapter.model.config._attn_implementation == NAME
    request = Request(Image.new("RGB", (224, 224), "orange"), "What is this?")

    def greedy() -> tuple[list[int], torch.Tensor]:
        out, tokens, logits = adapter.prefill([request]), [], []
        for _ in range(12):
            token = out.logits.argmax(-1)
            tokens.append(int(token))
            out = adapter.step(token, out.state)
            logits.append(out.logits)
        return tokens, torch.stack(logits)

    stacked = greedy()
    adapter.model.set_attn_implementation("sdpa")
    plain = greedy()
    assert stacked[0] == plain[0]
    torch.testing.assert_close(stacked[1], plain[1], atol=1e-4, rtol=1e-4)
