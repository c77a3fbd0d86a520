"""Linear layers whose weights are laid out once, at load, in oneDNN's own blocked format.

A CPU decode step is memory-bound: its cost is reading every weight once. `F.linear` gives its
kernel (oneDNN for bfloat16, MKL for float32) a plain row-major weight at every call; laid out
once in oneDNN's blocked format, the same weights stream much faster, and small batches of rows
cost little more than one. Measured on a 2-core AMD EPYC (avx512_bf16, no AMX) by
`python -m safety_demo.eval.dtype_speed`: 24 [896 -> 4864] layers stream, in bfloat16, 24.9 ->
34.5 GB/s for 1 row and 25.6 -> 37.5 GB/s for 3 rows, with bit-identical outputs; in float32,
16.1 -> 35.1 GB/s for 1 row and 5.7 -> 27.1 GB/s for 3 rows (outputs within float32 rounding).
A decode step of the built-in model: bfloat16 53.0 -> 30.2 ms; float32 129.9 -> 65.8 ms, and 3 rows
cost 1.23x one row instead of 2.63x (float32 there with the one-row layout, before `layout_rows`
chose the layout; on an AVX2-only EPYC see `layout_rows`). PyTorch's compiler prepacks CPU linear weights the
same way when it freezes a model (inductor's `freezing`); this does it without compiling.
Sibling layers that read one input (q/k/v, gate/up) share one packed product (`SharedInput`).

The cost is memory: the plain weights stay (a tied input embedding reads the head's, and code
reads `weight`), so the built-in model takes 2790 MB of RSS instead of 1840 MB once loaded.

`SAFETY_DEMO_PACK=0` turns it off (to measure the difference); a torch build without these
oneDNN ops, or whose packed result does not match `F.linear`, keeps the plain layers.
"""
from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from .cpu import wholly_on_cpu

log = logging.getLogger(__name__)
PACK_ENV = "SAFETY_DEMO_PACK"
PACKABLE = (torch.float32, torch.bfloat16)
LAYOUT_ROWS = (1, 2, 4, 8)  # batch sizes a layout is tried for, in order (`layout_rows`)


