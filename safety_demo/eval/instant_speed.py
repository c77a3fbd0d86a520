"""What a click on an example costs, stored against live: `python -m safety_demo.eval.instant_speed`.

For each example: the live run (`ui.run.generate`, what Generate does, every view included) and
the stored one (`ui.instant.show`, what a click does), medians over `--repeats`. The stored runs
are made first if missing (what the app does at start-up). Also the memory a live run keeps for
branches (the kept KV caches of its three columns), which its browser session holds.
"""
from __future__ import annotations

import argparse
import statistics
import time

from ..data.examples import EXAMPLES, EXAMPLES_DIR
from ..methods import knob_values
from ..models import DEFAULT_MODEL
from ..models.cpu import cpu_name
from ..ui import instant
from ..ui import run as run_views


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def kept_megabytes(run: run_views.Run) -> float:
    """Bytes of the KV caches a run keeps for branches, in MB."""
    total = 0
    for col in run.columns.values():
        for state, _ in (col.cache.rows.values() if col.cache else []):
            total += sum(layer.keys.nbytes + layer.values.nbytes for layer in state.cache.layers)
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    instant.precompute(args.model)
    print(f"{args.model} on {cpu_name()}; medians of {args.repeats}\n")
    print("| example | live run (s) | stored, shown (s) | live ÷ stored | KV kept for branches (MB) |\n|---|---|---|---|---|")
    for ex in EXAMPLES:
        image = str(EXAMPLES_DIR / ex.file)
        live = statistics.median(_seconds(lambda: list(run_views.generate(image, ex.prompt, args.model, knob_values()))) for _ in range(args.repeats))
        shown = statistics.median(
            _seconds(lambda: instant.show(image, ex.prompt, args.model, knob_values(), "Probe axis", "safesteer")) for _ in range(args.repeats)
        )
        *_, done = run_views.generate(image, ex.prompt, args.model, knob_values())
        print(f"| {ex.name} | {live:.1f} | {shown:.2f} | {live / shown:.0f}× | {kept_megabytes(done.run):.1f} |")


if __name__ == "__main__":
    main()
