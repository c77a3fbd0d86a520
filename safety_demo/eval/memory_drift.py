"""`python -m safety_demo.eval.memory_drift`: how this host's memory speed moves over a minute.

One bfloat16 packed product over 256 MB (the bench's fastest probe on CPUs with native bf16; a
float32 sum over 1 GB elsewhere), timed back to back; the median GB/s of each second is printed.
On a shared host the figure can halve and recover within seconds, which is why the bench
measures its bound right before and after the vanilla run it bounds (`bench.Bandwidth`).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..models.cpu import cpu_name
from .bench import Bandwidth


def series(seconds: float) -> list[float]:
    """Median GB/s of each whole second over `seconds`."""
    streams = Bandwidth().streams()  # the bench's own probes
    stream, size = streams.get("bf16 packed linear, 1 row, 256 MB") or streams["fp32 sum, 1 GB"]
    per_second: dict[int, list[float]] = {}
    start = time.perf_counter()
    with torch.no_grad():
        stream()  # first touch
        while (now := time.perf_counter()) - start < seconds:
            stream()
            per_second.setdefault(int(now - start), []).append(size / (time.perf_counter() - now) / 1e9)
    return [statistics.median(values) for _, values in sorted(per_second.items())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)
    values = series(args.seconds)
    print(f"On {cpu_name()}, {torch.get_num_threads()} threads: GB/s, the median of each second")
    print(" ".join(f"{v:.0f}" for v in values))
    print(f"min {min(values):.0f}, median {statistics.median(values):.0f}, max {max(values):.0f} GB/s")


if __name__ == "__main__":
    main()
