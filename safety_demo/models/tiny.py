"""Tiny random VLMs built offline from each family's real transformers classes. Plumbing only.

Tiny random models prove the adapter and engine run on the real classes; they say nothing
about quality. Each builder makes a seeded, randomly initialised model (2 text layers,
hidden 64, a 2-layer vision tower, images of a few dozen pixels) from the family's own
config and model classes, and a processor assembled without any download: a byte-level
tokenizer made with `tokenizers` that carries the family's special tokens, the family's PIL
image processor (no torchvision needed), the family's processor class and a chat template
written here in the family's style.

    >>> adapter = load_tiny("qwen2_5_vl")  # an HFAdapter; it writes noise, by design
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .hf import HFAdapter, images_only

SEED = 0  # every tiny model is the same on every run
TEXT = dict(  # text model of every family
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,  # head_dim 16
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
VISION = dict(hidden_size=32, intermediate_size=64)  # + 2 layers, 2 heads in every vision tower


# -- shared pieces -------------------------------------------------------------------------------


def _byte_tokenizer(
    specials: list[str],
    *,
    eos: str,
    pad: str,
    bos: str | None = None,
    add_bos: bool = False,
    named: dict[str, str] | None = None,
):
    """A byte-level tokenizer (one token per byte, no merges) plus `specials`, built offline.

    `add_bos` prepends `bos` to every encoded text, as Llama and Gemma tokenizers do. `named`
    registers special tokens as attributes (Gemma 3's processor reads `tokenizer.boi_token`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, backend.token_to_id(bos))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        extra_special_tokens=named or {},
    )


def _chat_template(*, start: str, turn: str, image: str, end: str, reply: str) -> str:
    """A Jinja chat template: `start`, then per message `turn` + content + `end`, then `reply`.

    `turn` may use `role`; image items become `image`, text items their text.
    """
    return (
        start + "{% for message in messages %}{% set role = message['role'] %}" + turn
        + "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}" + image
        + "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}" + end
        + "{% endfor %}{% if add_generation_prompt %}" + reply + "{% endif %}"
    )  # fmt: skip


def _ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _seeded(model_cls, config):
    """`model_cls(config)` with seeded random weights, in eval mode, float32.

    Some weights start at zero because a checkpoint always overwrites them (Gemma 3's
    `mm_input_projection_weight`); left at zero the image would never reach the text model,
    so every all-zero matrix gets random values too.
    """
    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2 and param.is_floating_point() and not param.any():
                param.normal_(0.0, 0.02)
    return model


def _adapter(model, processor, family: str, label: str) -> HFAdapter:
    description = (
        f"Tiny random {label}: plumbing only (real classes, random weights; "
        "says nothing about quality)"
    )
    return HFAdapter(
        model, processor, name=f"tiny-{family}", model_id=f"tiny/{family}", description=description
    )


def _llama_text(tokenizer) -> dict:
    return dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **TEXT,
    )


# -- Qwen2.5-VL and Qwen3-VL: M-RoPE, image_grid_thw, mm_token_type_ids ------------------------

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>"]
QWEN_SPECIALS += ["<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = _chat_template(
    start="",
    turn="<|im_start|>{{ role }}\n",
    image="<|vision_start|><|image_pad|><|vision_end|>",
    end="<|im_end|>\n",
    reply="<|im_start|>assistant\n",
)


def _qwen_parts(image_processor, processor_cls, **text_overrides):
    """Tokenizer, processor, and the config pieces both Qwen families share."""
    tokenizer = _byte_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    processor = images_only(processor_cls)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE
    )
    image, video, start, end = _ids(
        tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    text = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        # M-RoPE: the 8 rotary frequencies of a 16-wide head split over (time, height, width)
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        **TEXT,
    )
    text["rope_parameters"].update(text_overrides.pop("rope", {}))
    text.update(text_overrides)
    token_ids = dict(
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
    )
    return processor, text, token_ids


