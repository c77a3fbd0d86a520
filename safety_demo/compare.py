"""The side-by-side run: every chosen method on one request, in one batch per step, streaming.

Library code (no Gradio): the app, the `compare` command and the benchmark call `compare`.
What a method must decode before it can start (SafeCoDe's caption and verdict) runs as extra
rows of the same batch, so the other columns stream from the first step; the method joins
the batch when its preparation returns its policy. A method that fails ends alone, with a
sentence in its column.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from .decoding import Engine, GenerationConfig, Policy, Trace, VanillaPolicy, add_probe_scores
from .decoding.engine import Decode, run_to_end
from .methods import METHODS, default_configs, prepare
from .models.base import Request, VLMAdapter
from .probe import DecodingProbe
from .viz.tokens import highlighted_tokens


@dataclass
class CompareConfig:
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    configs: dict[str, Any] = field(default_factory=default_configs)  # method name -> its config dataclass
    methods: tuple[str, ...] = tuple(METHODS)  # which columns to run: method or variant names


@dataclass
class Column:
    """What one answer column shows at this moment."""

    method: str
    text: str = ""
    tokens: list[tuple[str, float | None]] = field(default_factory=list)  # (token, 2·P(harmful) − 1)
    n_tokens: int = 0
    seconds: float = 0.0
    note: str = ""  # what the method is doing before its first token (e.g. its judge)
    done: bool = False
    error: str | None = None
    trace: Trace | None = None


def compare(
    adapter: VLMAdapter, request: Request, config: CompareConfig, probe: DecodingProbe | None = None, refresh: float = 0.0
) -> Iterator[dict[str, Column]]:
    """Yield the columns as tokens arrive, at most once per `refresh` seconds (0: every token);
    the last yield has every trace, probe-scored."""
    run = _Run(adapter, request, config, probe)
    last = 0.0
    for columns, finished in run.events():
        now = time.perf_counter()
        if finished or now - last >= refresh:
            last = now
            yield columns
    yield run.columns


class _Run:
    """One comparison: the engine, the columns, and the preparations still decoding."""

    def __init__(self, adapter: VLMAdapter, request: Request, config: CompareConfig, probe: DecodingProbe | None) -> None:
        self.adapter, self.request, self.config, self.probe = adapter, request, config, probe
        self.t0 = time.perf_counter()
        self.engine = Engine(adapter, config.generation, isolate_errors=True)
        self.columns = {m: Column(m) for m in config.methods}
        self.preparing: dict[str, tuple[str, Any]] = {}  # lane of a preparation's decode -> (method, its generator)
        self.deferred: list[tuple[str, Any]] = []  # preparations that start after the first token
        for name in config.methods:
            try:
                self._advance(name, prepare(name, adapter, request, config.configs, probe))
            except Exception as exc:  # the judge or the probe failed: this column only
                self._fail(name, exc)
        if not self.engine.lanes:  # nothing else to stream first
            self._start_deferred()

    def _start_deferred(self) -> None:
        deferred, self.deferred = self.deferred, []
        for name, prep in deferred:
            self._send(name, prep, None)

    def events(self) -> Iterator[tuple[dict[str, Column], bool]]:
        for lane, event in self.engine.run():
            self._start_deferred()  # the judge's rows join after the first token: the others' first token never waits for them
            if lane in self.preparing:  # a judge decode: feed its trace back when it is done
                name, prep = self.preparing[lane]
                if event.done:
                    del self.preparing[lane]
                    self._send(name, prep, event.trace)
                else:
                    self.columns[name].note = f"judge: {lane.split(':')[-1]}… {event.text[-60:]}"
                self.columns[name].seconds = time.perf_counter() - self.t0
                yield self.columns, event.done
                continue
            self._update(self.columns[lane], event)
            yield self.columns, event.done

    def _advance(self, name: str, prep: Policy | Any) -> None:
        """Start `name`: its policy joins the batch now; a preparation's decodes join after the first token."""
        if isinstance(prep, Policy):
            self.engine.add(name, prep, self.request, since=self.t0)
        else:
            self.deferred.append((name, prep))
            self.columns[name].note = "judge: waiting for the first step…"

    def _send(self, name: str, prep: Any, trace: Trace | None) -> None:
        try:
            decode: Decode = next(prep) if trace is None else prep.send(trace)
            while decode.adapter not in (None, self.adapter):  # another model: decode it alone, here
                decode = prep.send(run_to_end(decode.adapter, decode.request, VanillaPolicy(), decode.config))
        except StopIteration as stop:
            self.engine.add(name, stop.value, self.request, since=self.t0)
            return
        except Exception as exc:
            self._fail(name, exc)
            return
        lane = f"{name}:{decode.label}"
        self.preparing[lane] = (name, prep)
        self.columns[name].note = f"judge: {decode.label}…"
        self.engine.add(lane, VanillaPolicy(), decode.request, since=self.t0, config=decode.config)

    def _fail(self, name: str, exc: Exception) -> None:
        col = self.columns[name]
        col.done, col.error, col.seconds = True, f"{type(exc).__name__}: {exc}", time.perf_counter() - self.t0

    def _update(self, col: Column, event) -> None:
        if event.done:
            trace = event.trace
            if self.probe is not None:
                add_probe_scores(trace, self.probe)
            col.done, col.trace, col.text, col.error, col.note = True, trace, trace.text, trace.error, ""
            col.seconds = trace.timings.total
            col.tokens = highlighted_tokens(trace)[: len(trace.answer_tokens)]  # without the end-of-turn token
            return
        col.text, col.n_tokens, col.note = event.text, event.step + 1, ""
        col.seconds = time.perf_counter() - self.t0
        if event.token_id in self.adapter.eos_token_ids:
            return
        score = None
        if self.probe is not None and event.record.hidden is not None:
            score = float(2.0 * self.probe.prob(event.record.hidden) - 1.0)
        col.tokens.append((event.piece, score))