class PackedLinear(nn.Module):
    """`nn.Linear` with a oneDNN-packed copy of its weight; the plain `weight` stays for code that
    reads it (a tied input embedding, `weight.dtype`). Inference only: no autograd through it,
    and a later change to `weight` is not seen."""

    def __init__(self, linear: nn.Linear, rows: int | None = None, shared: tuple[SharedInput, int] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: ties survive
        self.rows = layout_rows(linear.weight.dtype, linear.in_features) if rows is None else rows
        self.shared, self.part = shared or (None, 0)  # one product with its siblings, and this layer's slice
        if self.shared is None:
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), self.rows)
            self.register_buffer("packed", packed, persistent=False)  # not in state_dict: rebuilt at load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared is not None:
            return self.shared.take(x, self.part)
        return packed_product(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        fused = f", fused with its siblings (part {self.part})" if self.shared is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed=oneDNN (rows={self.rows}){fused}"


class SharedInput:
    """One packed product for sibling layers that read the same input (a layer's q, k and v
    projections; an MLP's gate and up projections), computed once per input and sliced.

    Fewer, larger products stream the weights faster: a one-row step of the built-in model took
    30.1 ms against 31.3 in bfloat16 and 53.0 against 55.1 in float32, the same greedy tokens (2-core
    AMD EPYC with avx512_bf16, `python -m safety_demo.eval.dtype_speed --repeats 7`), for 72 MB more
    RSS once loaded (the concatenated weights are made before packing). Each slice has the bits its
    own packed layer gives (tested). The siblings are called one after another on the same tensor
    object, so the product waits for them until each has taken its slice (then it is let go: a
    prefill's products are large); any other call computes afresh. The state is one tuple, read
    and replaced whole, so a second thread can only cause a recompute, never a wrong slice."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        weight = torch.cat([layer.weight.detach() for layer in layers])
        self.bias = torch.cat([layer.bias.detach() for layer in layers]) if layers[0].bias is not None else None
        self.rows = layout_rows(weight.dtype, weight.shape[1])
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, self.rows)
        self.sizes = [layer.out_features for layer in layers]
        self.last: tuple = (None, (), frozenset())  # (input, its slices, parts not yet taken)

    def take(self, x: torch.Tensor, part: int) -> torch.Tensor:
        seen, outputs, waiting = self.last
        if seen is not x or part not in waiting:
            y = packed_product(x, self.packed, self.bias)
            outputs, waiting = torch.split(y, self.sizes, dim=-1), frozenset(range(len(self.sizes)))
        waiting = waiting - {part}
        self.last = (x, outputs, waiting) if waiting else (None, (), frozenset())
        return outputs[part]


def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T + bias from W's oneDNN-packed copy (what `PackedLinear`, `SharedInput` and the
    built-in model's lean step call)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def layout_rows(dtype: torch.dtype, in_features: int) -> int:
    """The batch size the weights are laid out for. float32: the smallest of `LAYOUT_ROWS` whose
    layout gives a row the same bits alone and in a batch of 2 to 9 rows, else 1. bfloat16: 1.

    oneDNN picks a weight layout, and with it a kernel, for the batch size it is told. Where the
    one-row layout runs another kernel for several rows, a method's row side by side is not the
    row it decodes alone, and the other kernel can be slow: on a 2-core AMD EPYC with AVX2 (no
    AVX-512) in float32 the one-row layout gave a row different bits in a batch of 3, and
    `python -m safety_demo.eval.dtype_speed` measured 1 / 3 / 8 rows at 18.9 / 12.0 / 10.1 GB/s
    with it and 16.2 / 16.5 / 12.7 GB/s with the two-row layout, which gives every batch the same
    bits. bfloat16 keeps the one-row layout it was measured with on an AMD EPYC with avx512_bf16
    (3 rows stream as fast as 1, bits equal to `F.linear`'s); whether another layout would make
    bfloat16 rows batch-invariant there is not known. Deterministic: a product, not a timing."""
    if dtype != torch.float32:
        return 1
    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, in_features, generator=g)  # oneDNN's choice depends on the shape
    x = torch.randn(9, in_features, generator=g)
    for rows in LAYOUT_ROWS:
        layer = PackedLinear(_linear(w, None), rows)  # packed once per candidate layout
        alone = layer(x[:1])[0]
        if all(torch.equal(alone, layer(x[:m])[0]) for m in range(2, 10)):
            return rows
    return 1


def wanted(env: str | None = None) -> bool:
    """`SAFETY_DEMO_PACK` (1 | 0, default 1)."""
    return (os.environ.get(PACK_ENV, "1") if env is None else env).strip() not in ("0", "false", "no", "off")


def supported(dtype: torch.dtype) -> bool:
    """Whether this torch build packs `dtype` weights and gets `F.linear`'s answer from them
    (bit-identical in bfloat16, within float32 rounding in float32)."""
    if dtype not in PACKABLE or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(64, 48, generator=g).to(dtype)
        b = torch.randn(64, generator=g).to(dtype)
        x = torch.randn(3, 2, 48, generator=g).to(dtype)
        got = PackedLinear(_linear(w, b))(x)
    except (RuntimeError, AttributeError) as exc:  # an op this build does not have
        log.info("oneDNN weight packing unavailable: %s", exc)
        return False
    want = F.linear(x, w, b)
    return got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-3)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def pack_linears(model: nn.Module, enabled: bool | None = None) -> int:
    """Swap every `nn.Linear` of a model that lies wholly on the CPU for a `PackedLinear`; returns
    how many were swapped (0 when turned off, unsupported, or any weight is elsewhere: a GPU, a
    layer split by accelerate). `enabled`: None reads `SAFETY_DEMO_PACK`. Siblings (`SIBLINGS`)
    share one packed product (`SharedInput`). The model must be in eval mode and stay where it is."""
    on_cpu = wholly_on_cpu(model)
    layers = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    dtypes = {m.weight.dtype for _, m in layers}
    if not layers or not on_cpu or not (wanted() if enabled is None else enabled) or not all(supported(d) for d in dtypes):
        return 0
    shared = siblings(model)
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        fused = shared.get(id(layer))
        setattr(model.get_submodule(parent_name), child, PackedLinear(layer, fused[0].rows if fused else None, fused))
    return len(layers)


SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # layers called in turn on one input


def siblings(model: nn.Module) -> dict[int, tuple[SharedInput, int]]:
    """id of each plain `nn.Linear` in a group of `SIBLINGS` alike in input size, dtype and bias ->
    (the group's `SharedInput`, its slice)."""
    found: dict[int, tuple[SharedInput, int]] = {}
    for module in model.modules():
        for names in SIBLINGS:
            layers = [getattr(module, n, None) for n in names]
            if not all(type(layer) is nn.Linear for layer in layers):
                continue
            if len({(layer.in_features, layer.weight.dtype, layer.bias is not None) for layer in layers}) != 1:
                continue
            shared = SharedInput(layers)
            found.update({id(layer): (shared, part) for part, layer in enumerate(layers)})
    return found
