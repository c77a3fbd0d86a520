"""Would a compiler make the built-in model's decode step faster? `python -m safety_demo.eval.compile_speed`.

The lean step (`models/builtin/lean.py`) runs about 35 small eager ops a layer around its packed
products, and stops short of the bandwidth bound (`dtype_speed`'s last table). Fusing those ops is
what a compiler does, so this times two compiled steps against it, on one row in the model's dtype:
  * the lean step's layers as ONE inductor graph: the same arithmetic (`LeanStep.layer`), its packed
    products kept as opaque oneDNN calls (inductor cannot lower the packed op itself), the small ops
    fused into generated C++ loops, each layer's keys and values appended inside the graph;
  * transformers' own recipe for a compiled decode: a `StaticCache` and
    `torch.compile(model.forward, fullgraph=True)` with inductor's weight freezing (which lays the
    linear weights out for oneDNN itself), on the plain, unpacked model.
Each is timed against the lean step, alternated over repeats (the host's memory speed swings), ms
per step over a few dozen steps after a prefill, with the first greedy tokens compared: the
compiled lean layers against the lean step, transformers' compiled forward against the same
forward uncompiled. Needs a C++ compiler (inductor writes C++); without one it says so.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from typing import Callable

import torch
from transformers import StaticCache

from ..models import Request
from ..models.builtin.adapter import BuiltinAdapter
from ..models.builtin.lean import LeanStep
from ..models.cpu import cpu_name
from ..models.packed import packed_product
from .dtype_speed import greedy_tokens, step_ms


@torch.library.custom_op("safety_demo::packed_product", mutates_args=())
def opaque_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`packed_product` as one op the compiler calls as it is and does not look into."""
    return packed_product(x, packed, bias)


@opaque_product.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])  # a packed weight keeps its [out, in] shape


class CompiledLayers(LeanStep):
    """The lean step with its layers traced into one inductor graph; rows without padding only."""

    product = staticmethod(opaque_product)

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.body = torch.compile(self._layers, dynamic=True)  # dynamic: the cache grows one position a step

    def _layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: list[torch.Tensor],
                values: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        grown: list[tuple[torch.Tensor, torch.Tensor]] = []

        def update(i: int):
            def append(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                grown.append((torch.cat([keys[i], k], dim=-2), torch.cat([values[i], v], dim=-2)))
                return grown[-1]
            return append

        for i, layer in enumerate(self.layers):
            x = self.layer(x, layer, cos, sin, None, update(i))
        return x, [k for k, _ in grown], [v for _, v in grown]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`LeanStep._rms` as transformers writes it: its `out=` into another dtype does not trace."""
        x32 = x.to(torch.float32)
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    @torch.no_grad()
    def __call__(self, token_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(mask.all()):
            raise ValueError("the compiled layers take rows without padding only")
        x, cos, sin = self.embed_and_rotary(token_ids, positions)
        x, keys, values = self.body(x, cos, sin, [c.keys for c in cache.layers], [c.values for c in cache.layers])
        for c, k, v in zip(cache.layers, keys, values):
            c.keys, c.values = k, v  # what DynamicCache.update leaves: the grown tensors
        return self.read_out(x)


class StaticDecode:
    """transformers' compiled-decode recipe on a plain model: prefill eagerly into a `StaticCache`,
    then one token a step through `forward` (compiled or not)."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, steps: int, compiled: bool) -> None:
        self.model, self.ids = model, ids
        self.cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + steps + 1)
        self.compiled = compiled
        self.forward = torch.compile(model.forward, fullgraph=True, dynamic=False) if compiled else model.forward

    def __call__(self, steps: int) -> tuple[float, list[int]]:
        # freezing: the weights become constants, laid out for oneDNN (the recipe's CPU setting), for
        # this forward's compile only (it compiles on its first call). Passed as torch.compile's
        # `options` instead, it did not take: the step ran as slowly as uncompiled (an ad hoc run).
        with torch._inductor.config.patch(freezing=self.compiled):
            return self._decode(steps)

    @torch.no_grad()
    def _decode(self, steps: int) -> tuple[float, list[int]]:
        self.cache.reset()
        n = self.ids.shape[1]
        out = self.model(self.ids, past_key_values=self.cache, cache_position=torch.arange(n), use_cache=True)
        token, tokens = out.logits[:, -1:].argmax(-1), []
        t0 = time.perf_counter()
        for i in range(steps):
            tokens.append(int(token))
            out = self.forward(token, past_key_values=self.cache, cache_position=torch.tensor([n + i]), use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - t0) / steps * 1000, tokens


def alternate(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median ms per step of each run, the runs alternated over `repeats`."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def seconds_of(run: Callable[[], object]) -> tuple[float, object]:
    """Seconds of a first call (the compile, where there is one), and what it returned."""
    t0 = time.perf_counter()
    out = run()
    return time.perf_counter() - t0, out


def has_compiler() -> bool:
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="default", choices=["default", "fast"])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if not has_compiler():
        print("No C++ compiler on this machine: inductor cannot compile for the CPU, nothing to time.")
        return
    from ..data.calibration import load_photo
    from ..models.builtin.assemble import build_builtin

    build_builtin(args.variant)
    adapter = BuiltinAdapter(args.variant)
    if adapter.lean_step is None:
        print("This model decodes through transformers' forward (no lean step): nothing to compare.")
        return
    print(f"On {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {adapter.dtype}, the built-in `{args.variant}` model, one row\n")
    request = Request(load_photo("example:flower.jpg"), "Describe this photo.")
    lean, compiled = adapter.lean_step, CompiledLayers(adapter.model)

    def on(step: LeanStep) -> Callable[[], float]:
        def run() -> float:
            adapter.lean_step = step
            return step_ms(adapter, request, 1, args.steps)
        return run

    runs = {"lean step": on(lean), "lean layers compiled": on(compiled)}
    seconds = {name: seconds_of(run)[0] for name, run in runs.items()}
    tokens = {}
    for name, step in (("lean step", lean), ("lean layers compiled", compiled)):
        adapter.lean_step = step
        tokens[name] = greedy_tokens(adapter, request, args.steps)

    plain = BuiltinAdapter(args.variant, dtype=adapter.dtype, pack=False).model  # the recipe lays its weights out itself
    ids = adapter.tokenizer.apply_chat_template([{"role": "user", "content": request.prompt}], add_generation_prompt=True,
                                                return_dict=True, return_tensors="pt")["input_ids"]
    for name, compile_it in (("transformers' forward, static cache", False), ("transformers' forward compiled", True)):
        decode = StaticDecode(plain, ids, args.steps, compile_it)
        seconds[name], (_, tokens[name]) = seconds_of(lambda: decode(args.steps))
        runs[name] = lambda decode=decode: decode(args.steps)[0]
    ms = alternate(runs, args.repeats)

    base = ms["lean step"]
    print(f"ms per step over {args.steps} steps, median of {args.repeats} repeats alternated; first call's seconds (with the compile)\n")
    print("| step | ms | ÷ lean step | first call s | greedy tokens |\n|---|---|---|---|---|")
    reference = {"lean layers compiled": "lean step", "transformers' forward compiled": "transformers' forward, static cache"}
    for name, value in ms.items():
        other = reference.get(name)
        verdict = "—" if other is None else f"{'same as' if tokens[name] == tokens[other] else 'differ from'} {other}"
        print(f"| {name} | {value:.1f} | {value / base:.2f}x | {seconds[name]:.1f} | {verdict} |")


if __name__ == "__main__":
    main()
