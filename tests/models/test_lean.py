"""The built-in LM's lean decode step (models/builtin/lean.py): transformers' bits, without its machinery."""
from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from safety_demo.models.base import ModelLoadError, Request
from safety_demo.models.builtin.lean import LeanStep, fits
from safety_demo.models.packed import supported

DTYPES = [torch.float32, torch.bfloat16]


def adapter_or_skip(dtype: torch.dtype, pack: bool | None = None):
    from safety_demo.models.builtin.adapter import BuiltinAdapter
    from safety_demo.models.builtin.assemble import build_builtin

    if not supported(dtype):
        pytest.skip(f"this torch build cannot pack {dtype} weights")
    try:
        build_builtin("fast")
    except ModelLoadError as e:
        pytest.skip(f"built-in 'fast' weights unavailable: {e}")
    return BuiltinAdapter("fast", dtype=dtype, pack=pack)


@pytest.fixture(scope="module", params=DTYPES, ids=["float32", "bfloat16"])
def fast(request):
    return adapter_or_skip(request.param)


def requests() -> list[Request]:
    return [Request(Image.new("RGB", (224, 224), "white"), "Hi"),
            Request(Image.new("RGB", (224, 224), "orange"), "Describe this picture in detail, please, with its colours."),
            Request(None, "Write a haiku about the sea.")]


def decode_both(adapter, rows: list[Request], steps: int, select: list[int] | None = None):
    """The same greedy steps through transformers' forward and through the lean step, from one prefill."""
    lean = adapter.lean_step
    outs = []
    for step in (None, lean):
        adapter.lean_step = step
        out = adapter.prefill(rows)
        if select is not None:
            out = out.index_select(select)  # e.g. SafeSteer's k candidates on one row, SafeCoDe's kept row
        trail = []
        for _ in range(steps):
            out = adapter.step(out.logits.argmax(-1), out.state)
            trail.append(out)
        outs.append(trail)
    adapter.lean_step = lean
    return outs


@pytest.mark.parametrize("rows,select", [([0], None), ([0, 1, 2], None), ([1], [0, 0, 0]), ([0, 1], [0])],
                         ids=["one row", "padded batch", "repeated row", "kept row"])
def test_the_lean_step_gives_transformers_bits(fast, rows, select):
    """Logits, hidden state and every layer's new keys and values equal to the bit, step after step."""
    assert fast.lean_step is not None
    reference, lean = decode_both(fast, [requests()[i] for i in rows], 5, select)
    for a, b in zip(reference, lean):
        assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
        assert torch.equal(a.state.attention_mask, b.state.attention_mask)
    for la, lb in zip(reference[-1].state.cache.layers, lean[-1].state.cache.layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def test_steps_go_through_the_lean_step_not_the_forward(fast, monkeypatch):
    out = fast.prefill(requests()[:2])
    monkeypatch.setattr(fast.model, "forward", lambda *a, **k: pytest.fail("transformers' forward was called for a decode step"))
    stepped = fast.step(out.logits.argmax(-1), out.state)
    assert stepped.logits.shape == out.logits.shape and torch.isfinite(stepped.logits).all()


def test_an_unpacked_model_decodes_through_transformers(monkeypatch):
    plain = adapter_or_skip(torch.float32, pack=False)
    assert plain.packed == 0 and plain.lean_step is None
    out = plain.prefill(requests()[:1])
    assert torch.isfinite(plain.step(out.logits.argmax(-1), out.state).logits).all()


def test_only_the_model_it_mirrors_is_fitted(fast):
    assert fits(fast.model)
    for change in ("model_type", "hidden_act", "attn", "sliding", "layer_types", "training", "unshared"):
        model = copy.copy(fast.model)
        model.config = copy.deepcopy(fast.model.config)
        if change == "model_type":
            model.config.model_type = "gemma"
        elif change == "hidden_act":
            model.config.hidden_act = "gelu"
        elif change == "attn":
            model.config._attn_implementation = "eager"
        elif change == "sliding":
            model.config.use_sliding_window = True
        elif change == "layer_types":
            model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
        elif change == "training":
            model.training = True
        elif change == "unshared":
            layer = fast.model.model.layers[0].mlp.up_proj
            shared, layer.shared = layer.shared, None
            try:
                assert not fits(fast.model)
            finally:
                layer.shared = shared
            continue
        assert not fits(model), change
        assert LeanStep.build(model) is None


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
def test_a_qwen2_with_projection_biases_gets_transformers_bits(dtype):
    """The built-in default LM is a Qwen2, whose q/k/v projections carry biases (the `fast` one, a
    Llama, has none): the same bits on a tiny random Qwen2 with nonzero biases, in a padded batch."""
    from transformers import DynamicCache

    from safety_demo.models.fake import FakeAdapter
    from safety_demo.models.packed import pack_linears

    if not supported(dtype):
        pytest.skip(f"this torch build cannot pack {dtype} weights")
    adapter = FakeAdapter(seed=0)
    with torch.no_grad():
        for layer in adapter.model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_()
    adapter.model.to(dtype)
    assert pack_linears(adapter.model, enabled=True) > 0
    lean = LeanStep.build(adapter.model)
    assert lean is not None
    model = adapter.model
    ids = torch.tensor([[0, 0, 5, 9, 12, 30], [7, 8, 5, 9, 40, 41]])  # row 0 left-padded
    mask = (ids != 0).long()

    def forward(token_ids, mask, cache):  # transformers' own forward, as the built-in adapter calls it
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -token_ids.shape[1]:]
        out = model(input_ids=token_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, output_hidden_states=True)
        return out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float()

    caches = [DynamicCache(config=model.config), DynamicCache(config=model.config)]  # one per path
    reference = forward(ids, mask, caches[0])
    assert torch.equal(forward(ids, mask, caches[1])[0], reference[0])
    for _ in range(4):
        token = reference[0].argmax(-1)
        positions = mask.sum(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=-1)
        reference = forward(token[:, None], mask, caches[0])
        logits, hidden = lean(token, mask, positions, caches[1])
        assert torch.equal(logits, reference[0]) and torch.equal(hidden, reference[1])
    for la, lb in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


@pytest.mark.slow  # loads the built-in default model (~1 GB)
def test_the_default_model_gets_transformers_bits():
    """The shipped Qwen2.5-0.5B itself, in the dtype this CPU decodes in: alone and padded."""
    from safety_demo.models.builtin.adapter import BuiltinAdapter
    from safety_demo.models.builtin.assemble import build_builtin
    from safety_demo.models.cpu import cpu_dtype

    try:
        build_builtin("default")
    except ModelLoadError as e:
        pytest.skip(f"built-in 'default' weights unavailable: {e}")
    default = BuiltinAdapter("default", dtype=cpu_dtype())
    if default.lean_step is None:
        pytest.skip("this torch build cannot pack the default model's weights")
    for rows in ([0], [0, 1]):
        reference, lean = decode_both(default, [requests()[i] for i in rows], 6)
        for a, b in zip(reference, lean):
            assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
