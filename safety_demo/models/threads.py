"""One OpenMP team at a time in a server: the thread that decodes gets every core, the others one.

PyTorch's CPU kernels run on OpenMP (GNU libgomp in the Linux wheels). Every Python thread that
runs a parallel torch op gets a team of worker threads of its own, and keeps it, idle, after the
op. libgomp counts every worker of every team; once they outnumber the cores, a worker waits for
the next op by sleeping instead of spinning, and waking it costs more than a small kernel does.
The app loads its model on one thread and decodes on another (the shared batch's), so its
decode steps ran that way: on a 2-core AMD EPYC (avx512_bf16), a step of the built-in model took
63.5 ms in the second thread against 46.5 ms with the first thread's team gone
(`python -m safety_demo.eval.thread_speed`).

So a server calls `serve_mode()` once, before any torch work: from then on a thread's torch ops
run on one core (no team), except inside `all_cores()`, which gives the calling thread every core
and releases its team when the outermost `all_cores()` ends. Without `serve_mode()` (the CLI,
the library, the tests), `all_cores()` does nothing: every thread has every core, as torch sets.
Where torch does not use libgomp (macOS, Windows), `serve_mode()` changes nothing.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

OMP_PAUSE_SOFT = 1  # omp_pause_resource_all(omp_pause_soft): the calling thread's team exits
_local = threading.local()
_cores: int | None = None  # set by serve_mode: the cores a thread gets inside all_cores()


@functools.cache
def libgomp() -> ctypes.CDLL | None:
    """torch's own libgomp, as loaded in this process (None where torch uses another runtime)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "libgomp" in line and line.split()[-1].startswith("/")}
    torch_dir = os.path.dirname(torch.__file__)
    for path in sorted(paths, key=lambda p: not p.startswith(torch_dir)):  # torch's copy first
        lib = ctypes.CDLL(path)  # the loaded library itself, not a second copy
        if all(hasattr(lib, f) for f in ("omp_set_num_threads", "omp_pause_resource_all")):
            return lib
    return None


def serve_mode() -> int:
    """From now on, torch ops run on one core in every thread, outside `all_cores()`. Returns the
    cores `all_cores()` gives (torch's thread count before the call). Call it before other threads
    run torch ops: a thread that already ran a parallel op keeps its team (the caller's goes)."""
    global _cores
    if _cores is None and libgomp() is not None:
        _cores = torch.get_num_threads()
        torch.set_num_threads(1)  # threads started from now on begin with one
        libgomp().omp_pause_resource_all(OMP_PAUSE_SOFT)  # this thread's team, if it had one, goes
    return _cores or torch.get_num_threads()


def serving() -> bool:
    return _cores is not None


@contextmanager
def all_cores() -> Iterator[None]:
    """Every core for this thread's torch ops inside; after the outermost one, its team exits (in
    `serve_mode`; otherwise nothing happens). Do not hold it across a `yield`: a generator's next
    step may run on another thread."""
    depth = getattr(_local, "depth", 0)
    claim = _cores is not None and depth == 0
    if claim:
        torch.get_num_threads()  # torch's own per-thread set-up first: it would undo ours
        libgomp().omp_set_num_threads(_cores)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth
        if claim:
            libgomp().omp_set_num_threads(1)
            libgomp().omp_pause_resource_all(OMP_PAUSE_SOFT)
