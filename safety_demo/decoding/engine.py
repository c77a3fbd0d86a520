"""One step-wise decoding engine for every method.

The engine owns the model calls and the KV cache; a `Policy` only turns logits into a
decision. `generate` yields one `StepEvent` per token (for streaming) and a final event
carrying the `Trace`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..inputs import LIMITS, InputError
from ..models.base import ForwardOut, Request, VLMAdapter
from .policy import Decision, Policy, StepInput, VanillaPolicy
from .trace import StepRecord, Trace


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


@dataclass
class _Lane:
    """One method's share of a (possibly shared) batch: its rows, memory and record so far."""

    name: str
    policy: Policy
    run: dict
    generator: torch.Generator  # per lane, so a method samples the same alone or side by side
    n_rows: int  # R: rows this method decodes (vanilla 1, SafeCoDe 2: real + noised)
    out: ForwardOut | None = None  # logits [R, V] / hidden [R, D] for the next choice (rows view only)
    h0: np.ndarray | None = None
    h_bar: torch.Tensor | None = None
    generated: list[int] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    decision: Decision | None = None
    inp: StepInput | None = None
    rows: list[Request] = field(default_factory=list)
    width: int = 0  # rows this lane put into the current step's batch
    error: str | None = None
    token: int = -1
    done: bool = False
    prepare_seconds: float = 0.0
    ttft: float | None = None
    t_end: float = 0.0


def generate(
    adapter: VLMAdapter,
    request: Request,
    policy: Policy | None = None,
    config: GenerationConfig | None = None,
) -> Iterator[StepEvent]:
    """Decode `request` with `policy`, yielding one event per token, then a done event."""
    policy = policy or VanillaPolicy()
    for _, event in generate_many(adapter, request, {policy.name: policy}, config):
        yield event


