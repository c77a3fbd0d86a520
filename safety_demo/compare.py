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
from .decoding.engine import Decode, LaneCache, run_to_end
from .methods import METHODS, default_configs, prepare
from .inputs import InputError
from .models.base import ModelLoadError, Request, VLMAdapter
from .probe import DecodingProbe, ProbeError


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
    tokens: list[tuple[str, float | None]] = field(default_factory=list)  # (token text, the probe's P(harmful) or None)
    n_tokens: int = 0
    seconds: float = 0.0
    note: str = ""  # what the method is doing before its first token (e.g. its judge)
    done: bool = False
    error: str | None = None
    trace: Trace | None = None
    cache: LaneCache | None = field(default=None, repr=False)  # the finished lane's KV, kept for branches (keep=True)


def compare(
    adapter: VLMAdapter, request: Request, config: CompareConfig, probe: DecodingProbe | None = None, refresh: float = 0.0,
    time_limit: float | None = None, keep: bool = False,
) -> Iterator[dict[str, Column]]:
    """Yield the columns as tokens arrive, at most once per `refresh` seconds (0: every token);
    the last yield has every trace, probe-scored. After `time_limit` seconds every column ends
    with what it has (its trace says so in `cut`). `keep`: each finished column holds its
    lane's KV cache (`Column.cache`), so `branch` can go on from any of its steps."""
    engine = Engine(adapter, config.generation, isolate_errors=True)
    run = _Run(adapter, request, config, probe, time_limit, keep=keep)
    for _ in _drive(engine, [run], refresh):
        yield run.columns


def compare_requests(
    adapter: VLMAdapter, requests: dict[str, Request], method: str, config: CompareConfig, probe: DecodingProbe | None = None,
    refresh: float = 0.0, time_limit: float | None = None,
) -> Iterator[dict[str, Column]]:
    """One method on several requests (the attack composer's three forms), in one batch per step:
    yields a column per request, keyed like `requests`, as tokens arrive."""
    engine = Engine(adapter, config.generation, isolate_errors=True)
    one = CompareConfig(config.generation, config.configs, (method,))
    runs = {name: _Run(adapter, request, one, probe, time_limit, prefix=f"{name}/") for name, request in requests.items()}
    for _ in _drive(engine, list(runs.values()), refresh):
        yield {name: run.columns[method] for name, run in runs.items()}


def _drive(engine: Engine, runs: list["_Run"], refresh: float) -> Iterator[None]:
    """Start `runs` on `engine` and step it to the end; yield when a column finished or got its
    first token, else at most once per `refresh` seconds, and once more at the end."""
    by_prefix = {run.prefix: run for run in runs}
    for run in runs:
        run.start(engine)
    last = 0.0
    for lane, event in engine.run():
        urgent = by_prefix[lane[: lane.rfind("/") + 1]].handle(lane, event)  # "text/safecode:caption" -> "text/"
        if urgent or time.perf_counter() - last >= refresh:
            last = time.perf_counter()
            yield
    for run in runs:
        run.finish()
    yield


