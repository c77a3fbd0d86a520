"""Any Hugging Face VLM behind `VLMAdapter`: named presets, an operator allow-list, one adapter.

The adapter speaks only `AutoProcessor` + `AutoModelForImageTextToText` (safetensors, never
`trust_remote_code`). What differs between families is handled here, once:

- the chat template and where image tokens sit: the processor's own `apply_chat_template`;
- extra per-token tensors (`mm_token_type_ids` for Qwen, `token_type_ids` for Gemma 3): kept
  aligned with `input_ids` when continuations are appended and rows are re-padded;
- positions: every forward gets explicit `position_ids` counted over real (unpadded) tokens.
  M-RoPE families (Qwen2.5-VL, Qwen3-VL) get 3-D positions from the model's own
  `get_rope_index` at prefill; their per-row rope delta lives in `DecodeState.extras`, so a
  re-indexed batch (a row repeated k times, one row kept) stays correct. The model-level
  `rope_deltas` attribute is never read.
- placement: one device, or the layers split over several GPUs by accelerate's `device_map`
  ("auto" when more than one GPU is visible, or `SAFETY_DEMO_DEVICE_MAP`, with an optional
  `SAFETY_DEMO_MAX_MEMORY`). A split model takes its inputs on the device of its input
  embeddings; logits and hidden states come back there, where the policies read them.

Example (needs the weights on disk or the Hub):

    >>> adapter = load_hf("qwen2.5-vl-3b")
    >>> out = adapter.prefill([Request(image, "What is in this image?")])
    >>> out = adapter.step(out.logits.argmax(-1), out.state)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..inputs import shown
from .base import DecodeState, ForwardOut, ModelLoadError, Request, VLMAdapter
from .attention import use_stacked_gqa
from .packed import pack_linears

ALLOW_ENV = "SAFETY_DEMO_ALLOWED_MODELS"  # comma-separated repo ids allowed beyond the presets
DEVICE_MAP_ENV = "SAFETY_DEMO_DEVICE_MAP"  # "auto", "balanced", "sequential": split the layers over the GPUs
MAX_MEMORY_ENV = "SAFETY_DEMO_MAX_MEMORY"  # e.g. "0=20GiB,1=20GiB,cpu=64GiB": what each device may hold

# A generated id equal to an image/video placeholder would break the next prefill (the model
# counts placeholders against image features), so those logits are pinned to this finite
# value: probability 0 in practice, and still safe to subtract (SafeCoDe's z - a*z~).
PLACEHOLDER_LOGIT = -1.0e4

_PLACEHOLDER_ATTRS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")


@dataclass
class Preset:
    """One named model the app offers without an allow-list entry."""

    repo_id: str  # Hugging Face Hub repo id
    family: str  # transformers `model_type` of the checkpoint's config.json
    description: str  # one line for the UI picker
    min_vram_gb: float  # rough bf16 need (weights + a short KV cache), for the UI and docs
    supported: bool  # transformers installed here has the config and image-text-to-text class
    note: str = ""  # caveats: gated repo, processor needs torchvision, ...


def family_supported(family: str) -> bool:
    """Whether this transformers has `family`'s config class and an image-text-to-text model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        AutoConfig.for_model(family)
    except (KeyError, ValueError):
        return False
    return family in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


_QWEN = "its video processor needs torchvision; without it the processor is built without one"
_SMOLVLM = "SmolVLM (v1) checkpoints use the Idefics3 architecture"
_SMOL = "HuggingFaceTB/SmolVLM"