def generate_many(
    adapter: VLMAdapter,
    request: Request,
    policies: dict[str, Policy],
    config: GenerationConfig | None = None,
    isolate_errors: bool = False,
) -> Iterator[tuple[str, StepEvent]]:
    """Decode one request with several methods in ONE batch per step, yielding (name, event).

    The prompt is prefilled once per distinct row (the real image is shared by every
    method; SafeCoDe adds its noised row), then each step runs every live method's rows in
    a single forward: SafeSteer's k candidates ride in the same batch as the others' next
    tokens. A method's tokens equal what it produces alone (same seed, own sampler).

    With `isolate_errors`, an exception inside one method (its judge, probe or step) ends
    that method only: its trace carries `meta["error"]` and the others finish. Errors of
    the model forward itself always propagate.
    """
    config = config or GenerationConfig()
    t_start = time.perf_counter()
    lanes: list[_Lane] = []

    def fail(lane: _Lane, exc: Exception) -> None:
        if not isolate_errors:
            raise exc
        lane.error, lane.done, lane.t_end = f"{type(exc).__name__}: {exc}", True, time.perf_counter()

    for name, policy in policies.items():
        t0 = time.perf_counter()
        lane = _Lane(name, policy, {}, torch.Generator().manual_seed(config.seed), 0)
        try:
            lane.run = policy.prepare(adapter, request, config.seed)  # e.g. SafeCoDe's judge
            rows = policy.rows(request, config.seed)  # [real] or [real, noised]
        except Exception as exc:
            fail(lane, exc)
            rows = []
        lane.prepare_seconds, lane.rows = time.perf_counter() - t0, rows
        lane.n_rows = len(rows)
        lanes.append(lane)

    # prefill each distinct row once, then lay the rows out lane after lane
    unique: list[Request] = []
    layout: list[int] = []
    for lane in lanes:
        for row in lane.rows:
            index = next((i for i, u in enumerate(unique) if u is row), None)
            if index is None:
                unique.append(row)
                index = len(unique) - 1
            layout.append(index)
    t_prefill = time.perf_counter()
    state = None
    if unique:
        out = adapter.prefill(unique)  # logits [U, V], hidden [U, D], one KV cache
        if layout != list(range(len(unique))):
            out = out.index_select(layout)  # [R_total] rows: lane blocks
        state, offset, alive = out.state, 0, []
        for lane in (lane for lane in lanes if not lane.done):
            lane.out = ForwardOut(out.logits[offset : offset + lane.n_rows].clone(), out.hidden[offset : offset + lane.n_rows], state)
            lane.h0 = lane.out.hidden[0].float().cpu().numpy()
            try:
                lane.h_bar = lane.policy.prefill_hidden(lane.out.hidden[0], lane.run)  # SafeSteer's MSAV may move h₀
                alive += range(offset, offset + lane.n_rows)
            except Exception as exc:
                fail(lane, exc)
            offset += lane.n_rows
            if lane.h_bar is not None:
                lane.out.logits[0] = adapter.logits_from_hidden(lane.h_bar[None].to(out.hidden.dtype))[0].float()
        if alive and alive != list(range(offset)):
            state = state.index_select(alive)  # drop the rows of a method that failed at prefill
    t_first = time.perf_counter()
    prefill_seconds = t_first - t_prefill

    for t in range(config.max_new_tokens):
        live = [lane for lane in lanes if not lane.done]  # their rows, in order, make up `state`
        if not live:
            break
        # 1. each method decides; the next batch is every live lane's rows (k candidates for a lookahead)
        sources: list[int] = []  # row of the current state each new row continues
        tokens: list[int] = []
        offset = 0
        for lane in live:
            lane.width = 0
            try:
                lane.inp = StepInput(step=t, logits=lane.out.logits, hidden=lane.out.hidden, generated=lane.generated, run=lane.run)
                d = lane.decision = lane.policy.step(lane.inp)
                if d.lookahead is not None:
                    cands = d.lookahead.tolist()
                    sources += [offset] * len(cands)  # row 0 of the lane, once per candidate
                    tokens += cands
                    lane.width = len(cands)
                else:
                    lane.token = d.forced_token if d.forced_token is not None else sample_token(d.logits, config, lane.generator)
                    sources += list(range(offset, offset + lane.n_rows))
                    tokens += [lane.token] * lane.n_rows
                    lane.width = lane.n_rows
            except Exception as exc:
                fail(lane, exc)
            offset += lane.n_rows
        if not sources:
            break
        if sources != list(range(state.batch_size)):
            state = state.index_select(sources)
        t_step = time.perf_counter()
        nxt = adapter.step(torch.tensor(tokens, dtype=torch.long, device=adapter.device), state)  # ONE forward for all
        step_seconds = time.perf_counter() - t_step

        # 2. lookahead lanes choose; everyone records; finished lanes drop out of the batch
        keep: list[int] = []
        offset = 0
        for lane in live:
            if lane.width == 0:
                continue
            block = list(range(offset, offset + lane.width))
            offset += lane.width
            d = lane.decision
            try:
                if d.lookahead is not None:
                    index, d = lane.policy.choose(lane.inp, d, nxt.hidden[block[0] : block[-1] + 1])
                    lane.decision, lane.token = d, int(d.lookahead[index])
                    block = [block[index]]  # keep the chosen candidate's row: cache and logits
                elif d.keep_rows is not None:
                    block = [block[i] for i in d.keep_rows]  # the method stops decoding some rows
                    lane.n_rows = len(block)
            except Exception as exc:
                fail(lane, exc)
                continue
            lane.generated.append(lane.token)
            chosen = ForwardOut(nxt.logits[block], nxt.hidden[block], nxt.state)
            record = _record(adapter, lane.out, d, lane.token, chosen, config)
            record.seconds = step_seconds
            lane.steps.append(record)
            now = time.perf_counter()
            lane.ttft = lane.ttft if lane.ttft is not None else now - t_start
            lane.out = chosen
            lane.done = (lane.token in adapter.eos_token_ids and not config.ignore_eos) or t + 1 >= config.max_new_tokens
            if lane.done:
                lane.t_end = now
            else:
                keep += block
            yield lane.name, StepEvent(step=t, token_id=lane.token, piece=record.token, text=adapter.decode(lane.generated), record=record)
        if keep and keep != list(range(nxt.state.batch_size)):
            state = nxt.state.index_select(keep)
        else:
            state = nxt.state

    for lane in lanes:
        text = adapter.decode(lane.generated)
        t_end = lane.t_end or time.perf_counter()
        meta = {
            "method": lane.policy.name,
            "model": adapter.name,
            "model_id": adapter.model_id,
            "prompt": request.prompt,
            "rows": lane.n_rows,
            "shared_with": [other.name for other in lanes if other is not lane],
            "config": asdict(config),
            "policy": lane.policy.describe(),
            "prepare_seconds": lane.prepare_seconds,  # the judge, for SafeCoDe
            "prefill_seconds": prefill_seconds,
            "decode_seconds": t_end - t_first,
            "ttft_seconds": lane.ttft,
            "total_seconds": t_end - t_start,
            "stopped_on_eos": bool(lane.generated and lane.generated[-1] in adapter.eos_token_ids),
            **{k: v for k, v in lane.run.items() if not k.startswith("_")},
        }
        if lane.error:
            meta["error"] = lane.error
        if lane.h_bar is not None:
            meta["prefill_hidden_steered"] = lane.h_bar.float().cpu().numpy()
        h0 = lane.h0 if lane.h0 is not None else np.zeros(0, np.float32)
        trace = Trace.from_steps(lane.policy.name, text, lane.steps, h0, meta)
        yield lane.name, StepEvent(step=len(lane.steps), token_id=-1, piece="", text=text, done=True, trace=trace)


def run_to_end(adapter: VLMAdapter, request: Request, policy: Policy | None = None, config: GenerationConfig | None = None) -> Trace:
    """`generate` without streaming: the finished trace."""
    for event in generate(adapter, request, policy, config):
        if event.done:
            return event.trace
    raise RuntimeError("generate ended without a done event")


def _record(adapter: VLMAdapter, out: ForwardOut, d: Decision, token: int, nxt: ForwardOut, config: GenerationConfig) -> StepRecord:
    # out: the lane's rows before the step (row 0 = real image); nxt: its chosen row after it
    """Candidates, both probabilities and the method's scores of one step."""
    raw = torch.softmax(out.logits[0].float(), dim=-1)  # [V] the model's own distribution
    pol = torch.softmax(d.logits.float(), dim=-1)  # [V] the method's distribution
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
        notes=_name_tokens(adapter, d.notes),
        hidden=nxt.hidden[0].float().cpu().numpy() if config.keep_hidden else None,
    )


def _name_tokens(adapter: VLMAdapter, notes: dict) -> dict:
    """Give every `{"token_id": ...}` entry in the notes its text (the trace has no tokenizer)."""
    for value in notes.values():
        if isinstance(value, list) and value and isinstance(value[0], dict) and "token_id" in value[0]:
            texts = adapter.token_texts([v["token_id"] for v in value])
            for item, text in zip(value, texts):
                item["token"] = text
    return notes
