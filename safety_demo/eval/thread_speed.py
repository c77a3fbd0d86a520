"""What an idle OpenMP team in another thread costs a decode step: `python -m safety_demo.eval.thread_speed`.

The app decodes on the shared batch's thread while other threads (the one that loaded the model,
Gradio's workers) have run torch ops too. Times ms per `adapter.step` of the built-in model, one
row, in four settings, interleaved over repeats (medians):
  * the main thread decodes, no other team (the CLI, the bench);
  * a second thread decodes while the main thread keeps the team its last op left (the app before
    `models/threads.py`);
  * a second thread decodes inside `all_cores()` in `serve_mode()`: no other team is left (the app now);
  * the same, with `all_cores()` taken and let go around each step, as the engine does when it
    runs outside the shared batch (a branch, the attack composer): the team is made anew each step.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from ..models import threads


def _in_thread(fn):
    box: list = []
    worker = threading.Thread(target=lambda: box.append(fn()))
    worker.start()
    worker.join()
    return box[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="default", choices=["default", "fast"])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cores = threads.serve_mode()  # before any torch work, as app.py does
    gomp = threads.libgomp()
    if gomp is None or cores < 2:
        print(f"Nothing to measure: torch here does not run on libgomp, or has {cores} core(s).")
        return

    from ..data.calibration import load_photo
    from ..models import Request
    from ..models.builtin.adapter import BuiltinAdapter
    from ..models.builtin.assemble import build_builtin
    from ..models.cpu import cpu_name
    from .dtype_speed import step_ms

    build_builtin(args.variant)
    with threads.all_cores():
        adapter = BuiltinAdapter(args.variant)
    request = Request(load_photo("example:flower.jpg"), "Describe this photo.")

    def decode() -> float:
        with threads.all_cores():
            return step_ms(adapter, request, 1, args.steps)

    def claimed_per_step() -> float:
        out = adapter.prefill([request])
        t0 = time.perf_counter()
        for _ in range(args.steps):
            with threads.all_cores():
                out = adapter.step(out.logits.argmax(-1), out.state)
        return (time.perf_counter() - t0) / args.steps * 1000

    def with_idle_team_elsewhere() -> float:
        gomp.omp_set_num_threads(cores)  # the main thread runs one op on every core, as a loading thread did ...
        torch.ones(1 << 22).sum()
        gomp.omp_set_num_threads(1)  # ... and its team stays, idle, while another thread decodes
        try:
            return _in_thread(decode)
        finally:
            gomp.omp_pause_resource_all(threads.OMP_PAUSE_SOFT)

    settings = {
        "main thread, no other team": decode,
        "second thread, the main thread's team idle (the app before)": with_idle_team_elsewhere,
        "second thread in all_cores(), no other team (the app now)": lambda: _in_thread(decode),
        "second thread, all_cores() around each step (a branch, the composer)": lambda: _in_thread(claimed_per_step),
    }
    for fn in settings.values():  # warm-up: oneDNN builds its kernels on first use
        fn()
    runs: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits every setting alike
        for name, fn in settings.items():
            runs[name].append(fn())
    print(f"On {cpu_name()}, {cores} cores, {str(adapter.dtype).removeprefix('torch.')}, torch {torch.__version__}: "
          f"ms per one-row decode step of the built-in `{args.variant}` model over {args.steps} steps, median of {args.repeats}\n")
    base = statistics.median(runs["main thread, no other team"])
    print("| setting | ms per step | vs main thread |\n|---|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