PRESETS: dict[str, Preset] = {
    name: Preset(repo_id, family, description, vram, family_supported(family), note)
    for name, repo_id, family, description, vram, note in [
        # name, repo id, family, description, min VRAM (GB, bf16), note
        ("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "Qwen2.5-VL 3B", 8, _QWEN),
        ("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "Qwen2.5-VL 7B", 18, _QWEN),
        ("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl", "Qwen3-VL 2B", 6, _QWEN),
        ("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl", "Qwen3-VL 4B", 10, _QWEN),
        ("qwen3-vl-8b", "Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl", "Qwen3-VL 8B", 20, _QWEN),
        ("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "llava", "LLaVA-1.5 7B (Vicuna)", 16, ""),
        (
            "llava-next-7b",
            "llava-hf/llava-v1.6-vicuna-7b-hf",
            "llava_next",
            "LLaVA-NeXT (1.6) 7B (Vicuna)",
            18,
            "any-resolution tiling: up to 5 x 576 image tokens per image",
        ),
        ("smolvlm-256m", f"{_SMOL}-256M-Instruct", "idefics3", "SmolVLM 256M", 1.5, _SMOLVLM),
        ("smolvlm-500m", f"{_SMOL}-500M-Instruct", "idefics3", "SmolVLM 500M", 2.5, _SMOLVLM),
        ("smolvlm-2.2b", f"{_SMOL}-Instruct", "idefics3", "SmolVLM 2.2B", 7, _SMOLVLM),
        (
            "gemma-3-4b",
            "google/gemma-3-4b-it",
            "gemma3",
            "Gemma 3 4B",
            10,
            "gated on the Hub: accept its licence there and set HF_TOKEN",
        ),
    ]
}


def allowed_repo_ids() -> list[str]:
    """Repo ids the operator allows beyond the presets (env `SAFETY_DEMO_ALLOWED_MODELS`)."""
    return [r.strip() for r in os.environ.get(ALLOW_ENV, "").split(",") if r.strip()]


def resolve_repo_id(name_or_repo_id: str) -> tuple[str, Preset | None]:
    """Map a preset name or repo id to (repo_id, preset or None); refuse repos not allowed."""
    if name_or_repo_id in PRESETS:
        return PRESETS[name_or_repo_id].repo_id, PRESETS[name_or_repo_id]
    for preset in PRESETS.values():
        if preset.repo_id == name_or_repo_id:
            return preset.repo_id, preset
    if name_or_repo_id in allowed_repo_ids():
        return name_or_repo_id, None
    raise ModelLoadError(
        f"{shown(name_or_repo_id)} is neither a preset ({', '.join(PRESETS)}) nor allowed by the "
        f"operator: add it to the comma-separated environment variable {ALLOW_ENV} to load it."
    )


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """ "0=20GiB,1=20GiB,cpu=64GiB" -> {0: "20GiB", 1: "20GiB", "cpu": "64GiB"} (None when empty)."""
    if not text or not text.strip():
        return None
    out: dict[int | str, str] = {}
    for part in text.split(","):
        device, _, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not device or not size or not (device.isdigit() or device in ("cpu", "disk", "mps")):
            raise ModelLoadError(f"{MAX_MEMORY_ENV}: {shown(part)} is not DEVICE=SIZE (e.g. 0=20GiB,1=20GiB,cpu=64GiB)")
        out[int(device) if device.isdigit() else device] = size
    return out


def placement(
    device: torch.device, device_map: str | dict | None = None, max_memory: dict | None = None, offload_folder: str | None = None,
) -> dict:
    """`from_pretrained`'s placement: the layers split by accelerate (`device_map`, asked for or
    "auto" when more than one GPU is visible), straight onto one GPU, or nothing (load on CPU)."""
    from transformers.utils import is_accelerate_available

    device_map = device_map or os.environ.get(DEVICE_MAP_ENV) or ("auto" if torch.cuda.device_count() > 1 else None)
    max_memory = max_memory or parse_max_memory(os.environ.get(MAX_MEMORY_ENV))
    if device_map is not None or max_memory is not None:
        if not is_accelerate_available():
            raise ModelLoadError("splitting a model over devices needs accelerate (pip install accelerate)")
        split = {"device_map": device_map or "auto"}
        split.update({"max_memory": max_memory} if max_memory else {})
        split.update({"offload_folder": offload_folder} if offload_folder else {})
        return split
    # straight onto the GPU where accelerate is installed; otherwise load, then move
    return {"device_map": str(device)} if device.type != "cpu" and is_accelerate_available() else {}


def load_hf(
    name_or_repo_id: str,
    *,
    device: str | torch.device | None = None,
    revision: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
) -> HFAdapter:
    """Load a preset or an allow-listed repo: bf16 on CUDA, float32 on CPU; with `device_map`
    (or several GPUs visible) its layers are split over the devices by accelerate.

    Every failure (not allowed, no network, missing or gated files, out of memory, not a VLM)
    raises ModelLoadError with a one-line reason.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    repo_id, preset = resolve_repo_id(name_or_repo_id)
    if preset is not None and not preset.supported:
        raise ModelLoadError(
            f"{repo_id}: this transformers has no {preset.family!r} image-text-to-text model"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    placed = placement(device, device_map, max_memory, offload_folder)
    split = placed.get("device_map") not in (None, str(device))
    try:
        # config.json first: one small file says whether the repo can be reached at all
        config = AutoConfig.from_pretrained(repo_id, revision=revision, trust_remote_code=False)
        if not family_supported(config.model_type):
            raise ModelLoadError(
                f"{repo_id} is a {config.model_type!r} model: not an image-text-to-text model"
            )
        processor = _load_processor(repo_id, revision)
        model = AutoModelForImageTextToText.from_pretrained(
            repo_id,
            config=config,
            revision=revision,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            **placed,
        )
        if not split:  # a split model stays where accelerate put each layer
            model = model.to(device)
    except ModelLoadError:
        raise
    except torch.cuda.OutOfMemoryError as e:
        need = f" (needs about {preset.min_vram_gb:g} GB)" if preset else ""
        raise ModelLoadError(f"{repo_id}: out of GPU memory{need}: {_first_line(e)}") from e
    except Exception as e:  # no network, missing files, gated repo, no safetensors ...
        reason = f"{type(e).__name__}: {_first_line(e)}"
        raise ModelLoadError(f"could not load {repo_id}: {reason}") from e
    model_id = repo_id if revision is None else f"{repo_id}@{revision}"
    description = preset.description if preset else repo_id
    return HFAdapter(
        model, processor, name=name_or_repo_id, model_id=model_id, description=description
    )


def _load_processor(repo_id: str, revision: str | None):
    """`AutoProcessor`; without torchvision, the family's processor minus its video processor."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    try:
        return AutoProcessor.from_pretrained(repo_id, revision=revision, trust_remote_code=False)
    except (ImportError, OSError) as e:
        # Qwen2.5-VL / Qwen3-VL / SmolVLM2 declare a video processor, and it needs torchvision
        about_video = any(word in str(e).lower() for word in ("torchvision", "video"))
        if is_torchvision_available() or not about_video:
            raise
        try:
            return _processor_without_video(repo_id, revision)
        except Exception:
            pass
        raise  # the AutoProcessor error, which says more than the fallback's


def images_only(processor_cls: type) -> type:
    """`processor_cls` minus its video sub-processor (which needs torchvision); images unchanged.

    transformers type-checks every declared sub-processor, even a `None` one, so the class
    itself must stop declaring it.
    """
    attributes = [a for a in processor_cls.get_attributes() if "video" not in a]
    if attributes == processor_cls.get_attributes():
        return processor_cls
    get_attributes = classmethod(lambda cls: list(attributes))
    return type(processor_cls.__name__, (processor_cls,), {"get_attributes": get_attributes})


def _processor_without_video(repo_id: str, revision: str | None):
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = AutoConfig.from_pretrained(repo_id, revision=revision, trust_remote_code=False)
    processor_cls = images_only(getattr(transformers, PROCESSOR_MAPPING_NAMES[config.model_type]))
    tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision, trust_remote_code=False)
    image_processor = AutoImageProcessor.from_pretrained(repo_id, revision=revision, backend="pil")
    chat_template = _hub_chat_template(repo_id, revision) or tokenizer.chat_template
    return processor_cls(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
    )


def _hub_chat_template(repo_id: str, revision: str | None) -> str | None:
    """The processor's chat template (chat_template.jinja or .json), if the repo has one."""
    import json

    from transformers.utils import cached_file

    for filename in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(
            repo_id, filename, revision=revision, _raise_exceptions_for_missing_entries=False
        )
        if path:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            return json.loads(text)["chat_template"] if filename.endswith(".json") else text
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


class HFAdapter(VLMAdapter):
    """A transformers image-text-to-text model + its processor, seen as prefill / step / LM head.

    Built by `load_hf`, or directly from an already-built pair (the tiny test models do this).
    It keeps no per-request state: one adapter can serve interleaved requests.
    """

    def __init__(self, model, processor, *, name: str, model_id: str, description: str = ""):
        self.model = model.eval()
        self.packed = pack_linears(model)  # on the CPU: weights laid out for oneDNN once (models/packed.py)
        self.stacked_gqa = use_stacked_gqa(model)  # on the CPU: a decode row's attention on the fast kernel (models/attention.py)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # left padding: every row ends at the same column, so [:, -1] is each row's last token
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name
        self.model_id = model_id
        self.description = description or name
        first = next(model.parameters())
        self.device, self.dtype = input_device(model), first.dtype
        self.eos_token_ids = frozenset(_eos_ids(model, self.tokenizer))
        head = model.get_output_embeddings()
        self._lm_head = head if head is not None else model.lm_head
        # image/video placeholder ids: never generated (their logits are PLACEHOLDER_LOGIT)
        self.placeholder_ids = sorted(_placeholder_ids(model.config, processor))
        inner = getattr(model, "model", model)
        self._rope_index = getattr(inner, "get_rope_index", None)  # M-RoPE families only

    # -- VLMAdapter -------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config(decoder=True).hidden_size)

    def encode(self, requests: Sequence[Request]) -> dict:
        """The processor's left-padded batch: input_ids, attention_mask, pixel_values, ..."""
        text_only = [r.image is None for r in requests]
        if any(text_only) and not all(text_only):
            raise ValueError("A batch must be all image rows or all text-only rows.")
        texts = [
            self.processor.apply_chat_template(
                _messages(r.prompt, with_image=not text_only[0], system=r.system), add_generation_prompt=True, tokenize=False
            )
            for r in requests
        ]
        images = None if text_only[0] else [[r.image.convert("RGB")] for r in requests]
        # a template that writes BOS itself (Gemma 3) must not get a second one
        bos = self.tokenizer.bos_token
        add_special_tokens = not (bos is not None and texts[0].startswith(bos))
        return self.processor(
            text=texts,
            images=images,
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special_tokens,
        )

    def prefill(
        self,
        requests: Sequence[Request],
        continuations: Sequence[Sequence[int]] | None = None,
    ) -> ForwardOut:
        batch = self.encode(requests)
        if continuations is not None:
            if len(continuations) != len(requests):
                raise ValueError(f"{len(continuations)} continuations for {len(requests)} rows")
            batch = _append_continuations(batch, continuations, self.tokenizer.pad_token_id)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if "pixel_values" in batch and batch["pixel_values"].is_floating_point():
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        mask = batch["attention_mask"]  # [B, T]
        extras: dict[str, torch.Tensor] = {}
        if self._rope_index is not None:
            # M-RoPE, by the model's own rule: positions [3, B, T] and per-row deltas [B, 1]
            # (delta = a row's next position - its number of real tokens)
            position_ids, deltas = self._rope_index(
                batch["input_ids"],
                mm_token_type_ids=batch.get("mm_token_type_ids", torch.zeros_like(batch["input_ids"])),
                image_grid_thw=batch.get("image_grid_thw"),
                attention_mask=mask,
            )
            extras["rope_deltas"] = deltas.reshape(-1, 1).to(self.device)
        else:
            position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T], pads at 0
        with torch.no_grad():  # not inference_mode: callers may edit returned tensors in place
            out = self.model(
                **batch,
                position_ids=position_ids,
                past_key_values=_new_cache(self.model.config),
                use_cache=True,
                output_hidden_states=[-1],  # keep only the final layer (after the final norm)
                logits_to_keep=1,  # only the last position's logits: [B, 1, V]
            )
        state = DecodeState(cache=out.past_key_values, attention_mask=mask, extras=extras)
        return self._forward_out(out, state)

    def step(self, token_ids: torch.Tensor, state: DecodeState) -> ForwardOut:
        B = state.batch_size
        token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(-1)
        if token_ids.shape[0] != B:
            raise ValueError(f"step got {token_ids.shape[0]} tokens for {B} rows")
        mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(B, 1)], 1)  # [B, T+1]
        position_ids = mask.long().sum(-1, keepdim=True) - 1  # [B, 1] real tokens before this one
        if "rope_deltas" in state.extras:  # M-RoPE: text positions are shifted by the row's delta
            position_ids = (position_ids + state.extras["rope_deltas"]).expand(3, B, 1)
        with torch.no_grad():
            out = self.model(
                input_ids=token_ids[:, None],
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=state.cache,
                use_cache=True,
                output_hidden_states=[-1],
            )
        extras = dict(state.extras)
        return self._forward_out(out, DecodeState(out.past_key_values, mask, extras))

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self._lm_head(hidden.to(self.device, self._lm_head.weight.dtype))
        return self._finish_logits(logits)

    # -- internals ----------------------------------------------------------------------------

    def _forward_out(self, out, state: DecodeState) -> ForwardOut:
        hidden = out.hidden_states[-1][:, -1].float().to(self.device)  # [B, D] after the final norm
        return ForwardOut(logits=self._finish_logits(out.logits[:, -1]), hidden=hidden, state=state)

    def _finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().to(self.device)  # [B, V], back from the last device of a split model
        if self.placeholder_ids:
            logits = logits.clone()
            logits[:, self.placeholder_ids] = PLACEHOLDER_LOGIT
        return logits


