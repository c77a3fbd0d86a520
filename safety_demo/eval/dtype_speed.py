"""What a CPU decode step costs by dtype, weight layout and row count: `python -m safety_demo.eval.dtype_speed`.

Eight kinds of table (medians over repeats but the fourth, one profiled pass), every ratio from this one run:
  * kernels: GB/s that 24 [896 -> 4864] linear layers (the built-in model's MLP, 209 MB in
    bfloat16) stream for 1, 3 and 8 rows, with `F.linear` on plain weights and with weights
    pre-packed for oneDNN (`models/packed.py`), in float32 and bfloat16;
  * steps: ms per `adapter.step` of the built-in model (KV cache warm) in the same four settings;
  * the built-in model's lean step (`models/builtin/lean.py`) against transformers' forward, for 1
    and 3 rows, and whether the greedy tokens are the same;
  * where a one-row step goes, from `torch.profiler`: the linear layers' kernels (and the GB/s
    they stream) against everything else (norms, rotary embedding, attention, the cache, Python),
    and the packed kernels by weight shape (small products stream slower than large ones);
  * one packed one-row product by weight size, its weights read from memory (distinct copies
    cycled, as a step reads them) and from cache (one weight back to back): a call's fixed cost,
    and how much faster the same kernel runs when its weights need not come from memory;
  * sibling layers (q/k/v, gate/up) each on its own packed product against one shared product
    (`models/packed.py::SharedInput`): a one-row step through transformers' forward, and whether
    the greedy tokens are the same;
  * attention for one query row (the built-in model's 14 query heads on 2 key/value heads): us per
    call with torch's GQA path (`enable_gqa=True`, what transformers' sdpa calls for a row without
    padding) and with the query heads stacked per key/value head (`models/attention.py`), and a
    one-row step through transformers' forward after a long prompt with each;
  * against the bandwidth bound, at the same moment (the host's memory speed swings within
    seconds, `memory_drift`): the bound (the bench's probes right before and after), the built-in
    model's linear kernels alone (every packed product of a step, back to back, on fixed inputs),
    its lean step, and a vanilla decode through the engine, each as a share of the bound.
Why it matters: the side-by-side view decodes 3 to 8 rows per step, and only a kernel whose cost
barely grows with the row count makes three answers cost about one; a decode step is
memory-bound, so GB/s is the speed.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable

import torch

from ..decoding import GenerationConfig, run_to_end
from ..models import Request, VLMAdapter
from ..models.attention import NAME as STACKED
from ..models.builtin.adapter import BuiltinAdapter
from ..models.builtin.assemble import build_builtin
from ..models.cpu import cpu_name
from ..models.packed import PackedLinear, packed_product, supported
from .bench import Bandwidth, median_seconds, model_bytes

ROWS = (1, 3, 8)
LINEAR_KERNELS = {"mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::mv"}  # packed and plain linear layers
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.no_grad()
def kernel_gbs(dtype: torch.dtype, packed: bool, rows: int, repeats: int = 10) -> float:
    """GB/s of 24 [896 -> 4864] layers on `rows` rows: larger than the caches, like a decode step."""
    layers = [torch.nn.Linear(896, 4864, bias=False, dtype=dtype).eval() for _ in range(24)]
    if packed:
        layers = [PackedLinear(layer) for layer in layers]
    x = torch.randn(rows, 1, 896, dtype=dtype)
    seconds = median_seconds(lambda: [layer(x) for layer in layers], repeats)
    return sum(layer.weight.numel() * layer.weight.element_size() for layer in layers) / seconds / 1e9


def step_ms(adapter: BuiltinAdapter, request: Request, rows: int, steps: int) -> float:
    """ms per `adapter.step` over `steps` steps after a prefill of `rows` rows (one timing: main interleaves the repeats)."""
    return _decode_ms(adapter, adapter.prefill([request] * rows), steps)


def _decode_ms(adapter: VLMAdapter, out, steps: int) -> float:
    """ms per greedy `adapter.step` over `steps` steps from a prefill's output."""
    t0 = time.perf_counter()
    for _ in range(steps):
        out = adapter.step(out.logits.argmax(-1), out.state)
    return (time.perf_counter() - t0) / steps * 1000


