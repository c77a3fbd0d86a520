"""Plumbing tests: HFAdapter on a tiny random model of every supported family.

Tiny random models prove the adapter runs on each family's real transformers classes
(processor, vision tower, M-RoPE, KV cache, re-indexing). They say nothing about quality:
no test here looks at what the model writes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from safety_demo.inputs import add_gaussian_noise
from safety_demo.models.base import ForwardOut, Request
from safety_demo.models.hf import PLACEHOLDER_LOGIT, HFAdapter
from safety_demo.models.tiny import TINY_FAMILIES, load_tiny

ATOL = 1e-4  # float32 cached-vs-recomputed agreement; logits here have std ~0.15
N_STEPS = 6


@pytest.fixture(scope="module", params=list(TINY_FAMILIES))
def tiny(request) -> HFAdapter:
    return load_tiny(request.param)


def _image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _noised(image: Image.Image, sigma: float = 0.1, seed: int = 1) -> Image.Image:
    """SafeCoDe's noised copy, made by the same function the method uses."""
    return add_gaussian_noise(image, sigma, seed)


def _greedy(out: ForwardOut) -> torch.Tensor:
    return out.logits.argmax(-1)  # [B]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return torch.allclose(a, b, atol=atol, rtol=0.0)


REQ = Request(_image(0), "Describe the image.")


def test_plumbing_shapes_and_head(tiny: HFAdapter):
    out = tiny.prefill([REQ])
    vocab = tiny.model.config.get_text_config(decoder=True).vocab_size
    assert out.logits.shape == (1, vocab) and out.logits.dtype == torch.float32
    assert out.hidden.shape == (1, tiny.hidden_size) and out.hidden.dtype == torch.float32
    assert out.state.batch_size == 1
    # the LM head applied to the returned hidden state gives the returned logits
    assert _close(tiny.logits_from_hidden(out.hidden), out.logits)
    # image placeholders can never be generated (re-feeding one would break the next prefill)
    assert tiny.placeholder_ids
    assert (out.logits[:, tiny.placeholder_ids] == PLACEHOLDER_LOGIT).all()
    assert tiny.eos_token_ids and all(0 <= i < vocab for i in tiny.eos_token_ids)
    out.logits.add_(0.0)  # ordinary tensors: callers may edit them in place
    out.hidden.add_(0.0)


def test_plumbing_tokenizer_helpers(tiny: HFAdapter):
    ids = tiny.encode_text("I'm sorry")
    assert ids and tiny.decode(ids) == "I'm sorry"
    assert "".join(tiny.token_texts(ids)) == "I'm sorry"


