"""Many visitors, one batch: requests that arrive while a batch is decoding join it.

One `SharedBatch` per model owns one `Engine` and one thread that steps it. A request's methods
join between two steps (`Engine.add`: their rows are prefilled and appended to the shared cache),
so several visitors' rows share one forward per step: continuous batching. Each request sees
only its own columns, through a queue, redrawn at most every `refresh` seconds. A failure of
the model forward itself (out of memory) ends every request in that batch with the error and
the next batch starts on a fresh engine.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Iterator

from .compare import Column, CompareConfig, _Run
from .decoding import Engine
from .models.base import Request, VLMAdapter
from .models.threads import all_cores
from .probe import DecodingProbe

log = logging.getLogger(__name__)
_DONE = object()


class SharedBatch:
    """A model's one engine, stepped by one thread; `compare` streams a request through it."""

    def __init__(self, adapter: VLMAdapter) -> None:
        self.adapter = adapter
        self._inbox: list[tuple[_Run, queue.Queue, float]] = []  # requests not started yet
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.peak_rows = 0  # most rows one forward carried (how much sharing happened)

    def close(self) -> None:
        """Let the batch thread end once its requests are done (the model was unloaded)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def compare(
        self, request: Request, config: CompareConfig, probe: DecodingProbe | None = None, refresh: float = 0.0,
        time_limit: float | None = None, keep: bool = False,
    ) -> Iterator[dict[str, Column]]:
        """`compare.compare`, with this request's lanes decoding in the shared batch."""
        inbox: queue.Queue = queue.Queue()
        with self._cond:
            run = _Run(self.adapter, request, config, probe, time_limit, prefix=f"r{next(self._ids)}/", keep=keep)
            self._inbox.append((run, inbox, refresh))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"batch-{self.adapter.name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        while (item := inbox.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    # -- the batch thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        engine = Engine(self.adapter, isolate_errors=True)
        runs: dict[str, tuple[_Run, queue.Queue, float, list[float]]] = {}  # prefix -> run, its queue, refresh, [last push]
        while True:
            with self._cond:
                while not self._inbox and not runs and not self._closed:
                    self._cond.wait()
                if self._closed and not self._inbox and not runs:
                    return
            try:
                with all_cores():  # every core while a batch runs; none held while it waits (models/threads.py)
                    self._decode(engine, runs)
            except Exception as exc:  # the model forward failed: every request in this batch ends with it
                log.warning("shared batch failed: %s", exc)
                for _, out, _, _ in runs.values():
                    out.put(exc)
                runs.clear()
                engine = Engine(self.adapter, isolate_errors=True)

    def _decode(self, engine: Engine, runs: dict) -> None:
        """Step the engine until it is empty, admitting requests that arrive meanwhile."""
        self._admit(engine, runs)
        for lane, event in engine.run():
            prefix = lane.split("/", 1)[0] + "/"
            run, out, refresh, last = runs[prefix]
            urgent = run.handle(lane, event)  # a column finished or got its first token
            self.peak_rows = max(self.peak_rows, len(engine.rows))
            if urgent or time.perf_counter() - last[0] >= refresh:
                last[0] = time.perf_counter()
                out.put(_snapshot(run.columns))
            self._close_done(runs)
            self._admit(engine, runs)  # requests that arrived meanwhile join between two steps
        for run, out, _, _ in runs.values():  # the engine is empty: whatever is left is done
            run.finish()
            out.put(_snapshot(run.columns))
            out.put(_DONE)
        runs.clear()

    def _admit(self, engine: Engine, runs: dict) -> None:
        with self._cond:
            arrived, self._inbox = self._inbox, []
        for run, out, refresh in arrived:
            run.start(engine)  # its lanes go into the shared engine (its clock started when it was sent)
            runs[run.prefix] = (run, out, refresh, [0.0])
            if run.done:  # every method failed before decoding
                out.put(_snapshot(run.columns))
        self._close_done(runs)

    def _close_done(self, runs: dict) -> None:
        for prefix in [p for p, (run, _, _, _) in runs.items() if run.done and not run.preparing]:
            run, out, _, _ = runs.pop(prefix)
            out.put(_snapshot(run.columns))
            out.put(_DONE)


def _snapshot(columns: dict[str, Column]) -> dict[str, Column]:
    """A copy the request's thread can read while the batch thread goes on."""
    return {m: replace(c, tokens=list(c.tokens)) for m, c in columns.items()}


_BATCHES: dict[int, SharedBatch] = {}
_LOCK = threading.Lock()


def shared_batch(adapter: VLMAdapter) -> SharedBatch:
    """The one shared batch of `adapter` in this process; batches of unloaded models are closed,
    so they hold no model in memory."""
    from .models import loaded_adapters

    with _LOCK:
        live = {id(a) for a in loaded_adapters()} | {id(adapter)}
        for key in [k for k in _BATCHES if k not in live]:
            _BATCHES.pop(key).close()
        batch = _BATCHES.get(id(adapter))
        if batch is None or batch.adapter is not adapter:  # none yet, or an old id reused by a new model
            if batch is not None:
                batch.close()
            batch = _BATCHES[id(adapter)] = SharedBatch(adapter)
        return batch
