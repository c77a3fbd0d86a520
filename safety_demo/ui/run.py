"""What the app's callbacks call, one function each: start a run, stream it, finish it, re-view it.

No Gradio here: inputs are plain values (the upload's path, the prompt, the model name, the
knob values in `methods.all_knobs()` order) and outputs are dataclasses the screen lays out.
A `Run` remembers the model it ran on, so the views of a finished run never read the
dropdowns as they are now.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from ..compare import Column, CompareConfig, compare
from ..compare import branch as branch_column
from ..explain import first_divergence, walkthrough
from ..inputs import LIMITS, InputError, check_prompt_tokens, clean_prompt, invisible_count, load_image, shown
from ..methods import METHODS, method_config, read_knobs, title
from ..models import Request, VLMAdapter, model_choices
from ..probe import DecodingProbe, describe_probe
from ..serving import shared_batch
from ..trace import Trace
from ..viz import empty_figure
from ..viz.answer import LEGEND, answer_html, streamed_views, trace_views
from ..viz.contrast import contrastive_delta_figure
from ..viz.hidden_map import PROBE_AXIS, TRAJECTORY_STEPS, VIEWS, hidden_state_map
from ..viz.inspector import step_figure, step_table
from .session import calibration_points, export, model, probe_for

REFRESH_SECONDS = 0.2  # the columns are redrawn at most five times a second: plenty for a reader, light for the server


@dataclass
class Started:
    """A validated request with its model and probe loaded."""

    model_name: str
    adapter: VLMAdapter
    request: Request
    config: CompareConfig
    probe: DecodingProbe | None
    projection: str = PROBE_AXIS  # the map's projection radio when Generate was pressed
    method: str = "vanilla"  # the step inspector's method radio
    notice: str = ""  # what was changed about the input, said once (invisible characters removed)


@dataclass
class Run:
    """A finished run, kept in the browser session: the views of it read only this."""

    model_name: str
    traces: dict[str, Trace] = field(default_factory=dict)
    probe: DecodingProbe | None = None  # the probe the run used: the map's probe axis is its score
    columns: dict[str, Column] = field(default_factory=dict)  # the finished columns, with their kept KV (branches)


@dataclass
class Finished:
    run: Run
    columns: dict[str, Column]
    message: str
    story: str
    delta: Any  # go.Figure
    map: Any
    step: Any
    step_rows: list[dict]
    steps: int  # the longest answer's length (the step slider's range)
    step_at: int  # the step the inspector opens at: where the shown method first parts from vanilla
    parts: dict[str, int | None]  # method -> first step where its answer parts from vanilla's
    json_path: str
    html_path: str
    method: str = "vanilla"  # the method the inspector shows


def generate(
    upload_path: str | None, prompt: str, model_name: str, knob_values: list[Any], projection: str = PROBE_AXIS, method: str = "vanilla",
    shared: bool = False,
) -> Iterator[Started | dict[str, Column] | Finished]:
    """The whole Generate: the checked request (`Started`), the columns as they fill, then `Finished`."""
    started = start(upload_path, prompt, model_name, knob_values, projection, method)
    yield started
    columns: dict[str, Column] = {}
    for columns in stream(started, shared):
        yield columns
    yield finish(started, columns)


def start(upload_path: str | None, prompt: str, model_name: str, knob_values: list[Any], projection: str = PROBE_AXIS, method: str = "vanilla") -> Started:
    """Check every input against what the screen offers, before any model work; then load the
    model and its probe. Raises InputError / UserFacingError with one sentence."""
    choose(model_name, list(model_choices()), "Model")
    choose(projection, list(VIEWS), "Projection")
    choose(method, list(METHODS), "Step inspector method")
    removed = invisible_count(prompt) if isinstance(prompt, str) else 0
    prompt = clean_prompt(prompt)
    generation, configs = read_knobs(list(knob_values))
    image = load_image(upload_path)
    adapter = model(model_name)
    check_prompt_tokens(len(adapter.encode_text(prompt)))
    probe = probe_for(adapter, method_config("safesteer", configs).probe_components)
    notice = f"Removed {removed} invisible or direction-changing character{'s' if removed > 1 else ''} from the prompt. " if removed else ""
    config = CompareConfig(generation=generation, configs=configs)
    return Started(model_name, adapter, Request(image, prompt), config, probe, projection, method, notice)


def choose(value: Any, choices: list[str], label: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{label}: {shown(value)} is not one of the choices ({', '.join(choices)}).")


def stream(started: Started, shared: bool = False) -> Iterator[dict[str, Column]]:
    """The columns as they fill, redrawn at most every REFRESH_SECONDS; the run ends at the time limit.

    `shared`: the request's methods join the batch other visitors' requests are decoding
    (`serving.SharedBatch`), instead of a batch of its own.
    """
    args = (started.request, started.config, started.probe)
    knobs = dict(refresh=REFRESH_SECONDS, time_limit=LIMITS.max_request_seconds, keep=True)  # keep: branches go on from the KV
    if shared:
        yield from shared_batch(started.adapter).compare(*args, **knobs)
    else:
        yield from compare(started.adapter, *args, **knobs)


def finish(started: Started, columns: dict[str, Column], projection: str | None = None, method: str | None = None) -> Finished:
    """Every view of the finished run, drawn with the projection and method the screen shows now."""
    run = Run(started.model_name, {m: c.trace for m, c in columns.items() if c.trace is not None}, started.probe, columns)
    return finished(run, columns, projection or started.projection, method or started.method, started.notice)


def finished(run: Run, columns: dict[str, Column], projection: str, method: str, notice: str = "") -> Finished:
    """Every view of `run` (live or stored): the map, the deltas, the inspector at the parting step, exports."""
    parts = parting_steps(run.traces)
    step_at = parts.get(method) if parts.get(method) is not None else min((s for s in parts.values() if s is not None), default=0)
    figures = {"delta": contrastive_delta_figure(run.traces), "map": map_view(run, projection), "step": None}
    figures["step"], rows = step_view(run, method, step_at)
    json_path, html_path = export(run.traces, figures)
    message = notice + "Done. Explore the views below."
    if any(c.error for c in columns.values()):
        message += " ⚠️ A method failed; see its column."
    if any(c.trace is not None and c.trace.cut for c in columns.values()):
        message += f" ⏱ The run reached its time limit ({LIMITS.max_request_seconds} s) and shows what it had."
    steps = max((len(t) for t in run.traces.values()), default=1)
    return Finished(run, columns, message, walkthrough(run.traces), figures["delta"], figures["map"], figures["step"], rows, steps,
                    step_at, parts, json_path, html_path, method)


def parting_steps(traces: dict[str, Trace]) -> dict[str, int | None]:
    """Each method's first step that differs from vanilla's answer (vanilla: the earliest of them)."""
    vanilla = traces.get("vanilla")
    if vanilla is None:
        return {}
    parts = {m: first_divergence(vanilla, t) for m, t in traces.items() if m != "vanilla"}
    parts["vanilla"] = min((s for s in parts.values() if s is not None), default=None)
    return parts


def column_html(col: Column, parts_at: int | None = None) -> str:
    """The answer as running text: streamed tokens while decoding, token cards once finished."""
    if col.trace is not None:
        return answer_html(trace_views(col.trace, parts_at), "(no tokens)")
    return answer_html(streamed_views(col.tokens), "", growing=True)  # each update extends the last


def legend(probe: DecodingProbe | None) -> str:
    """How to read the colours, with the probe in use (its k and held-out AUROC)."""
    return LEGEND + (f" Probe in use: {describe_probe(probe).removeprefix('probe: ')}." if probe is not None else " No probe is loaded for this model.")


def step_view(run: Run | None, method: str, step: int) -> tuple[Any, list[dict]]:
    """The step inspector: `method`'s candidates at `step`."""
    trace = (run.traces if run else {}).get(method)
    if trace is None or not len(trace):
        return empty_figure("Step inspector", "Run a generation first." if not run else f"{title(method)} produced no tokens."), []
    step = min(max(int(step or 0), 0), len(trace) - 1)
    return step_figure(trace, step), step_table(trace, step)


