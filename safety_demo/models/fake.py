"""A tiny, fully offline stand-in model for fast tests (like lm-eval's DummyLM).

A randomly initialised 2-layer Qwen2 LM over a word-level vocabulary, with an "image
encoder" that maps pixel statistics through a fixed random projection into two soft tokens.
It proves plumbing and policy logic in milliseconds; it says nothing about quality.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import DynamicCache, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .base import DecodeState, ForwardOut, Request, VLMAdapter

WORDS = (
    "<pad> <eos> <image> I I'm sorry , but can't cannot help with that . As an AI apologize unable "
    "It is not appropriate Sure ! Here are the steps : 1 2 3 to make a bomb cake drugs image shows "
    "list cat dog photo of safe unsafe the and you how what describe caption tell me about"
).split()


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("[,.!:]"), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>")


class FakeAdapter(VLMAdapter):
    """Seeded tiny LM + pixel-statistics 'vision': deterministic, CPU, milliseconds."""

    description = "Fake tiny model for tests (random weights, word vocabulary)"

    def __init__(self, seed: int = 0, hidden: int = 32) -> None:
        torch.manual_seed(seed)
        self.tokenizer = _tokenizer()
        config = Qwen2Config(
            vocab_size=len(WORDS), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        )
        self.model = Qwen2ForCausalLM(config).eval()
        self.vision = torch.nn.Linear(8, 2 * hidden)  # pixel statistics -> two soft tokens
        self.name = self.model_id = f"fake-{seed}"
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.eos_token_ids = frozenset({self.tokenizer.eos_token_id})

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def image_embeddings(self, image: Image.Image) -> torch.Tensor:
        """[2, D]: means, spreads and darkness of the pixels, projected."""
        x = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        gray = x.mean(-1)
        stats = np.array([*x.mean((0, 1)), *x.std((0, 1)), (gray < 0.5).mean(), gray.std()], dtype=np.float32)
        with torch.no_grad():
            return self.vision(torch.from_numpy(stats) * 4.0).view(2, -1)

    def _row(self, request: Request, continuation: Sequence[int]) -> torch.Tensor:
        embed = self.model.get_input_embeddings()
        ids = self.encode_text(f"<image> {request.prompt}")
        with torch.no_grad():
            vision = self.image_embeddings(request.image) if request.image is not None else torch.zeros(0, self.hidden_size)
            parts = [embed(torch.tensor(ids[:1])), vision, embed(torch.tensor(ids[1:] + list(continuation), dtype=torch.long))]
        return torch.cat(parts)  # [T, D]

    @torch.no_grad()
    def prefill(self, requests: Sequence[Request], continuations: Sequence[Sequence[int]] | None = None) -> ForwardOut:
        continuations = continuations or [[] for _ in requests]
        rows = [self._row(r, c) for r, c in zip(requests, continuations)]
        T = max(len(r) for r in rows)
        embeds = torch.zeros(len(rows), T, self.hidden_size)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row ends at position T-1
            embeds[i, T - len(r):] = r
            mask[i, T - len(r):] = 1
        cache = DynamicCache(config=self.model.config)
        return self._forward(dict(inputs_embeds=embeds), DecodeState(cache, mask))

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: DecodeState) -> ForwardOut:
        mask = torch.cat([state.attention_mask, torch.ones(len(token_ids), 1, dtype=torch.long)], dim=1)
        return self._forward(dict(input_ids=token_ids.view(-1, 1)), DecodeState(state.cache, mask, state.extras))

    def _forward(self, inputs: dict, state: DecodeState) -> ForwardOut:
        position_ids = (state.attention_mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0
        T_new = next(iter(inputs.values())).shape[1]
        out = self.model(
            **inputs, attention_mask=state.attention_mask, position_ids=position_ids[:, -T_new:],
            past_key_values=state.cache, use_cache=True, output_hidden_states=True,
        )
        return ForwardOut(out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float(), DecodeState(out.past_key_values, state.attention_mask, state.extras))

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.lm_head(hidden).float()

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(WORDS[i] for i in ids if WORDS[i] not in ("<pad>", "<eos>"))

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [WORDS[int(i)] for i in ids]
