"""One step-wise decoding engine for every method.

The engine owns the model calls and the KV cache; a `Policy` only turns what it is shown
into a decision. Every live method ("lane") has rows in ONE batch, and each step is ONE
forward over all of them: vanilla's row, SafeCoDe's real and noised rows, SafeSteer's k
candidate rows. A lane can join between steps (`Engine.add`); its rows are prefilled and
appended to the shared cache. `generate` yields one `StepEvent` per token, then a final
event carrying the `Trace`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generator, Iterator

import numpy as np
import torch

from ..inputs import LIMITS, InputError
from ..models.base import DecodeState, ForwardOut, Request, VLMAdapter
from ..models.threads import all_cores
from ..trace import StepRecord, Timings, Trace
from .policy import RUN_FACTS, Decision, Policy, VanillaPolicy, View
from .rows import RowMap


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128  # stop after this many generated tokens
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(z / T)
    top_p: float = 1.0  # nucleus mass kept when sampling (1 = off)
    seed: int = 0  # seeds sampling and any noise a method draws: same seed, same output
    trace_top_k: int = 5  # candidates recorded per step in the trace
    keep_hidden: bool = True  # keep each token's hidden state (probe scores, trajectory map)
    ignore_eos: bool = False  # benchmarks: always decode max_new_tokens

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= LIMITS.max_new_tokens:
            raise InputError(f"max_new_tokens must be between 1 and {LIMITS.max_new_tokens}, got {self.max_new_tokens}.")
        if not 0.0 <= self.temperature <= 5.0:
            raise InputError(f"temperature must be between 0 and 5, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not 1 <= self.trace_top_k <= 50:
            raise InputError(f"trace_top_k must be between 1 and 50, got {self.trace_top_k}.")


@dataclass
class StepEvent:
    """One streamed token; the last event has `done=True` and the whole `trace`."""

    step: int
    token_id: int
    piece: str  # this token's text
    text: str  # the answer so far
    done: bool = False
    trace: Trace | None = None
    record: StepRecord | None = field(default=None, repr=False)
    cache: "LaneCache | None" = field(default=None, repr=False)  # on the done event of a lane added with keep=True


def sample_token(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> int:
    """Greedy when temperature is 0, else temperature + top-p sampling. logits: [V]."""
    if config.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)  # [V]
    if config.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= config.top_p  # keep the top-p mass
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))



@dataclass(frozen=True)
class Decode:
    """A decode a method needs before it can start (SafeCoDe's caption, its verdict): vanilla, greedy."""

    request: Request
    config: GenerationConfig
    label: str  # "caption", "verdict": names its lane in the batch
    adapter: VLMAdapter | None = None  # the model that runs it (a second judge); None = the decoding model


Preparation = Generator[Decode, Trace, Any]  # yields the decodes it needs, is sent their traces, returns its result


def drive(prep: Preparation | Any, adapter: VLMAdapter) -> Any:
    """Run a preparation's decodes one after the other, alone; return its result.

    Anything that is not a generator is already the result (a method with nothing to prepare).
    """
    if not isinstance(prep, Generator):
        return prep
    try:
        decode = next(prep)
        while True:
            decode = prep.send(run_to_end(decode.adapter or adapter, decode.request, VanillaPolicy(), decode.config))
    except StopIteration as stop:
        return stop.value


@dataclass
class Lane:
    """One method's decode: its policy, what it shows the policy next and what it has produced."""

    name: str
    policy: Policy
    requests: list[Request]  # its rows: [real] or [real, noised]; row 0 is the user's request
    rng: torch.Generator  # its own, so a method samples the same alone or side by side
    t_added: float  # when the request for this lane started (TTFT counts from here)
    config: GenerationConfig  # its own length, candidates recorded and hidden states kept
    logits: torch.Tensor | None = None  # [R, V] the model's own next-token logits of its rows
    hidden: torch.Tensor | None = None  # [R, D] the hidden states that produced them
    state: Any = None  # the policy's per-run state, from its last decision
    view: View | None = None  # what the policy was shown this step
    decision: Decision | None = None  # and what it answered
    token: int = -1  # the sampled or forced token of a non-lookahead step
    generated: list[int] = field(default_factory=list)
    text: str = ""  # adapter.decode(generated), kept beside it: decoded once a step, not once per use
    steps: list[StepRecord] = field(default_factory=list)
    h0: np.ndarray | None = None  # [D] last prompt position at prefill
    shared: set[str] = field(default_factory=set)  # lanes that were in a forward with this one
    cut: str | None = None  # why it ended early (Engine.stop)
    prefill_seconds: float = 0.0
    t_prefilled: float = 0.0
    ttft: float | None = None
    error: str | None = None
    alive: list[int] = field(default_factory=list)  # which of `requests` its current rows are (SafeCoDe drops row 1)
    keep: bool = False  # keep its rows' KV caches as they leave, for branches (`LaneCache`)
    kept: dict[int, tuple[DecodeState, int]] = field(default_factory=dict)  # request row -> its KV when it left, tokens in it
    states: list[Any] = field(default_factory=list)  # the policy's state after each step
    script: StepRecord | None = None  # a branch's first step: the user's token, fed without asking the policy
    script_keep: tuple[int, ...] = ()  # the rows that go on after it
    resume: list[DecodeState] | None = None  # a branch's rows, cut back to its step: they join without a prefill


@dataclass
class LaneCache:
    """A finished lane, kept so a branch can go on from any of its steps without a prefill.

    A row's KV cache only grows, so the copy taken when it left the batch holds every
    earlier step too: dropping its last positions gives the cache before step s.
    """

    policy: Policy
    requests: list[Request]
    config: GenerationConfig
    rows: dict[int, tuple[DecodeState, int]]  # request row (0 real, 1 noised) -> its KV when it left, answer tokens in it
    steps: list[StepRecord]
    states: list[Any]  # the policy's state after each step
    h0: np.ndarray | None


class Engine:
    """A shared batch that lanes join and leave; `run` streams (lane name, event) pairs.

    With `isolate_errors`, an exception inside one method (its rows or its policy) ends that
    method only: its trace carries `error` and the others finish. Errors of the model forward
    itself always propagate.
    """

    def __init__(self, adapter: VLMAdapter, config: GenerationConfig | None = None, isolate_errors: bool = False) -> None:
        self.adapter, self.config, self.isolate_errors = adapter, config or GenerationConfig(), isolate_errors
        self.rows = RowMap()  # which batch rows are whose
        self.state: DecodeState | None = None  # the KV cache of every row in `rows`, in order
        self.lanes: dict[str, Lane] = {}
        self._waiting: list[Lane] = []  # added, not yet prefilled
        self._ended: list[Lane] = []  # finished or failed, done event not yet sent
        self._stopping: dict[str | None, str] = {}  # lane (None: every lane) -> why it ends before the next step

    def add(self, name: str, policy: Policy, request: Request, since: float | None = None, config: GenerationConfig | None = None,
            keep: bool = False) -> None:
        """Queue a method; it joins the batch before the next step, at its own step 0.

        `config` replaces the engine's for this lane (a judge's short greedy decode). `keep`:
        its done event carries a `LaneCache`, from which `branch` can go on at any step.
        """
        if name in self.lanes:
            raise ValueError(f"a lane named {name!r} is already running")
        config = config or self.config
        lane = Lane(name, policy, [], torch.Generator().manual_seed(config.seed), since or time.perf_counter(), config, keep=keep)
        self.lanes[name] = lane
        try:
            lane.requests = policy.rows(request, config.seed)  # [real] or [real, noised]
            lane.alive = list(range(len(lane.requests)))
            self._waiting.append(lane)
        except Exception as exc:
            self._fail(lane, exc)

    def branch(self, name: str, cache: LaneCache, step: int, token: int, since: float | None = None) -> None:
        """Queue a decode that takes `token` at `step` instead of the kept lane's own, then goes on
        with the same method. It joins with the kept KV cut back to `step` (no prefill), the
        rows the method was feeding there and the policy's state after that step; it samples
        with its own generator, seeded from the seed and the step."""
        if name in self.lanes:
            raise ValueError(f"a lane named {name!r} is already running")
        if not 0 <= step < len(cache.steps):
            raise ValueError(f"step {step} is not in the kept answer (0 to {len(cache.steps) - 1})")
        rows = [r for r, (_, n) in sorted(cache.rows.items()) if r == 0 or step < n]  # the noised row only inside SafeCoDe's window
        lane = Lane(name, cache.policy, cache.requests, torch.Generator().manual_seed(cache.config.seed + step + 1),
                    since or time.perf_counter(), cache.config, keep=True, alive=rows, h0=cache.h0)
        lane.generated, lane.steps = [s.token_id for s in cache.steps[:step]], list(cache.steps[:step])
        lane.text = self.adapter.decode(lane.generated)
        lane.states, lane.state = list(cache.states[:step]), cache.states[step]
        lane.script = replace(cache.steps[step], token_id=token, token=self.adapter.token_texts([token])[0], action="branched", hidden=None)
        lane.script_keep = tuple(i for i, r in enumerate(rows) if r == 0 or step + 1 < cache.rows[r][1])
        lane.resume = [cache.rows[r][0].copy_rows([0]).drop_last(cache.rows[r][1] - step) for r in rows]  # copies: branch again later
        self.lanes[name] = lane
        self._waiting.append(lane)

    def stop(self, reason: str, lanes: list[str] | None = None) -> None:
        """End `lanes` (default: every lane) before the next step, each with the tokens it has (`trace.cut`)."""
        for name in lanes if lanes is not None else [None]:
            self._stopping[name] = reason

    def run(self) -> Iterator[tuple[str, StepEvent]]:
        """Step until every lane is done: (lane, event) per token, then one done event per lane."""
        while self._waiting or len(self.rows):
            self._end_stopped()  # lanes asked to stop (a request's time limit) leave with what they have
            self._join_waiting()  # prefill newcomers' rows and append them to the cache
            feeds = {n: f for n in self.rows.names if (f := self._decide(self.lanes[n])) is not None}  # policy.step per lane
            for name in feeds:
                self.lanes[name].shared.update(feeds)
            yield from self._flush()
            if not feeds:
                self._gather(self.rows.regroup({}))
                continue
            index = self.rows.regroup({n: rows for n, (rows, _) in feeds.items()})  # [B] batch rows fed this step
            self._gather(index)  # e.g. SafeSteer's row 0 repeated k times, one per candidate
            tokens = torch.tensor([t for _, toks in feeds.values() for t in toks], dtype=torch.long, device=self.adapter.device)  # [B]
            t0 = time.perf_counter()
            with all_cores():  # a no-op outside a server (models/threads.py)
                out = self.adapter.step(tokens, self.state)  # ONE forward for all: logits [B, V], hidden [B, D]
            seconds = time.perf_counter() - t0
            keep = {}
            for name in self.rows.names:  # lookahead lanes choose, every lane records its token
                event, keep[name] = self._advance(self.lanes[name], out, self.rows.block(name), seconds)
                if event is not None:
                    yield name, event
            self.state = out.state
            self._gather(self.rows.regroup(keep))  # finished lanes leave; chosen candidates stay
            yield from self._flush()
        yield from self._flush()  # lanes that failed before they ever joined

    # -- the pieces of one step ---------------------------------------------------------------

    def _join_waiting(self) -> None:
        """One prefill for the newcomers' distinct rows (SafeSteer shares vanilla's real row);
        branches join with their kept rows, no prefill."""
        waiting, self._waiting = self._waiting, []
        for lane in (w for w in waiting if w.resume is not None):
            rows, lane.resume = lane.resume, None
            joined = rows[0] if len(rows) == 1 else rows[0].concat(rows[1])
            self.state = joined if self.state is None or not len(self.rows) else self.state.concat(joined)
            lane.t_prefilled = time.perf_counter()
            self.rows.add(lane.name, len(rows))
        lanes = [w for w in waiting if w.script is None]
        if not lanes:
            return
        unique: list[Request] = []
        for req in (r for lane in lanes for r in lane.requests):
            if not any(req is u for u in unique):
                unique.append(req)
        layout = [next(i for i, u in enumerate(unique) if u is r) for lane in lanes for r in lane.requests]
        t0 = time.perf_counter()
        with all_cores():
            out = self.adapter.prefill(unique)  # logits [U, V], hidden [U, D], one KV cache
        if layout != list(range(len(unique))):
            out = out.index_select(layout)  # [R_new] rows: lane blocks
        now = time.perf_counter()
        self.state = out.state if self.state is None or not len(self.rows) else self.state.concat(out.state)
        start = 0
        for lane in lanes:
            rows = range(start, start + len(lane.requests))
            start = rows.stop
            lane.logits, lane.hidden = out.logits[rows.start : rows.stop], out.hidden[rows.start : rows.stop]
            lane.h0 = lane.hidden[0].float().cpu().numpy()
            lane.prefill_seconds, lane.t_prefilled = now - t0, now
            self.rows.add(lane.name, len(rows))

    def _decide(self, lane: Lane) -> tuple[list[int], list[int]] | None:
        """Ask the policy; return (its rows to feed, their tokens), or None if it failed."""
        if lane.script is not None:  # a branch's first step: the user's token on every row the method feeds
            lane.token = lane.script.token_id
            return list(range(len(lane.alive))), [lane.token] * len(lane.alive)
        try:
            view = View(len(lane.generated), lane.logits, lane.hidden, tuple(lane.generated), lane.text, lane.state, rng=lane.rng)
            d = lane.policy.step(view)
            if d.steer_hidden is not None:  # MSAV: re-read row 0's logits from the moved hidden state, then decide again
                steered = lane.logits.clone()
                steered[0] = self.adapter.logits_from_hidden(d.steer_hidden[None].to(lane.hidden.dtype))[0]
                view = replace(view, logits=steered, state=d.state, steered=True)
                d = lane.policy.step(view)
            lane.view, lane.decision = view, d
            if d.lookahead is not None:  # k candidates, each one step ahead on row 0's prefix
                return [0] * len(d.lookahead), d.lookahead.tolist()
            lane.token = d.forced_token if d.forced_token is not None else sample_token(d.logits, lane.config, lane.rng)
            n = lane.logits.shape[0]  # every row of the method takes the same token
            return list(range(n)), [lane.token] * n
        except Exception as exc:
            self._fail(lane, exc)
            return None

    def _advance(self, lane: Lane, out: ForwardOut, block: range, seconds: float) -> tuple[StepEvent | None, list[int]]:
        """Choose among candidates, record the step; return the event and the rows that go on."""
        if lane.script is not None:  # a branch's first step: the record is the kept one with the user's token
            record, rows, lane.script = lane.script, list(lane.script_keep), None
            record.hidden = out.hidden[block[0]].float().cpu().numpy() if lane.config.keep_hidden else None
            return self._commit(lane, out, block, rows, record, lane.state, seconds, lookahead=False)
        d, rows = lane.decision, list(range(len(block)))
        try:
            if d.lookahead is not None:
                d = lane.policy.choose(lane.view, d, out.hidden[block.start : block.stop])  # from the k hidden states [k, D]
                lane.token, rows = int(d.lookahead[d.choice]), [d.choice]
            elif d.keep_rows is not None:
                rows = list(d.keep_rows)  # e.g. SafeCoDe stops decoding its noised row
        except Exception as exc:
            self._fail(lane, exc)
            return None, []
        record = _record(self.adapter, lane.logits[0], d, lane.token, out.hidden[block[rows[0]]], lane.config)
        return self._commit(lane, out, block, rows, record, d.state, seconds, lookahead=d.lookahead is not None)

    def _commit(self, lane: Lane, out: ForwardOut, block: range, rows: list[int], record: StepRecord, state: Any, seconds: float,
                lookahead: bool) -> tuple[StepEvent, list[int]]:
        """Append the step to the lane; keep the KV of rows that leave (for branches); say if it ends."""
        picked = [block[i] for i in rows]
        record.seconds = seconds
        lane.steps.append(record)
        lane.generated.append(lane.token)
        lane.text = self.adapter.decode(lane.generated)
        lane.states.append(state)
        lane.logits, lane.hidden, lane.state = out.logits[picked], out.hidden[picked], state
        lane.ttft = lane.ttft if lane.ttft is not None else time.perf_counter() - lane.t_added
        event = StepEvent(len(lane.steps) - 1, lane.token, record.token, lane.text, record=record)
        stop = (lane.token in self.adapter.eos_token_ids and not lane.config.ignore_eos) or len(lane.generated) >= lane.config.max_new_tokens
        before, lane.alive = lane.alive, (lane.alive if lookahead else [lane.alive[i] for i in rows])
        if lane.keep:  # rows' KV only grows: the copy taken as a row leaves holds every earlier step
            gone = [] if lookahead else [(r, block[i]) for i, r in enumerate(before) if i not in rows]
            gone += [(r, b) for r, b in zip(lane.alive, picked)] if stop else []
            try:
                for r, b in gone:
                    lane.kept[r] = (out.state.copy_rows([b]), len(lane.generated))
            except ValueError:  # a cache that cannot be cut (sliding windows): no branches from this lane
                lane.keep, lane.kept = False, {}
        if stop:
            self._ended.append(lane)
        return event, ([] if stop else rows)

    def _end_stopped(self) -> None:
        stopping, self._stopping = self._stopping, {}
        if not stopping:
            return
        every = stopping.get(None)
        ending = {n: every or stopping[n] for n in [*(w.name for w in self._waiting), *self.rows.names] if every or n in stopping}
        for name, reason in ending.items():
            self.lanes[name].cut = reason
            self._ended.append(self.lanes[name])
        self._waiting = [w for w in self._waiting if w.name not in ending]
        self._gather(self.rows.regroup({n: range(len(self.rows.block(n))) for n in self.rows.names if n not in ending}))

    def _gather(self, index: list[int]) -> None:
        if self.state is not None and index != list(range(self.state.batch_size)):
            self.state = self.state.index_select(index) if index else None

    def _fail(self, lane: Lane, exc: Exception) -> None:
        if not self.isolate_errors:
            raise exc
        lane.error = f"{type(exc).__name__}: {exc}"
        self._ended.append(lane)

    def _flush(self) -> Iterator[tuple[str, StepEvent]]:
        ended, self._ended = self._ended, []
        for lane in ended:
            trace = self._trace(lane)
            del self.lanes[lane.name]  # a long-lived engine (a shared batch) keeps only live lanes
            cache = LaneCache(lane.policy, lane.requests, lane.config, lane.kept, lane.steps, lane.states, lane.h0) if 0 in lane.kept else None
            yield lane.name, StepEvent(len(lane.steps), -1, "", trace.text, done=True, trace=trace, cache=cache)

    def _trace(self, lane: Lane) -> Trace:
        """The lane's steps stacked, with the run facts its policy's final state carries."""
        now = time.perf_counter()
        facts = {k: getattr(lane.state, k) for k in RUN_FACTS if getattr(lane.state, k, None) is not None}
        judge = facts.get("judge")
        timings = Timings(prepare=judge.seconds if judge else 0.0, prefill=lane.prefill_seconds,
                          decode=now - lane.t_prefilled if lane.t_prefilled else 0.0, ttft=lane.ttft, total=now - lane.t_added)
        h0 = lane.h0 if lane.h0 is not None else np.zeros(0, np.float32)
        return Trace.from_steps(
            lane.policy.name, lane.text, lane.steps, h0, **facts,
            model=self.adapter.name, model_id=self.adapter.model_id, prompt=lane.requests[0].prompt if lane.requests else "",
            config=asdict(lane.config), knobs=lane.policy.describe(), timings=timings,
            rows=len(lane.requests) if lane.logits is None else int(lane.logits.shape[0]),
            shared_with=sorted(lane.shared - {lane.name}), error=lane.error, cut=lane.cut,
            stopped_on_eos=bool(lane.generated and lane.generated[-1] in self.adapter.eos_token_ids),
        )


def generate(adapter: VLMAdapter, request: Request, policy: Policy | None = None, config: GenerationConfig | None = None) -> Iterator[StepEvent]:
    """Decode `request` with `policy`, yielding one event per token, then a done event."""
    policy = policy or VanillaPolicy()
    for _, event in generate_many(adapter, request, {policy.name: policy}, config):
        yield event


def generate_many(
    adapter: VLMAdapter, request: Request, policies: dict[str, Policy], config: GenerationConfig | None = None,
    isolate_errors: bool = False, since: float | None = None,
) -> Iterator[tuple[str, StepEvent]]:
    """Decode one request with several methods in ONE batch per step, yielding (name, event).

    The prompt is prefilled once per distinct row; a method's tokens equal what it produces
    alone (same seed, own sampler). `since`: when the request started (TTFT counts from it).
    """
    engine = Engine(adapter, config, isolate_errors)
    for name, policy in policies.items():
        engine.add(name, policy, request, since)
    yield from engine.run()


def run_to_end(adapter: VLMAdapter, request: Request, policy: Policy | None = None, config: GenerationConfig | None = None) -> Trace:
    """`generate` without streaming: the finished trace."""
    for event in generate(adapter, request, policy, config):
        if event.done:
            return event.trace
    raise RuntimeError("generate ended without a done event")


def _record(adapter: VLMAdapter, raw_logits: torch.Tensor, d: Decision, token: int, hidden: torch.Tensor, config: GenerationConfig) -> StepRecord:
    """Candidates, both probabilities and the method's scores of one step.

    raw_logits [V]: row 0's own logits, before any steering; hidden [D]: the chosen row after the step.
    """
    raw = torch.softmax(raw_logits.float(), dim=-1)  # [V] the model's own distribution
    same = d.logits.data_ptr() == raw_logits.data_ptr() and d.logits.shape == raw_logits.shape \
        and d.logits.stride() == raw_logits.stride() and d.logits.dtype == raw_logits.dtype
    pol = raw if same else torch.softmax(d.logits.float(), dim=-1)  # [V] the method's distribution (vanilla's is the model's: not computed twice)
    if d.lookahead is not None:
        cand = d.lookahead.tolist()
    else:
        cand = torch.topk(pol, config.trace_top_k).indices.tolist()
        if token not in cand:
            cand[-1] = token  # a forced token must show up among the candidates
    cand_index = torch.tensor(cand)
    scores = dict(d.scores)
    for name, values in d.per_token.items():
        scores[name] = float(values[token])
    return StepRecord(
        token_id=token,
        token=adapter.token_texts([token])[0],
        candidate_ids=cand,
        candidate_tokens=adapter.token_texts(cand),
        raw_probs=raw[cand_index].tolist(),
        policy_probs=pol[cand_index].tolist(),
        action=d.action,
        scores=scores,
        candidate_scores={k: v.float().cpu().tolist() for k, v in d.candidate_scores.items()},
        notes=_name_tokens(adapter, dict(d.notes)),
        hidden=hidden.float().cpu().numpy() if config.keep_hidden else None,
    )


def _name_tokens(adapter: VLMAdapter, notes: dict) -> dict:
    """Give every `{"token_id": ...}` entry in the notes its text (the trace has no tokenizer)."""
    for value in notes.values():
        if isinstance(value, list) and value and isinstance(value[0], dict) and "token_id" in value[0]:
            texts = adapter.token_texts([v["token_id"] for v in value])
            for item, text in zip(value, texts):
                item["token"] = text
    return notes
