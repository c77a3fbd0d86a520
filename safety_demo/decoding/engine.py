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


def generate(
    adapter: VLMAdapter,
    request: Request,
    policy: Policy | None = None,
    config: GenerationConfig | None = None,
) -> Iterator[StepEvent]:
    """Decode `request` with `policy`, yielding one event per token, then a done event."""
    policy = policy or VanillaPolicy()
    config = config or GenerationConfig()
    generator = torch.Generator().manual_seed(config.seed)
    t_start = time.perf_counter()

    run = policy.prepare(adapter, request, config.seed)  # e.g. SafeCoDe's judge
    t_prepared = time.perf_counter()
    rows = policy.rows(request, config.seed)  # R rows: [real] or [real, noised]
    out = adapter.prefill(rows)  # logits [R, V], hidden [R, D], shared KV cache
    h0 = out.hidden[0].float().cpu().numpy()
    h_bar = policy.prefill_hidden(out.hidden[0], run)  # SafeSteer's MSAV may move h₀
    if h_bar is not None:
        out.logits[0] = adapter.logits_from_hidden(h_bar[None].to(out.hidden.dtype))[0].float()
    t_first = time.perf_counter()

    steps: list[StepRecord] = []
    generated: list[int] = []
    ttft = None
    for t in range(config.max_new_tokens):
        t0 = time.perf_counter()
        inp = StepInput(step=t, logits=out.logits, hidden=out.hidden, generated=generated, run=run)
        decision = policy.step(inp)  # the method's view of this step
        if decision.lookahead is not None:
            k = len(decision.lookahead)
            ahead = adapter.step(decision.lookahead.to(adapter.device), out.state.index_select([0] * k))  # k rows, one forward
            index, decision = policy.choose(inp, decision, ahead.hidden)
            token = int(decision.lookahead[index])
            nxt = ahead.index_select([index])  # keep the chosen row's cache and logits
        else:
            token = decision.forced_token if decision.forced_token is not None else sample_token(decision.logits, config, generator)
            nxt = adapter.step(torch.full((out.state.batch_size,), token, dtype=torch.long, device=adapter.device), out.state)
        generated.append(token)
        record = _record(adapter, out, decision, token, nxt, config)
        record.seconds = time.perf_counter() - t0
        steps.append(record)
        ttft = ttft if ttft is not None else time.perf_counter() - t_start
        out = nxt
        yield StepEvent(step=t, token_id=token, piece=record.token, text=adapter.decode(generated), record=record)
        if token in adapter.eos_token_ids:
            break

    text = adapter.decode(generated)
    t_end = time.perf_counter()
    meta = {
        "method": policy.name,
        "model": adapter.name,
        "model_id": adapter.model_id,
        "prompt": request.prompt,
        "rows": len(rows),
        "config": asdict(config),
        "policy": policy.describe(),
        "prepare_seconds": t_prepared - t_start,  # the judge, for SafeCoDe
        "prefill_seconds": t_first - t_prepared,
        "decode_seconds": t_end - t_first,
        "ttft_seconds": ttft,
        "total_seconds": t_end - t_start,
        "stopped_on_eos": bool(generated and generated[-1] in adapter.eos_token_ids),
        **{k: v for k, v in run.items() if not k.startswith("_")},
    }
    if h_bar is not None:
        meta["prefill_hidden_steered"] = h_bar.float().cpu().numpy()
    trace = Trace.from_steps(policy.name, text, steps, h0, meta)
    yield StepEvent(step=len(steps), token_id=-1, piece="", text=text, done=True, trace=trace)


def run_to_end(adapter: VLMAdapter, request: Request, policy: Policy | None = None, config: GenerationConfig | None = None) -> Trace:
    """`generate` without streaming: the finished trace."""
    for event in generate(adapter, request, policy, config):
        if event.done:
            return event.trace
    raise RuntimeError("generate ended without a done event")


def _record(adapter: VLMAdapter, out: ForwardOut, d: Decision, token: int, nxt: ForwardOut, config: GenerationConfig) -> StepRecord:
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