class _Run:
    """One request's comparison inside an engine (its own, or one shared with other requests):
    its columns and the preparations (judge decodes) still running. Its lanes are named
    `prefix + method` (`prefix + method:caption` for a judge decode)."""

    def __init__(self, adapter: VLMAdapter, request: Request, config: CompareConfig, probe: DecodingProbe | None,
                 time_limit: float | None = None, prefix: str = "", keep: bool = False) -> None:
        self.adapter, self.request, self.config, self.probe, self.keep = adapter, request, config, probe, keep
        self.engine: Engine | None = None  # set by `start`: its own engine, or a batch shared with other requests
        self.t0 = time.perf_counter()
        self.time_limit, self.prefix, self.stopped = time_limit, prefix, False
        self.columns = {m: Column(m) for m in config.methods}
        self.preparing: dict[str, tuple[str, Any]] = {}  # lane of a preparation's decode -> (method, its generator)
        self.deferred: list[tuple[str, Any]] = []  # preparations that start after the first token

    @property
    def done(self) -> bool:
        return all(c.done for c in self.columns.values())

    def start(self, engine: Engine) -> None:
        """Prepare every method (no decoding yet) and add the ready ones to `engine`."""
        self.engine = engine
        streaming = False
        for name in self.config.methods:
            try:
                prep = prepare(name, self.adapter, self.request, self.config.configs, self.probe)
            except Exception as exc:  # the judge or the probe failed: this column only
                self._fail(name, exc)
                continue
            if isinstance(prep, Policy):  # ready: it joins the batch now
                self._add(name, prep, self.request)
                streaming = True
            else:  # a preparation: its decodes join after the first token
                self.deferred.append((name, prep))
                self.columns[name].note = "judge: waiting for the first step…"
        if not streaming:  # nothing else to stream first
            self._start_deferred()

    def handle(self, lane: str, event) -> bool:
        """One engine event of this run's lanes; returns whether it must be shown now, not at the next
        refresh: a column (or a judge decode) finished, or a column's first token arrived (its time to
        first token on screen must not wait for the refresh)."""
        lane = lane.removeprefix(self.prefix)
        if not self.stopped and self.time_limit is not None and time.perf_counter() - self.t0 > self.time_limit:
            self.stopped = True
            self.engine.stop(f"stopped at the time limit ({self.time_limit:g} s)", [self.prefix + n for n in self._lanes()])
        if not self.stopped:
            self._start_deferred()  # the judge's rows join after the first token: the others' first token never waits for them
        if lane in self.preparing:  # a judge decode: feed its trace back when it is done
            name, prep = self.preparing[lane]
            if event.done:
                del self.preparing[lane]
                if not self.stopped:
                    self._send(name, prep, event.trace)
            else:
                self.columns[name].note = f"judge: {lane.split(':')[-1]}… {event.text[-60:]}"
            self.columns[name].seconds = time.perf_counter() - self.t0
            return event.done
        self._update(self.columns[lane], event)
        return event.done or event.step == 0

    def finish(self) -> None:
        """Columns still preparing when the engine ended (the time limit) end with a sentence."""
        for name, col in self.columns.items():
            if not col.done:
                self._fail(name, f"the run reached its time limit before {name} could start")

    def _lanes(self) -> list[str]:
        return [n for n, c in self.columns.items() if not c.done] + list(self.preparing)

    def _add(self, lane: str, policy: Policy, request: Request, config: GenerationConfig | None = None) -> None:
        keep = self.keep and lane in self.columns  # a method's lane, not a judge decode
        self.engine.add(self.prefix + lane, policy, request, since=self.t0, config=config or self.config.generation, keep=keep)

    def _start_deferred(self) -> None:
        deferred, self.deferred = self.deferred, []
        for name, prep in deferred:
            self._send(name, prep, None)

    def _send(self, name: str, prep: Any, trace: Trace | None) -> None:
        try:
            decode: Decode = next(prep) if trace is None else prep.send(trace)
            while decode.adapter not in (None, self.adapter):  # another model: decode it alone, here
                decode = prep.send(run_to_end(decode.adapter, decode.request, VanillaPolicy(), decode.config))
        except StopIteration as stop:
            self._add(name, stop.value, self.request)
            return
        except Exception as exc:
            self._fail(name, exc)
            return
        lane = f"{name}:{decode.label}"
        self.preparing[lane] = (name, prep)
        self.columns[name].note = f"judge: {decode.label}…"
        self._add(lane, VanillaPolicy(), decode.request, decode.config)

    def _fail(self, name: str, exc: Exception | str) -> None:
        """End a column with a sentence: the user's own errors as they are, the rest with their type."""
        col = self.columns[name]
        message = str(exc) if isinstance(exc, (str, InputError, ProbeError, ModelLoadError)) else f"{type(exc).__name__}: {exc}"
        col.done, col.error, col.seconds, col.note = True, message, time.perf_counter() - self.t0, ""

    def _update(self, col: Column, event) -> None:
        update_column(col, event, self.adapter, self.probe, self.t0)


def update_column(col: Column, event, adapter: VLMAdapter, probe: DecodingProbe | None, t0: float) -> None:
    """One engine event into its column: a streamed token (with the probe's P), or the finished trace."""
    if event.done:
        trace = event.trace
        if probe is not None:
            add_probe_scores(trace, probe)
        col.done, col.trace, col.text, col.error, col.note, col.cache = True, trace, trace.text, trace.error, "", event.cache
        col.seconds = trace.timings.total
        probs = trace.scores.get("probe.score")
        col.tokens = [(tok, None if probs is None else float(probs[i])) for i, tok in enumerate(trace.answer_tokens)]
        return
    col.text, col.n_tokens, col.note = event.text, event.step + 1, ""
    col.seconds = time.perf_counter() - t0
    if event.token_id in adapter.eos_token_ids:
        return
    score = None
    if probe is not None and event.record.hidden is not None:
        score = float(probe.prob(event.record.hidden))
    col.tokens.append((event.piece, score))


def branch(
    adapter: VLMAdapter, column: Column, step: int, token: int, probe: DecodingProbe | None = None, refresh: float = 0.0,
) -> Iterator[Column]:
    """`column`'s answer with `token` at `step` instead of its method's choice, decoded on by the
    same method from the kept KV cache (no prefill); yields the branch's column as it fills.

    The column must come from `compare(..., keep=True)` (or be a branch itself).
    """
    if column.cache is None:
        raise InputError("This answer kept no cache to branch from: run it again, then branch.")
    if not 0 <= step < len(column.cache.steps):
        raise InputError(f"Step {step} is not in this answer (0 to {len(column.cache.steps) - 1}).")
    if token not in column.cache.steps[step].candidate_ids:
        raise InputError(f"Token id {token} was not a candidate at step {step}: pick one of the candidates the inspector lists.")
    t0 = time.perf_counter()
    engine = Engine(adapter, column.cache.config, isolate_errors=True)
    engine.branch(column.method, column.cache, step, token, since=t0)
    col = Column(column.method, tokens=list(column.tokens[:step]), n_tokens=step)
    last = 0.0
    for _, event in engine.run():
        update_column(col, event, adapter, probe, t0)
        if event.done or time.perf_counter() - last >= refresh:
            last = time.perf_counter()
            yield col