def greedy_tokens(adapter: VLMAdapter, request: Request, n: int) -> list[int]:
    """The first `n` greedy tokens for `request`."""
    out, tokens = adapter.prefill([request]), []
    for _ in range(n):
        token = out.logits.argmax(-1)
        tokens.append(int(token[0]))
        out = adapter.step(token, out.state)
    return tokens


def interleaved(switch: Callable[[bool], object], measure: Callable[[], float], repeats: int,
                tokens: Callable[[], list[int]] | None = None) -> tuple[float, float, bool | None]:
    """Medians of `measure()` with `switch(False)` and with `switch(True)`, alternated over `repeats`
    (drift on a shared machine hits both alike), and whether `tokens()` agreed (None: not asked).
    The switch is left on True."""
    times: dict[bool, list[float]] = {False: [], True: []}
    seen: dict[bool, list[int]] = {}
    for _ in range(repeats):
        for on in times:
            switch(on)
            times[on].append(measure())
            if tokens is not None:
                seen[on] = tokens()
    return statistics.median(times[False]), statistics.median(times[True]), (seen[False] == seen[True]) if tokens else None


@contextlib.contextmanager
def through_transformers(adapter: VLMAdapter):
    """Decode steps through transformers' forward, not the built-in model's lean step
    (`models/builtin/lean.py`): what the sibling and attention tables switch inside."""
    lean = getattr(adapter, "lean_step", None)
    adapter.lean_step = None
    try:
        yield adapter
    finally:
        adapter.lean_step = lean