def test_token_texts_are_decoded_once_per_id(tiny: HFAdapter, monkeypatch):
    """The engine asks for every step's candidates: an id already seen is not decoded again."""
    ids = tiny.encode_text("sorry, sorry")
    first = tiny.token_texts(ids)
    calls = []
    real = tiny.tokenizer.decode
    monkeypatch.setattr(tiny.tokenizer, "decode", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert tiny.token_texts(ids) == first and calls == []
    new = [i for i in range(50) if i not in ids][:2]
    assert tiny.token_texts(new + ids[:1]) == [real([i], skip_special_tokens=False) for i in new] + first[:1]
    assert len(calls) == 2  # the two new ids, once each


def test_plumbing_different_image_changes_logits(tiny: HFAdapter):
    a = tiny.prefill([REQ]).logits
    b = tiny.prefill([Request(_image(7), REQ.prompt)]).logits
    assert (a - b).abs().max() > 1e-2


def test_plumbing_noised_image_changes_logits(tiny: HFAdapter):
    a = tiny.prefill([REQ]).logits
    again = tiny.prefill([REQ]).logits
    noised = tiny.prefill([Request(_noised(REQ.image), REQ.prompt)]).logits
    delta = (a - noised).abs().max()
    assert delta > 1e-3  # measurable: ~1e-2 seen on every family
    assert delta > 100 * (a - again).abs().max()  # and far above run-to-run noise


def test_plumbing_cached_decode_matches_recompute(tiny: HFAdapter):
    out = tiny.prefill([REQ])
    generated: list[int] = []
    for _ in range(N_STEPS):
        token = _greedy(out)  # [1]
        generated.append(int(token))
        out = tiny.step(token, out.state)  # cached: one new token on top of the KV cache
        full = tiny.prefill([REQ], [generated])  # recompute: prompt + everything generated so far
        assert _close(out.logits, full.logits), f"step {len(generated)} differs"
        assert _close(out.hidden, full.hidden, atol=1e-3)
    assert out.state.attention_mask.shape[1] == full.state.attention_mask.shape[1]


def test_plumbing_left_padded_batch_matches_single_rows(tiny: HFAdapter):
    rows = [
        Request(_image(3, (64, 48)), "Hi"),
        Request(_image(4, (40, 72)), "What is shown in this picture, in detail?"),
    ]
    batch = tiny.prefill(rows)
    mask = batch.state.attention_mask
    assert (mask[:, 0] == 0).any(), "expected one row to be left-padded"
    singles = [tiny.prefill([r]) for r in rows]
    for i, single in enumerate(singles):
        assert _close(batch.logits[i], single.logits[0]), f"row {i} prefill differs"
    # decode both rows together for a few tokens, each row alone alongside: still equal
    for step in range(3):
        tokens = torch.tensor([int(_greedy(s)) for s in singles])
        batch = tiny.step(tokens, batch.state)
        singles = [tiny.step(tokens[i : i + 1], s.state) for i, s in enumerate(singles)]
        for i, single in enumerate(singles):
            assert _close(batch.logits[i], single.logits[0]), f"row {i} step {step} differs"


def test_plumbing_a_padded_row_kept_alone_loses_its_padding_and_decodes_the_same(tiny: HFAdapter):
    """SafeCoDe's real row beside a longer noised row, then alone: the padding columns go with
    the longer row (no mask, so attention's fast path), and the answer stays the row's own."""
    short, long = Request(_image(3, (64, 48)), "Hi"), Request(_image(4, (40, 72)), "What is shown in this picture, in detail?")
    batch = tiny.prefill([short, long])
    single = tiny.prefill([short])
    padded = int((batch.state.attention_mask[0] == 0).sum())
    assert padded > 0, "expected the short row to be left-padded"
    width = batch.state.attention_mask.shape[1]
    kept = batch.index_select([0])
    if any(getattr(layer, "is_sliding", False) for layer in kept.state.cache.layers):
        assert kept.state.attention_mask.shape[1] == width  # a sliding window's cache is left as it is
    else:
        width = single.state.attention_mask.shape[1]
        assert kept.state.attention_mask.shape[1] == width and bool(kept.state.attention_mask.all())
        assert all(layer.keys.shape[-2] == width for layer in kept.state.cache.layers)
    for step in range(3):
        token = _greedy(single)
        kept, single = tiny.step(token, kept.state), tiny.step(token, single.state)
        assert _close(kept.logits, single.logits), f"step {step} differs"


def test_plumbing_reindexed_candidates_match_single_steps(tiny: HFAdapter):
    """Candidate reranking: repeat row 0 k times, step k different tokens, keep one row."""
    out = tiny.prefill([REQ])
    candidates = out.logits[0].topk(3).indices  # [3] three different tokens
    branched = tiny.step(candidates, out.state.index_select([0, 0, 0]))
    for j, token in enumerate(candidates):
        alone = tiny.step(token[None], tiny.prefill([REQ]).state)
        assert _close(branched.logits[j], alone.logits[0]), f"candidate {j} differs"
        assert _close(branched.hidden[j], alone.hidden[0], atol=1e-3)
    # keep the middle candidate, then decode on: matches a full recompute
    kept = branched.index_select([1])
    generated = [int(candidates[1])]
    for _ in range(2):
        token = _greedy(kept)
        generated.append(int(token))
        kept = tiny.step(token, kept.state)
        assert _close(kept.logits, tiny.prefill([REQ], [generated]).logits)


def test_plumbing_deterministic(tiny: HFAdapter):
    first = tiny.prefill([REQ])
    second = tiny.prefill([REQ])
    assert torch.equal(first.logits, second.logits) and torch.equal(first.hidden, second.hidden)
    token = _greedy(first)
    assert torch.equal(tiny.step(token, first.state).logits, tiny.step(token, second.state).logits)
    rebuilt = load_tiny(tiny.name.removeprefix("tiny-"))  # same seed, same weights
    assert torch.equal(rebuilt.prefill([REQ]).logits, first.logits)


def test_load_tiny_rejects_unknown_family():
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        load_tiny("nope")


def test_plumbing_prompt_has_one_bos_and_left_padding(tiny: HFAdapter):
    rows = [REQ, Request(_image(5), "A much longer prompt than the first one.")]
    batch = tiny.encode(rows)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[0, 0] == 0)  # left padding
    bos = tiny.tokenizer.bos_token_id
    if bos is not None and bos not in (tiny.tokenizer.pad_token_id, *tiny.eos_token_ids):
        assert ((ids == bos) & mask.bool()).sum(-1).le(1).all(), "BOS written twice"