def map_view(run: Run | None, projection: str, every_step: bool = False) -> Any:
    """The hidden-state map of `run`, on the calibration points of the model it ran on: the
    answers' first steps (the ones the methods steer), or every step."""
    if not run or not run.traces:
        return empty_figure("Hidden-state map", "Run a generation first.")
    calib = calibration_points(model(run.model_name))
    if calib is None:
        return empty_figure("Hidden-state map", "No calibration features for this model yet (fit the probe first).")
    choose(projection, list(VIEWS), "Projection")
    return hidden_state_map(*calib, run.traces, method=projection, probe=run.probe, steps=None if every_step else TRAJECTORY_STEPS)


def branch_choices(run: Run | None, method: str, step: int) -> list[tuple[str, int]]:
    """The candidates `method` weighed at `step`, as (label, token id): what a branch can take instead."""
    trace = (run.traces if run else {}).get(method)
    if trace is None or not 0 <= int(step) < len(trace):
        return []
    i, chosen = int(step), int(trace.token_ids[int(step)])
    return [(f"{tok!r}  ·  P {p:.2f}" + ("  (its choice)" if c == chosen else ""), int(c))
            for c, tok, p in zip(trace.candidate_ids[i], trace.candidate_tokens[i], trace.policy_probs[i]) if c >= 0]


