"""The one interface every model family sits behind.

Decoding methods never branch on the family: they see rows of (image, prompt), next-token
logits, final-layer hidden states and an opaque `DecodeState` they can re-index (repeat a
row k times for candidates, keep one row after choosing). Family quirks (chat templates,
where image tokens sit, `pixel_values` / `image_grid_thw`, M-RoPE deltas) stay inside the
adapter.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image


class ModelLoadError(RuntimeError):
    """A model or one of its pieces cannot be loaded; the message says what to do."""


@dataclass
class Request:
    """One row to run: an RGB image and the user's prompt.

    `image=None` means a text-only turn (the SafeCoDe judge's verdict prompt); adapters
    then build the chat template without an image slot. `system` replaces the chat
    template's default system turn (the official SafeCoDe judge has its own).
    """

    image: Image.Image | None
    prompt: str
    system: str | None = None


@dataclass
class DecodeState:
    """What a model needs to continue B rows by one token.

    Re-indexing is the only operation decoding methods do on it: `index_select([0, 0, 0])`
    repeats row 0 three times (candidates on a shared prefix), `index_select([2])` keeps
    row 2 (the chosen candidate). The KV cache is re-indexed in place, so the state that
    was indexed must not be used afterwards.
    """

    cache: object  # transformers Cache, batch dim = B
    attention_mask: torch.Tensor  # [B, T] long, 1 = real token, 0 = left padding
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row tensors, dim 0 = B

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])

    def index_select(self, rows: torch.Tensor | Sequence[int]) -> "DecodeState":
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.attention_mask.device)
        self.cache.batch_select_indices(rows.to(_cache_device(self.cache, rows.device)))  # (CPU rows for a cache split over GPUs)
        kept = DecodeState(
            cache=self.cache,
            attention_mask=self.attention_mask[rows],
            extras={k: v[rows.to(v.device)] for k, v in self.extras.items()},
        )
        return kept.trim_padding()

    def trim_padding(self) -> "DecodeState":
        """Drop, in place, the columns that are padding in every row.

        Rows padded beside a longer row (SafeCoDe's real image beside its noised one, a lane beside
        a longer lane) keep that padding after the longer row leaves; without it a row decoding alone
        has no mask, and attention skips the columns and takes its fast kernel (`models/attention.py`).
        Positions are counted from the mask and the keys already carry theirs, so nothing else
        changes. Caches without plain per-layer keys and values (sliding windows) are left as they are.
        """
        real = (self.attention_mask != 0).any(0)  # [T] columns some row attends to
        if bool(real.all()):
            return self
        try:
            layers = _plain_layers(self.cache)
        except ValueError:
            return self
        if any(layer.keys.shape[-2] != real.shape[0] for layer in layers):
            return self  # a cache not laid out column for column with the mask
        columns = real.nonzero().squeeze(1)
        for layer in layers:
            index = columns.to(layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(-2, index), layer.values.index_select(-2, index)
        self.attention_mask = self.attention_mask[:, columns]
        return self

    def concat(self, other: "DecodeState") -> "DecodeState":
        """This state's rows, then `other`'s: rows that joined later (a lane arriving mid-decode).

        Both are left-padded, so the shorter one gets more left padding (mask 0, zero keys and
        values) and positions, counted from the mask, stay each row's own. Works on caches whose
        layers hold plain `keys` / `values` [B, H, T, d] (transformers' DynamicCache).
        """
        T, U = self.attention_mask.shape[1], other.attention_mask.shape[1]
        width = max(T, U)
        layers, others = getattr(self.cache, "layers", None), getattr(other.cache, "layers", None)
        if layers is None or others is None or len(layers) != len(others):
            raise ValueError("these caches cannot be joined: they have no matching per-layer keys and values")
        for mine, theirs in zip(layers, others):
            if getattr(mine, "is_sliding", False) or not isinstance(getattr(mine, "keys", None), torch.Tensor):
                raise ValueError(f"cache layers of type {type(mine).__name__} cannot be joined")
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys.to(mine.keys.device), width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values.to(mine.values.device), width, -2)])
        mask = torch.cat([_left_pad(self.attention_mask, width, -1), _left_pad(other.attention_mask.to(self.attention_mask.device), width, -1)])
        if set(self.extras) != set(other.extras):
            raise ValueError(f"states with different extras cannot be joined: {sorted(self.extras)} vs {sorted(other.extras)}")
        extras = {k: torch.cat([v, other.extras[k].to(v.device)]) for k, v in self.extras.items()}
        return DecodeState(cache=self.cache, attention_mask=mask, extras=extras)

    def copy_rows(self, rows: Sequence[int]) -> "DecodeState":
        """A new state holding copies of `rows`; this one is untouched (a lane's rows kept after
        it leaves the batch, so a branch can go on from any of its steps)."""
        layers = _plain_layers(self.cache)
        cache = copy.copy(self.cache)
        cache.layers = []
        for layer in layers:
            kept = copy.copy(layer)
            index = torch.as_tensor(list(rows), dtype=torch.long, device=layer.keys.device)
            kept.keys, kept.values = layer.keys[index].clone(), layer.values[index].clone()
            cache.layers.append(kept)
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.attention_mask.device)
        return DecodeState(cache, self.attention_mask[index].clone(), {k: v[index.to(v.device)].clone() for k, v in self.extras.items()})

    def drop_last(self, n: int) -> "DecodeState":
        """This state without its last `n` positions (the tokens after a branch point), in place."""
        if n > 0:
            for layer in _plain_layers(self.cache):
                layer.keys, layer.values = layer.keys[..., :-n, :], layer.values[..., :-n, :]
            self.attention_mask = self.attention_mask[:, :-n]
        return self


def _plain_layers(cache: object) -> list:
    """The cache's layers, each with plain `keys` / `values` [B, H, T, d]; else a clear error."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"a {type(cache).__name__} has no per-layer keys and values to copy or cut")
    for layer in layers:
        if getattr(layer, "is_sliding", False) or not isinstance(getattr(layer, "keys", None), torch.Tensor):
            raise ValueError(f"cache layers of type {type(layer).__name__} cannot be copied or cut")
    return list(layers)


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros on the left of `dim` up to `width` (padding: masked out, never attended)."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _cache_device(cache: object, default: torch.device) -> torch.device:
    """The device of the cache's keys; the CPU when its layers sit on several devices (a split
    model): CPU indices can index a tensor on any device."""
    layers = getattr(cache, "layers", None) or []
    devices = {k.device for k in (getattr(layer, "keys", None) for layer in layers) if isinstance(k, torch.Tensor) and k.numel()}
    if len(devices) == 1:
        return devices.pop()
    return torch.device("cpu") if devices else default


@dataclass
class ForwardOut:
    """Output of one forward over B rows, at each row's last position."""

    logits: torch.Tensor  # [B, V] float32 next-token logits
    hidden: torch.Tensor  # [B, D] float32 final-layer hidden state (after the final norm)
    state: DecodeState

    def index_select(self, rows: torch.Tensor | Sequence[int]) -> "ForwardOut":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return ForwardOut(
            logits=self.logits[rows.to(self.logits.device)],
            hidden=self.hidden[rows.to(self.hidden.device)],
            state=self.state.index_select(rows),
        )


class VLMAdapter(ABC):
    """A vision-language model seen as: prefill rows, then step them one token at a time."""

    name: str  # registry name or Hub repo id
    model_id: str  # stable id used to key probe files (repo id + revision, or builtin hash)
    tokenizer: object  # a transformers tokenizer: decode(), convert_ids_to_tokens()
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: frozenset[int]
    description: str = ""  # one line shown in the UI: what this model is

    @abstractmethod
    def prefill(
        self,
        requests: Sequence[Request],
        continuations: Sequence[Sequence[int]] | None = None,
    ) -> ForwardOut:
        """Run B rows' prompts (left-padded into one batch) and return their last positions.

        `continuations` appends already generated token ids to each row; a full recompute of
        a cached decode is `prefill(requests, [generated])`.
        """

    @abstractmethod
    def step(self, token_ids: torch.Tensor, state: DecodeState) -> ForwardOut:
        """Feed one new token per row (`token_ids` [B]) on top of `state`."""

    @abstractmethod
    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head: [B, D] final-layer hidden -> [B, V] float32 logits."""

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each id's text on its own (for per-token views); byte-level pieces made readable.
        Remembered per id: the engine asks for every step's candidates."""
        known: dict[int, str] = self.__dict__.setdefault("_token_texts", {})
        for i in ids:
            if int(i) not in known:
                known[int(i)] = self.tokenizer.decode([int(i)], skip_special_tokens=False)
        return [known[int(i)] for i in ids]

    def encode_text(self, text: str) -> list[int]:
        """Plain token ids of `text` (no special tokens): refusal phrases, forced prefixes."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        ...