def tiny_qwen2_5_vl() -> HFAdapter:
    """Qwen2.5-VL: window-attention vision tower, ~56x56 images -> 4 merged tokens, M-RoPE."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    pixels = 56 * 56  # images are resized to about this many pixels, in multiples of 28
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=14, merge_size=2
    )
    processor, text, token_ids = _qwen_parts(image_processor, Qwen2_5_VLProcessor)
    vision = dict(
        depth=2,
        num_heads=2,
        out_hidden_size=TEXT["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],  # layer 0 windowed, layer 1 full attention
        **VISION,
    )
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
    model = _seeded(Qwen2_5_VLForConditionalGeneration, config)
    return _adapter(model, processor, "qwen2_5_vl", "Qwen2.5-VL")


def tiny_qwen3_vl() -> HFAdapter:
    """Qwen3-VL: DeepStack visual features added into early text layers, interleaved M-RoPE."""
    from transformers import (
        Qwen2VLImageProcessorPil,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )

    pixels = 64 * 64  # multiples of 32 (patch 16 x merge 2)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=16,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor, text, token_ids = _qwen_parts(
        image_processor, Qwen3VLProcessor, head_dim=16, rope={"mrope_interleaved": True}
    )
    vision = dict(
        depth=2,
        num_heads=2,
        out_hidden_size=TEXT["hidden_size"],
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=16,  # a 4x4 grid of learned positions, interpolated
        deepstack_visual_indexes=[0, 1],
        **VISION,
    )
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)
    model = _seeded(Qwen3VLForConditionalGeneration, config)
    return _adapter(model, processor, "qwen3_vl", "Qwen3-VL")


# -- LLaVA-1.5 and LLaVA-NeXT: CLIP tower + projector, <image> expanded by the processor --------

LLAVA_SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<image>"]
LLAVA_TEMPLATE = _chat_template(
    start="",
    turn="{{ role | upper }}: ",
    image="<image>\n",
    end=" ",
    reply="ASSISTANT:",
)
CLIP_IMAGE, CLIP_PATCH = 30, 15  # 2x2 patches (+ CLS, dropped by strategy "default")


def _llava_parts(tokenizer) -> dict:
    """Config and processor arguments LLaVA-1.5 and LLaVA-NeXT share."""
    vision = dict(
        model_type="clip_vision_model",
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=CLIP_IMAGE,
        patch_size=CLIP_PATCH,
        projection_dim=VISION["hidden_size"],
        **VISION,
    )
    config = dict(
        text_config=_llama_text(tokenizer),
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(CLIP_IMAGE // CLIP_PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    processor = dict(
        tokenizer=tokenizer,
        patch_size=CLIP_PATCH,
        chat_template=LLAVA_TEMPLATE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token: without it, image tokens mismatch
        image_token="<image>",
    )
    return config, processor


def tiny_llava() -> HFAdapter:
    """LLaVA-1.5: CLIP vision tower, MLP projector, 4 image tokens, Llama text model."""
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _byte_tokenizer(LLAVA_SPECIALS, eos="</s>", pad="<pad>", bos="<s>", add_bos=True)
    config_args, processor_args = _llava_parts(tokenizer)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE}, crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}
    )
    processor = LlavaProcessor(image_processor=image_processor, **processor_args)
    model = _seeded(LlavaForConditionalGeneration, LlavaConfig(**config_args))
    return _adapter(model, processor, "llava", "LLaVA-1.5")


def tiny_llava_next() -> HFAdapter:
    """LLaVA-NeXT: any-resolution tiling (base view + up to 2x2 tiles, row newlines)."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = _byte_tokenizer(LLAVA_SPECIALS, eos="</s>", pad="<pad>", bos="<s>", add_bos=True)
    config_args, processor_args = _llava_parts(tokenizer)
    pinpoints = [[CLIP_IMAGE, 2 * CLIP_IMAGE], [2 * CLIP_IMAGE, CLIP_IMAGE]]
    pinpoints += [[2 * CLIP_IMAGE, 2 * CLIP_IMAGE]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE},
        crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(image_processor=image_processor, **processor_args)
    config = LlavaNextConfig(image_grid_pinpoints=pinpoints, **config_args)
    model = _seeded(LlavaNextForConditionalGeneration, config)
    return _adapter(model, processor, "llava_next", "LLaVA-NeXT")


# -- Idefics3: the architecture of SmolVLM 256M / 500M / 2.2B -----------------------------------