@dataclass
class Branched:
    """A branch as it fills: the original answer and the branch, side by side."""

    original: str  # HTML, the branch point outlined
    branch: str  # HTML
    stats: str


def branch(run: Run | None, method: str, step: int, token: int | None) -> Iterator[Branched]:
    """`method`'s answer with `token` at `step`, decoded on by the same method from the run's kept
    KV cache (no prefill), streamed beside the original. Raises InputError with a sentence."""
    column = (run.columns if run else {}).get(method)
    if column is None or column.trace is None:
        raise InputError("Run a generation first, then pick a step and a candidate to branch from.")
    try:
        token = int(token)
    except (TypeError, ValueError):
        raise InputError("Pick the candidate the branch takes at this step from the list.") from None
    if column.cache is None:
        raise InputError("This answer has no kept cache (a precomputed example, or a model whose cache cannot be cut): press Generate, then branch.")
    step = int(step)
    original = column_html(column, step)
    adapter = model(run.model_name)
    for col in branch_column(adapter, column, step, token, run.probe, refresh=REFRESH_SECONDS):
        html = column_html(col, step) if col.done else answer_html(streamed_views(col.tokens), "", growing=True)
        taken = repr(col.trace.tokens[step]) if col.done and col.trace is not None and len(col.trace) > step else ""
        stats = f"Branch at step {step}{' with ' + taken if taken else ''}: " + column_stats(col)
        yield Branched(original, html, stats)


def column_stats(col: Column) -> str:
    """The line above an answer: tokens, speed, first-token time, or what it is waiting for."""
    if col.error:
        return f"⚠️ **failed:** {col.error}"
    if col.trace is not None:
        t = col.trace.timings
        judge = f" · judge {t.prepare:.1f}s" if col.trace.judge is not None else ""
        cut = f" · ⏱ {col.trace.cut}" if col.trace.cut else ""
        return f"{len(col.trace)} tokens · **{col.trace.tokens_per_second:.1f} tok/s** · first token {t.ttft or 0:.1f}s · total {t.total:.1f}s{judge}{cut}"
    if col.note:
        return f"{col.note} · {col.seconds:.1f}s"
    return f"{col.n_tokens} tokens · {col.seconds:.1f}s …"


def column_info(col: Column) -> str:
    """The line under an answer: the judge's caption and verdict, or the probe's reading and MSAV."""
    trace = col.trace
    if trace is None:
        return ""
    if trace.judge is not None:
        j = trace.judge
        return f"**Caption:** {j.caption or '—'}  \n**Verdict:** `{j.verdict}` ({j.source}; raw: “{j.raw[:60]}”) · α = {trace.facts.get('alpha')}"
    if trace.msav is not None:
        s = trace.msav
        after = f" → h̄₀ {s.h0bar_score:.2f}" if s.h0bar_score is not None else ""
        return f"**P(harmful | h₀):** {trace.probe_h0:.2f}{after} · **MSAV** {'fired' if s.fired else 'did not fire'}  \n{trace.probe}"
    from ..methods import METHODS

    return METHODS[col.method].summary if col.method in METHODS else ""