def input_device(model) -> torch.device:
    """Where a model takes its inputs: its one device, or, split by accelerate, the first GPU of
    its map (offloaded weights sit on "meta" and run on the CPU)."""
    where = getattr(model, "hf_device_map", None)
    if where and len(set(where.values())) > 1:
        devices = [torch.device("cpu") if d in ("cpu", "disk") else torch.device(f"cuda:{d}" if isinstance(d, int) else d) for d in where.values()]
        accelerators = sorted((d for d in devices if d.type != "cpu"), key=lambda d: (d.type, d.index or 0))
        return accelerators[0] if accelerators else torch.device("cpu")
    weight = model.get_input_embeddings().weight
    return weight.device if weight.device.type != "meta" else torch.device("cpu")


def _messages(prompt: str, with_image: bool = True, system: str | None = None) -> list[dict]:
    image = [{"type": "image"}] if with_image else []
    turns = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    return turns + [{"role": "user", "content": [*image, {"type": "text", "text": prompt}]}]


def _new_cache(config):
    from transformers import DynamicCache

    return DynamicCache(config=config)


def _append_continuations(batch, continuations: Sequence[Sequence[int]], pad_id: int) -> dict:
    """Append each row's generated ids after its prompt and left-pad the rows again.

    Every [B, T] tensor that runs along the tokens (input_ids, attention_mask, token type ids)
    is rebuilt: continuation positions get the token id, mask 1, type 0 (text).
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    B, T = input_ids.shape
    along_tokens = [k for k, v in batch.items() if torch.is_tensor(v) and v.shape == (B, T)]
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in along_tokens}
    for i, cont in enumerate(continuations):
        real = mask[i].bool()
        cont_ids = torch.as_tensor(list(cont), dtype=torch.long)
        for k in along_tokens:
            v = batch[k]
            fill = 1 if k == "attention_mask" else 0
            tail = cont_ids if k == "input_ids" else torch.full_like(cont_ids, fill)
            rows[k].append(torch.cat([v[i][real], tail.to(v.dtype)]))
    width = max(len(r) for r in rows["input_ids"])
    out = dict(batch)
    for k, rs in rows.items():
        pad = pad_id if k == "input_ids" else 0
        out[k] = torch.stack([torch.cat([r.new_full((width - len(r),), pad), r]) for r in rs])
    return out


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _placeholder_ids(config, processor) -> set[int]:
    ids = {getattr(config, a, None) for a in _PLACEHOLDER_ATTRS}
    ids.add(getattr(processor, "image_token_id", None))
    vocab = config.get_text_config(decoder=True).vocab_size
    return {int(i) for i in ids if isinstance(i, int) and 0 <= i < vocab}
