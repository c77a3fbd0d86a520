"""`dtype_speed`'s profile of a step: the linear layers' kernels are found, plain or packed, and are part of the step."""
from __future__ import annotations

import pytest
from PIL import Image

from safety_demo.eval.dtype_speed import step_breakdown
from safety_demo.models import Request
from safety_demo.models.fake import FakeAdapter
from safety_demo.models.packed import pack_linears


@pytest.mark.parametrize("packed", [False, True])
def test_a_step_is_split_into_linear_kernels_and_the_rest(packed):
    adapter = FakeAdapter(seed=0)  # a tiny Qwen2: the built-in model's layers, small
    if packed and not pack_linears(adapter.model, enabled=True):
        pytest.skip("this torch build cannot pack float32 weights")
    linear, total = step_breakdown(adapter, Request(Image.new("RGB", (64, 64), "orange"), "What is this?"), steps=3)
    assert 0 < linear < total  # a profile that missed the (packed or plain) linear ops would read 0
