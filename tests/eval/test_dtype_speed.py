"""`dtype_speed`'s profile of a step: the linear layers' kernels are found, plain or packed, and are part of the step."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from safety_demo.eval.bench import model_bytes
from safety_demo.eval.dtype_speed import greedy_tokens, share_siblings, step_breakdown
from safety_demo.models import Request
from safety_demo.models.fake import FakeAdapter
from safety_demo.models.packed import pack_linears

BUILT = os.environ.get("SAFETY_DEMO_CACHE")  # where `make test` built the `fast` model, before tests/eval's fixture hides it


@pytest.mark.parametrize("packed", [False, True])
def test_a_step_is_split_into_linear_kernels_and_the_rest(packed):
    adapter = FakeAdapter(seed=0)  # a tiny Qwen2: the built-in model's layers, small
    if packed and not pack_linears(adapter.model, enabled=True):
        pytest.skip("this torch build cannot pack float32 weights")
    linear, total, shapes = step_breakdown(adapter, Request(Image.new("RGB", (64, 64), "orange"), "What is this?"), steps=3)
    assert 0 < linear < total  # a profile that missed the (packed or plain) linear ops would read 0
    if packed:  # by packed weight shape, at a positive speed; the output head is read once a step
        head = adapter.model.lm_head
        assert all(calls >= 1 and us > 0 and gbs > 0 for _, calls, us, gbs in shapes)
        assert ((head.out_features, head.in_features), 1.0) in {(shape, calls) for shape, calls, *_ in shapes}
    else:
        assert shapes == []


def test_siblings_can_be_timed_apart_and_shared_again():
    """The sibling table's switch: each layer on its own product, then shared again, same tokens."""
    adapter = FakeAdapter(seed=0)
    if not pack_linears(adapter.model, enabled=True):
        pytest.skip("this torch build cannot pack float32 weights")
    request = Request(Image.new("RGB", (64, 64), "orange"), "What is this?")
    shared = greedy_tokens(adapter, request, 6)
    assert share_siblings(adapter.model, False) > 0
    assert all(getattr(m, "shared", None) is None for m in adapter.model.modules())
    assert greedy_tokens(adapter, request, 6) == shared
    share_siblings(adapter.model, True)
    assert any(getattr(m, "shared", None) is not None for m in adapter.model.modules())


def test_through_transformers_sets_the_lean_step_aside_and_back():
    """The sibling and attention tables time transformers' forward: the lean step is off inside, back after, even on an error."""
    from types import SimpleNamespace

    from safety_demo.eval.dtype_speed import through_transformers

    lean = object()
    adapter = SimpleNamespace(lean_step=lean)
    with pytest.raises(KeyError):
        with through_transformers(adapter):
            assert adapter.lean_step is None
            raise KeyError("a table failed")
    assert adapter.lean_step is lean


def test_interleaved_alternates_the_switch_and_compares_tokens():
    """Each repeat measures off then on; medians per side; the switch ends on; tokens compared per side."""
    from safety_demo.eval.dtype_speed import interleaved

    state, order = {"on": None}, []
    switch = lambda on: state.update(on=on)  # noqa: E731
    measure = lambda: order.append(state["on"]) or (2.0 if state["on"] else 4.0)  # noqa: E731
    off, on, same = interleaved(switch, measure, 3, tokens=lambda: [1, 2])
    assert (off, on, same) == (4.0, 2.0, True) and order == [False, True] * 3 and state["on"] is True
    assert interleaved(switch, measure, 1)[2] is None
    assert interleaved(switch, measure, 1, tokens=lambda: [int(state["on"])])[2] is False


def test_bound_shares_time_the_kernels_the_step_and_the_engine_between_probes(monkeypatch):
    """Each round: probe, kernels alone, lean step, engine, probe; every share is of the faster probe's bound."""
    from safety_demo.eval import dtype_speed
    from safety_demo.models.base import ModelLoadError
    from safety_demo.models.builtin.adapter import BuiltinAdapter

    if BUILT:
        monkeypatch.setenv("SAFETY_DEMO_CACHE", BUILT)
    try:
        adapter = BuiltinAdapter("fast", dtype=torch.float32)
    except ModelLoadError as e:
        pytest.skip(f"built-in 'fast' weights unavailable: {e}")
    if adapter.lean_step is None:
        pytest.skip("this torch build cannot pack float32 weights")
    calls = []
    speeds = iter([1.0, 2.0] * 2)
    monkeypatch.setattr(dtype_speed, "Bandwidth", lambda: lambda repeats: calls.append("probe") or {"probe": next(speeds)})
    for name in ("kernels_ms", "step_ms"):
        real = getattr(dtype_speed, name)
        monkeypatch.setattr(dtype_speed, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    shares = dtype_speed.bound_shares(adapter, Request(Image.new("RGB", (64, 64), "orange"), "What is this?"), steps=2, rounds=2)
    assert calls[-4:] == ["probe", "kernels_ms", "step_ms", "probe"]  # the engine's decode runs between step_ms and the probe
    assert shares["bound ms"] == pytest.approx(model_bytes(adapter) / 2e9 * 1000)  # the faster probe, 2 GB/s
    assert all(0 < shares[k] for k in ("kernels alone", "lean step", "engine, vanilla"))


def test_a_product_from_memory_cycles_distinct_weights_and_from_cache_repeats_one(monkeypatch):
    """From memory: enough distinct weights to cover `memory_bytes`, each called in turn; from cache: one weight."""
    from safety_demo.eval import dtype_speed
    from safety_demo.models.packed import supported

    if not supported(torch.float32):
        pytest.skip("this torch build cannot pack float32 weights")
    built, called = [], []

    class Counted(dtype_speed.PackedLinear):
        def __init__(self, layer):
            super().__init__(layer)
            built.append(self)

        def forward(self, x):
            called.append(self)
            return super().forward(x)

    monkeypatch.setattr(dtype_speed, "PackedLinear", Counted)
    size = 32 * 16 * 4  # a [32, 16] float32 weight
    assert dtype_speed.product_us(32, 16, torch.float32, True, memory_bytes=int(3.5 * size), repeats=1) > 0
    assert len(built) == 4 and set(called) == set(built)  # ceil(3.5) copies, every one read
    assert called[:8] == built + built  # in turn, not one copy over and over
    built.clear(), called.clear()
    assert dtype_speed.product_us(32, 16, torch.float32, False, repeats=1) > 0
    assert len(built) == 1 and len(called) == 2 * 64  # one warm pass and one timed pass of 64 calls
