"""float32 vs bfloat16 decode steps of the built-in model: `python -m safety_demo.eval.dtype_speed`.

Times `adapter.step` (one decode step, KV cache warm) for 1, 3 and 8 rows in each dtype, medians
over repeats, and prints the ratios measured in this one run. Why it matters: the side-by-side
view decodes 3 to 8 rows per step, and only a kernel whose cost barely grows with the row count
makes three answers cost about one.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from ..models import Request
from ..models.builtin.adapter import BuiltinAdapter
from ..models.builtin.assemble import build_builtin
from ..models.cpu import cpu_name

ROWS = (1, 3, 8)


def step_ms(adapter: BuiltinAdapter, request: Request, rows: int, steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        out = adapter.prefill([request] * rows)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = adapter.step(out.logits.argmax(-1), out.state)
        times.append((time.perf_counter() - t0) / steps * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="default", choices=["default", "fast"])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    build_builtin(args.variant)
    from ..data.calibration import load_photo

    request = Request(load_photo("example:flower.jpg"), "Describe this photo.")
    ms: dict[tuple[str, int], float] = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        adapter = BuiltinAdapter(args.variant, dtype=dtype)
        for rows in ROWS:
            ms[(name, rows)] = step_ms(adapter, request, rows, args.steps, args.repeats)
        del adapter
    print(f"Decode step of the built-in `{args.variant}` model on {cpu_name()}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} x {args.steps} steps\n")
    print("| rows | float32 ms/step | bfloat16 ms/step | bf16 / fp32 | fp32 vs 1 row | bf16 vs 1 row |\n|---|---|---|---|---|---|")
    for rows in ROWS:
        f, b = ms[("float32", rows)], ms[("bfloat16", rows)]
        print(f"| {rows} | {f:.1f} | {b:.1f} | {b / f:.2f} | {f / ms[('float32', 1)]:.2f}x | {b / ms[('bfloat16', 1)]:.2f}x |")


if __name__ == "__main__":
    main()