def step_breakdown(adapter: VLMAdapter, request: Request, steps: int) -> tuple[float, float, list[tuple[tuple[int, int], float, float, float]]]:
    """(ms per one-row step in the linear layers' kernels, ms per step in all, and per packed weight
    shape [out, in]: calls per step, us per call, GB/s), profiled over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    out = adapter.prefill([request])  # not profiled: its linear layers would count as a step's
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        total_ms = _decode_ms(adapter, out, steps)
    linear_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in LINEAR_KERNELS)
    size = getattr(adapter, "dtype", torch.float32).itemsize
    shapes = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == "mkldnn::_linear_pointwise" and len(e.input_shapes) > 1 and len(e.input_shapes[1]) == 2:
            n, k = e.input_shapes[1]  # the packed weight
            us = e.self_cpu_time_total / e.count
            shapes.append(((n, k), e.count / steps, us, n * k * size / us / 1e3))
    return linear_us / 1e3 / steps, total_ms, sorted(shapes, key=lambda row: row[0][0] * row[0][1])


@torch.no_grad()
def product_us(out_features: int, in_features: int, dtype: torch.dtype, from_memory: bool,
               memory_bytes: int = 2**28, repeats: int = 7) -> float:
    """us a call of one packed one-row product [1, in] -> [1, out]. `from_memory`: distinct copies of
    the weight, `memory_bytes` in all (far beyond the caches), called in turn, so each call reads its
    weight from memory as a decode step does; else one weight called back to back, which stays in
    cache when it fits (a call's fixed cost, where the weight is small)."""
    size = out_features * in_features * dtype.itemsize
    copies = -(-memory_bytes // size) if from_memory else 1
    layers = [PackedLinear(torch.nn.Linear(in_features, out_features, bias=False, dtype=dtype).eval()) for _ in range(copies)]
    calls = max(copies, 64)
    x = torch.randn(1, in_features, dtype=dtype)
    seconds = median_seconds(lambda: [layers[i % copies](x) for i in range(calls)], repeats)
    return seconds / calls * 1e6


@torch.no_grad()
def kernels_ms(adapter: BuiltinAdapter, steps: int) -> float:
    """ms per step of the lean step's packed products alone (q/k/v, o, gate/up, down per layer, then
    the head), back to back on fixed inputs: what a step would cost if nothing else ran."""
    lean = adapter.lean_step
    x = torch.randn(1, 1, adapter.model.config.hidden_size, dtype=adapter.dtype)
    mid = torch.randn(1, 1, lean.intermediate, dtype=adapter.dtype)
    t0 = time.perf_counter()
    for _ in range(steps):
        for layer in lean.layers:
            for weights, inputs in ((layer.qkv, x), (layer.o, x), (layer.gate_up, x), (layer.down, mid)):
                packed_product(inputs, *weights)
        lean.head(x)
    return (time.perf_counter() - t0) / steps * 1000


def bound_shares(adapter: BuiltinAdapter, request: Request, steps: int, rounds: int) -> dict[str, float]:
    """Medians over `rounds` of the step the bound allows (ms) and of the kernels alone, the lean step
    and an engine decode (vanilla, greedy) each as bound ÷ its ms per token, all within one round
    between two probes (the faster of which sets the bound, as in the bench)."""
    bandwidth, size = Bandwidth(), model_bytes(adapter)
    gen = GenerationConfig(max_new_tokens=steps, ignore_eos=True)
    measures = {"kernels alone": lambda: kernels_ms(adapter, steps),
                "lean step": lambda: step_ms(adapter, request, 1, steps),
                "engine, vanilla": lambda: 1000 / run_to_end(adapter, request, None, gen).tokens_per_second}
    for measure in measures.values():  # warm
        measure()
    rows: dict[str, list[float]] = {}
    for _ in range(rounds):
        before = max(bandwidth(6).values())
        ms = {name: measure() for name, measure in measures.items()}
        bound_ms = size / (max(before, *bandwidth(6).values()) * 1e9) * 1000
        rows.setdefault("bound ms", []).append(bound_ms)
        for name, value in ms.items():
            rows.setdefault(name, []).append(bound_ms / value)
    return {name: statistics.median(values) for name, values in rows.items()}


def share_siblings(model: torch.nn.Module, on: bool) -> int:
    """Sibling layers (`models/packed.py::SIBLINGS`) on their one shared product, as loaded, or each on
    a packed product of its own (off), to time the difference; returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, PackedLinear) and (m.shared is not None or hasattr(m, "own_product_of"))]
    for layer in layers:
        if layer.shared is not None:
            layer.own_product_of = layer.shared  # kept, to switch back
        if not hasattr(layer, "packed"):
            layer.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), layer.rows), persistent=False)
        layer.shared = layer.own_product_of if on else None
    return len(layers)


@torch.no_grad()
def attention_us(dtype: torch.dtype, positions: int, stacked: bool, repeats: int = 7) -> float:
    """us per attention call of one query row over `positions` cached keys (14 heads on 2, d = 64)."""
    F = torch.nn.functional
    q = torch.randn(1, 14, 1, 64, dtype=dtype)
    k, v = torch.randn(2, 1, 2, positions, 64, dtype=dtype)
    if stacked:
        call = lambda: F.scaled_dot_product_attention(q.reshape(1, 2, 7, 64), k, v, scale=0.125)  # noqa: E731
    else:
        call = lambda: F.scaled_dot_product_attention(q, k, v, scale=0.125, enable_gqa=True)  # noqa: E731
    return median_seconds(lambda: [call() for _ in range(100)], repeats) / 100 * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="default", choices=["default", "fast"])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    settings = [(name, packed) for name, dtype in DTYPES.items() for packed in (False, True) if not packed or supported(dtype)]
    print(f"On {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")

    gbs = {(name, packed, rows): kernel_gbs(DTYPES[name], packed, rows) for name, packed in settings for rows in ROWS}
    print("Kernels: 24 [896 -> 4864] linear layers, GB/s of weights streamed (higher is faster)\n")
    print("| setting | " + " | ".join(f"{r} row{'s' if r > 1 else ''}" for r in ROWS) + " | 3 rows cost vs 1 |\n|---|" + "---|" * (len(ROWS) + 1))
    for name, packed in settings:
        row = [gbs[(name, packed, r)] for r in ROWS]
        print(f"| {name}, {'packed' if packed else 'plain F.linear'} | " + " | ".join(f"{g:.1f}" for g in row) + f" | {row[0] / row[1]:.2f}x |")

    build_builtin(args.variant)
    from ..data.calibration import load_photo

    request = Request(load_photo("example:flower.jpg"), "Describe this photo.")
    adapters = {setting: BuiltinAdapter(args.variant, dtype=DTYPES[setting[0]], pack=setting[1]) for setting in settings}
    for adapter in adapters.values():  # oneDNN builds a kernel per shape on first use: not part of a step
        for rows in ROWS:
            step_ms(adapter, request, rows, 2)
    runs: dict[tuple[str, bool, int], list[float]] = {}
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits every setting alike
        for (name, packed), adapter in adapters.items():
            for rows in ROWS:
                runs.setdefault((name, packed, rows), []).append(step_ms(adapter, request, rows, args.steps))
    ms = {key: statistics.median(values) for key, values in runs.items()}
    base = ms[("float32", False, 1)]
    print(f"\nDecode step of the built-in `{args.variant}` model: ms per step over {args.steps} steps, median of {args.repeats} repeats interleaved across settings\n")
    print("| setting | " + " | ".join(f"{r} row{'s' if r > 1 else ''} ms" for r in ROWS) + " | 1 row vs float32 plain | 3 rows vs 1 |\n|---|" + "---|" * (len(ROWS) + 2))
    for name, packed in settings:
        row = [ms[(name, packed, r)] for r in ROWS]
        print(f"| {name}, {'packed' if packed else 'plain'} | " + " | ".join(f"{t:.1f}" for t in row) + f" | {row[0] / base:.2f}x | {row[1] / row[0]:.2f}x |")

    print(f"\nThe lean step (`models/builtin/lean.py`) against transformers' forward: ms per step over {args.steps} steps, median of {args.repeats} repeats interleaved\n")
    print("| setting | rows | transformers' forward | lean step | lean ÷ forward | same tokens |\n|---|---|---|---|---|---|")
    for (name, packed), adapter in adapters.items():
        if getattr(adapter, "lean_step", None) is None:
            continue
        lean = adapter.lean_step
        for rows in (1, 3):
            a, b, same = interleaved(lambda on: setattr(adapter, "lean_step", lean if on else None),
                                     lambda: step_ms(adapter, request, rows, args.steps), args.repeats,
                                     lambda: greedy_tokens(adapter, request, 16))
            print(f"| {name}, packed | {rows} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {'yes' if same else 'no'} |")

    print(f"\nWhere a one-row step goes (torch.profiler over {args.steps} steps; profiling adds a little to the step)\n")
    print("| setting | step ms | linear kernels ms | their GB/s | everything else ms | packed kernels by weight [out, in]: calls a step, us a call, GB/s |\n|---|---|---|---|---|---|")
    for (name, packed), adapter in adapters.items():
        linear, total, shapes = step_breakdown(adapter, request, args.steps)
        gbs = model_bytes(adapter) / (linear / 1e3) / 1e9
        by_shape = "; ".join(f"[{n}, {k}]: {calls:.0f}, {us:.0f} us, {g:.1f}" for (n, k), calls, us, g in shapes) or "—"
        print(f"| {name}, {'packed' if packed else 'plain'} | {total:.1f} | {linear:.1f} | {gbs:.1f} | {total - linear:.1f} | {by_shape} |")

    for (name, packed), adapter in adapters.items():
        if not packed or getattr(adapter, "lean_step", None) is None:
            continue
        layer, dtype = adapter.lean_step.layers[0], DTYPES[name]
        shapes = [(64, adapter.model.config.hidden_size)] + [tuple(w.shape) for w, _ in (layer.qkv, layer.o, layer.down, layer.gate_up)]
        print(f"\nOne packed one-row product by weight size, {name}: us a call from memory (copies of the weight cycled, 256 MB in all) "
              f"and from cache (one weight back to back), median of {max(args.repeats, 7)}; the smallest weight shows a call's fixed cost\n")
        print("| weight [out, in] | MB | from memory: us, GB/s | from cache: us, GB/s | memory ÷ cache |\n|---|---|---|---|---|")
        for n, k in shapes:
            mb = n * k * dtype.itemsize / 1e6
            cold, hot = (product_us(n, k, dtype, from_memory, repeats=max(args.repeats, 7)) for from_memory in (True, False))
            print(f"| [{n}, {k}] | {mb:.1f} | {cold:.0f}, {mb / cold * 1e3:.1f} | {hot:.0f}, {mb / hot * 1e3:.1f} | {cold / hot:.2f}x |")

    print(f"\nSibling layers (q/k/v, gate/up): a one-row step through transformers' forward with each on its own packed product and with one shared product, ms per step over {args.steps} steps, median of {args.repeats} repeats interleaved\n")
    print("| setting | separate | shared | shared ÷ separate | same tokens |\n|---|---|---|---|---|")
    for (name, packed), adapter in adapters.items():
        if not packed:
            continue
        with through_transformers(adapter):  # the lean step reads the shared products whatever this switch says
            a, b, same = interleaved(lambda on: share_siblings(adapter.model, on),
                                     lambda: _decode_ms(adapter, adapter.prefill([request]), args.steps), args.repeats,
                                     lambda: greedy_tokens(adapter, request, 16))
        print(f"| {name}, packed | {a:.1f} | {b:.1f} | {b / a:.2f}x | {'yes' if same else 'no'} |")

    positions = (64, 256, 1024)
    print("\nAttention for one query row: us per call (14 query heads on 2 key/value heads), median of 7\n")
    print("| dtype | " + " | ".join(f"{n} positions: GQA path / stacked" for n in positions) + " |\n|---|" + "---|" * len(positions))
    for name, dtype in DTYPES.items():
        cells = [(attention_us(dtype, n, False), attention_us(dtype, n, True)) for n in positions]
        print(f"| {name} | " + " | ".join(f"{a:.0f} / {b:.0f} ({a / b:.1f}x)" for a, b in cells) + " |")
    long = Request(request.image, "Describe this photo. " + "Then describe its colours, its light and its shapes once more. " * 40)
    print(f"\nA one-row step through transformers' forward after a {len(long.prompt)}-character prompt, ms per step over {args.steps} steps, median of {args.repeats} repeats interleaved\n")
    print("| setting | transformers' sdpa | stacked GQA | stacked ÷ sdpa |\n|---|---|---|---|")
    for (name, packed), adapter in adapters.items():
        with through_transformers(adapter):  # the lean step always stacks
            a, b, _ = interleaved(lambda on: adapter.model.set_attn_implementation(STACKED if on else "sdpa"),
                                  lambda: _decode_ms(adapter, adapter.prefill([long]), args.steps), args.repeats)
        print(f"| {name}, {'packed' if packed else 'plain'} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")

    print(f"\nAgainst the bandwidth bound, at the same moment: each round probes, times the three below ({args.steps} tokens each), probes again; medians of {args.repeats * 3} rounds\n")
    print("| setting | bound ms per token | linear kernels alone | lean step | engine, vanilla |\n|---|---|---|---|---|")
    for (name, packed), adapter in adapters.items():
        if getattr(adapter, "lean_step", None) is None:
            continue
        shares = bound_shares(adapter, request, args.steps, args.repeats * 3)
        print(f"| {name}, packed | {shares['bound ms']:.1f} | " + " | ".join(f"{shares[k]:.0%}" for k in ("kernels alone", "lean step", "engine, vanilla")) + " |")


if __name__ == "__main__":
    main()