IDEFICS3_SPECIALS = ["<|im_start|>", "<end_of_utterance>", "<|endoftext|>", "<global-img>"]
IDEFICS3_SPECIALS += ["<fake_token_around_image>", "<image>"]
IDEFICS3_SPECIALS += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
IDEFICS3_TEMPLATE = _chat_template(
    start="<|im_start|>",
    turn="{{ role | capitalize }}:",
    image="<image>",
    end="<end_of_utterance>\n",
    reply="Assistant:",
)
IDEFICS3_IMAGE, IDEFICS3_PATCH, IDEFICS3_SCALE = 32, 8, 2  # 4x4 patches, pixel-shuffled to 2x2


def tiny_idefics3() -> HFAdapter:
    """Idefics3 / SmolVLM: SigLIP-style tower, pixel shuffle, tiles + a global view."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tokenizer = _byte_tokenizer(
        IDEFICS3_SPECIALS, eos="<end_of_utterance>", pad="<|endoftext|>", bos="<|im_start|>"
    )
    image_processor = Idefics3ImageProcessorPil(  # up to 2x2 tiles + a global view, like SmolVLM
        size={"longest_edge": 2 * IDEFICS3_IMAGE},
        max_image_size={"longest_edge": IDEFICS3_IMAGE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(IDEFICS3_IMAGE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE**2,
        chat_template=IDEFICS3_TEMPLATE,
    )
    vision = dict(
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IDEFICS3_IMAGE,
        patch_size=IDEFICS3_PATCH,
        **VISION,
    )
    config = Idefics3Config(
        text_config=_llama_text(tokenizer),
        vision_config=vision,
        scale_factor=IDEFICS3_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _seeded(Idefics3ForConditionalGeneration, config)
    return _adapter(model, processor, "idefics3", "Idefics3 / SmolVLM")


# -- Gemma 3: SigLIP tower, pooled soft tokens, bidirectional attention over the image ----------

GEMMA3_SPECIALS = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
GEMMA3_SPECIALS += ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
GEMMA3_TEMPLATE = _chat_template(
    start="{{ bos_token }}",
    turn="<start_of_turn>{{ 'model' if role == 'assistant' else role }}\n",
    image="<start_of_image>",
    end="<end_of_turn>\n",
    reply="<start_of_turn>model\n",
)
GEMMA3_IMAGE, GEMMA3_PATCH, GEMMA3_TOKENS = 32, 8, 4  # 4x4 patches average-pooled to 2x2


def tiny_gemma3() -> HFAdapter:
    """Gemma 3: SigLIP tower, 4 pooled soft tokens, a sliding and a full attention layer."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    named = dict(boi_token="<start_of_image>", eoi_token="<end_of_image>")
    named["image_token"] = "<image_soft_token>"
    tokenizer = _byte_tokenizer(
        GEMMA3_SPECIALS, eos="<end_of_turn>", pad="<pad>", bos="<bos>", add_bos=True, named=named
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE}, do_pan_and_scan=False
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_TEMPLATE,
        image_seq_length=GEMMA3_TOKENS,
    )
    boi, eoi, soft = _ids(tokenizer, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    text = dict(
        vocab_size=len(tokenizer),
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **TEXT,
    )
    vision = dict(
        model_type="siglip_vision_model",
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=GEMMA3_IMAGE,
        patch_size=GEMMA3_PATCH,
        **VISION,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=GEMMA3_TOKENS,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=soft,
    )
    model = _seeded(Gemma3ForConditionalGeneration, config)
    return _adapter(model, processor, "gemma3", "Gemma 3")


# -- registry ------------------------------------------------------------------------------------

TINY_FAMILIES: dict[str, Callable[[], HFAdapter]] = {
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl,
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "idefics3": tiny_idefics3,
    "gemma3": tiny_gemma3,
}


def load_tiny(family: str) -> HFAdapter:
    """A tiny random `family` model behind HFAdapter. Plumbing only: says nothing about quality."""
    if family not in TINY_FAMILIES:
        choices = ", ".join(TINY_FAMILIES)
        raise ValueError(f"unknown tiny family {family!r}; choose one of: {choices}")
    return TINY_FAMILIES[family]()
