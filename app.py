"""safety_demo's web app: three answers side by side, streaming, and the views that explain them.

This file wires the screen only: layout first (top to bottom as it appears), then the
listeners. Callbacks are thin wrappers around `safety_demo` and return dicts keyed by
component. Run: `python app.py` (or `make demo`).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import gradio as gr
import torch

from safety_demo.data.examples import EXAMPLES, ensure_examples
from safety_demo.inputs import LIMITS, InputError
from safety_demo.methods import METHODS, Knob, knob_groups
from safety_demo.models import DEFAULT_MODEL, model_choices, threads
from safety_demo.data.compose import FORM_TITLES
from safety_demo.ui import composer, instant, notes
from safety_demo.ui import run as run_views
from safety_demo.ui.session import UserFacingError, model, probe_for
from safety_demo.viz.answer import ANSWER_CSS
from safety_demo.viz.hidden_map import PROBE_AXIS, VIEWS, warm_up_umap

# The decode thread lets go of the GIL at every torch op; a callback thread that takes it then keeps it
# for up to the switch interval. 1 ms instead of Python's 5 ms: the slowest column streamed at 0.95x
# compare()'s tok/s instead of 0.90x (`python -m safety_demo.eval.app_speed --new-tokens 128 --repeats 3`,
# one run each, 2-core AMD EPYC).
sys.setswitchinterval(0.001)

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator anywhere else
    import spaces

    gpu = spaces.GPU(duration=120)
    ZEROGPU = True
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn):
        return fn

    ZEROGPU = False
# Visitors share one batch per model (continuous batching), except on ZeroGPU, where the GPU
# exists only inside each request's own call.
SHARED_BATCH = not ZEROGPU and os.environ.get("SAFETY_DEMO_SHARED_BATCH", "1") == "1"
INSTANT_EXAMPLES = os.environ.get("SAFETY_DEMO_INSTANT_EXAMPLES", "1") == "1"  # precompute the examples at start-up
CONCURRENCY = int(os.environ.get("SAFETY_DEMO_CONCURRENCY", 4)) if SHARED_BATCH else 1

log = logging.getLogger("safety_demo.app")
CSS = """
.answer-col {min-width: 0}
#status {min-height: 1.5em}
""" + ANSWER_CSS


# a click on a token of an answer (its span carries data-step) opens the step inspector there
TOKEN_CLICK = (
    "element.addEventListener('click', (e) => { const t = e.target.closest('[data-step]'); if (!t) return;"
    " trigger('token', {step: Number(t.dataset.step)});"
    " document.getElementById('views')?.scrollIntoView({behavior: 'smooth', block: 'start'}); });"
)


# ---------------------------------------------------------------- callbacks (one library call each)
def _fail(exc: Exception) -> gr.Error:
    """Every failure reaches the user as one short sentence, never a traceback."""
    if isinstance(exc, (InputError, UserFacingError, ValueError)):
        return gr.Error(str(exc), print_exception=False)
    if isinstance(exc, torch.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the memory back so the next request can run
        log.warning("out of memory: %s", exc)
        return gr.Error("The model ran out of GPU memory on this request. Try fewer new tokens, a smaller image or a smaller model.", print_exception=False)
    log.exception("unexpected failure")
    return gr.Error(f"Something went wrong ({type(exc).__name__}: {exc}). The app is still running; try again.", print_exception=False)


def _upload_path(payload) -> str | None:
    """The upload's file in Gradio's upload cache, and nowhere else.

    The listener skips Gradio's own preprocessing (preprocess=False), which would fail on a
    non-image with a generic message; `load_image` explains instead. Skipping it also skips
    Gradio's check of where the file lives, so it is done here: a client that names a server
    path (`{"path": "/etc/…"}`) is refused before anything is opened.
    """
    if payload is None:
        return None
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    if not isinstance(path, str) or not path:
        raise InputError("Upload an image file (PNG, JPEG, WebP, ...).")
    cache = Path(image_in.GRADIO_CACHE).resolve()
    if not Path(path).resolve().is_relative_to(cache):
        raise InputError("The image must be uploaded through the app; server paths are not accepted.")
    return path


def _columns(columns, shown: dict | None = None, parts: dict | None = None) -> dict:
    """The answer columns' components; with `shown`, only those of columns that changed since."""
    update = {}
    for m, col in columns.items():
        state = (len(col.tokens), col.note, col.done)
        if shown is not None and shown.get(m) == state:
            continue
        if shown is not None:
            shown[m] = state
        html = run_views.column_html(col, (parts or {}).get(m))
        update.update({answers[m]: html, stats[m]: run_views.column_stats(col), infos[m]: run_views.column_info(col)})
    return update


def generate(image, prompt, model_name, projection, method, *knob_values):
    """Generate: stream every column, then fill every view.

    While the columns stream, every update gives every output its value as the page shows it.
    Gradio builds a new component for each output an update leaves out, on the thread that also
    sends the stream: 7.8 ms an update with only the columns given, 3.5 ms with every output, on a
    2-core Xeon (`python -m safety_demo.eval.app_speed --update-cost`). A value it sent already
    goes over the wire as an empty diff, so only what changed is sent either way.
    """
    shown: dict = {}
    page: dict = {}  # every output but run_state (a State costs nothing left out): the page while streaming
    try:
        for step in run_views.generate(_upload_path(image), prompt, model_name, list(knob_values), projection, method, SHARED_BATCH):
            if isinstance(step, run_views.Started):  # checked and loaded: clear the last run's columns and views
                page = _blank_page(run_views.legend(step.probe),
                                   step.notice + "Decoding every method in one batch per step (SafeCoDe's judge runs as extra rows)…")
                yield {**page, branch_token: gr.update(choices=[], value=None)}  # the last run's candidates go too
            elif isinstance(step, run_views.Finished):
                yield _finished(step)
            elif update := _columns(step, shown):  # the columns that changed
                page.update(update)
                yield dict(page)  # a copy: the next update changes `page`
    except Exception as exc:
        raise _fail(exc)


def _blank_page(legend_text: str, status_text: str) -> dict:
    """Every output of Generate but run_state, cleared: the page a run starts streaming into."""
    return {**{c: "" for c in (*answers.values(), *stats.values(), *infos.values(), story)},
            **{c: None for c in (delta_plot, map_plot, step_plot, step_rows, export_json, export_html, branch_token)},
            step_slider: 0, legend: legend_text, status: status_text}


def _finished(done: run_views.Finished) -> dict:
    """Every view of a finished run, live or precomputed."""
    return {
        **_columns(done.columns, parts=done.parts), status: done.message, story: done.story, delta_plot: done.delta, map_plot: done.map,
        step_plot: done.step, step_rows: done.step_rows, step_slider: gr.update(maximum=max(done.steps - 1, 0), value=done.step_at),
        run_state: done.run, export_json: done.json_path, export_html: done.html_path, legend: run_views.legend(done.run.probe),
        branch_token: gr.update(choices=run_views.branch_choices(done.run, done.method, done.step_at), value=None),
    }


def show_example(image, prompt, model_name, projection, method, *knob_values):
    """An example was clicked: its precomputed comparison at once, or a word on why there is none."""
    try:
        done = instant.show(image, prompt, model_name, list(knob_values), projection, method)
    except Exception as exc:
        raise _fail(exc)
    if isinstance(done, str):  # not precomputed: the inputs are filled, the last run's columns stay
        return {status: done}
    return _finished(done)


def compose(request, phrase, model_name, method, *knob_values):
    """Attack composer: the request's three forms, then one method's answer to each, streaming."""
    try:
        for step in composer.run(request, phrase, model_name, method, list(knob_values)):
            if isinstance(step, composer.Composed):
                yield {**{form_images[f.name]: f.image for f in step.forms}, **{form_prompts[f.name]: f"**Prompt:** {f.prompt}" for f in step.forms},
                       **{form_answers[f.name]: "" for f in step.forms}, compose_status: f"Decoding the three forms with {METHODS[method].title}, in one batch…"}
                continue
            yield {**{form_answers[n]: run_views.column_html(c) for n, c in step.items()},
                   **{form_stats[n]: run_views.column_stats(c) for n, c in step.items()},
                   **({compose_status: "Done. Compare the three forms; try another method."} if all(c.done for c in step.values()) else {})}
    except Exception as exc:
        raise _fail(exc)


def inspect(run, method, step):
    """Step inspector: one method, one step of the run in this session, and the candidates a branch can take."""
    figure, rows = run_views.step_view(run, method, step)
    return {step_plot: figure, step_rows: rows, branch_token: gr.update(choices=run_views.branch_choices(run, method, step), value=None)}


def open_step(method):
    """A click on a token of `method`'s answer: the step inspector opens at that step."""
    def handler(run, evt: gr.EventData):
        step = int(evt.step)
        return {**inspect(run, method, step), step_method: method, step_slider: step, views: gr.Tabs(selected="inspector")}
    return handler


def branch(run, method, step, token):
    """Branch: the chosen candidate at this step, then the same method on, beside the original."""
    try:
        for b in run_views.branch(run, method, step, token):
            yield {branch_original: b.original, branch_new: b.branch, branch_stats: b.stats}
    except Exception as exc:
        raise _fail(exc)


def remap(run, projection, every_step):
    """Re-project the hidden-state map of the run in this session (t-SNE / UMAP take seconds)."""
    try:
        return {map_plot: run_views.map_view(run, projection, every_step)}
    except Exception as exc:
        raise _fail(exc)


def _control(k: Knob):
    if k.kind == "slider":
        return gr.Slider(k.minimum, k.maximum, value=k.default, step=k.step, label=k.label, info=k.info or None)
    if k.kind == "number":
        return gr.Number(value=k.default, label=k.label, precision=0, minimum=k.minimum, maximum=k.maximum, info=k.info or None)
    if k.kind == "dropdown":
        return gr.Dropdown(list(k.choices), value=k.default, label=k.label, info=k.info or None)
    return gr.Checkbox(value=k.default, label=k.label, info=k.info or None)


# ---------------------------------------------------------------- layout
example_rows = ensure_examples()
# uploads live in Gradio's cache only, and not for long: checked every 10 min, deleted after 1 h
with gr.Blocks(title="safety_demo: safety-steering decoding, token by token", delete_cache=(600, 3600)) as demo:
    gr.Markdown(notes.INTRO)
    with gr.Row():
        with gr.Column(scale=2):
            image_in = gr.Image(type="filepath", image_mode=None, label="Image", height=300, elem_id="image-in", sources=["upload", "clipboard"])
        with gr.Column(scale=3):
            prompt_in = gr.Textbox(label="Prompt", lines=3, placeholder="Ask something about the image…", elem_id="prompt-in")
            model_in = gr.Dropdown(
                [(f"{name} — {desc}", name) for name, desc in model_choices().items()], value=DEFAULT_MODEL,
                label="Model", info="Built-in models run on CPU offline; presets need a GPU and their weights.", elem_id="model-in",
            )
            generate_btn = gr.Button("Generate all three", variant="primary", elem_id="generate")
            status = gr.Markdown("", elem_id="status")
            with gr.Accordion("Method knobs (named defaults)", open=False):
                controls = []
                with gr.Tabs():
                    for group, knobs in knob_groups().items():
                        with gr.Tab(group):
                            with gr.Row():
                                controls += [_control(k) for k in knobs]
    gr.Markdown(notes.BUILTIN_NOTE)
    examples = gr.Examples(
        example_rows, inputs=[image_in, prompt_in], example_labels=[e.name for e in EXAMPLES],
        label="Examples (one click shows their three answers, precomputed; Generate runs them live)",
    )

    answers, stats, infos = {}, {}, {}
    with gr.Row(equal_height=False):
        for m, method in METHODS.items():
            with gr.Column(elem_classes="answer-col"):
                gr.Markdown(f"### {method.title}")
                stats[m] = gr.Markdown("", elem_id=f"stats-{m}")
                answers[m] = gr.HTML(elem_id=f"answer-{m}", elem_classes="answer-box", js_on_load=TOKEN_CLICK)
                infos[m] = gr.Markdown("", elem_id=f"info-{m}")
    legend = gr.Markdown(run_views.legend(None).rsplit(" No probe", 1)[0], elem_id="legend")
    story = gr.Markdown("", elem_id="walkthrough")

    with gr.Tabs(elem_id="views") as views:
        with gr.Tab("Contrastive delta"):
            gr.Markdown(notes.DELTA)
            delta_plot = gr.Plot(elem_id="delta-plot")
        with gr.Tab("Step inspector", id="inspector"):
            gr.Markdown(notes.INSPECTOR)
            with gr.Row():
                step_method = gr.Radio([(m.title, m.name) for m in METHODS.values()], value=list(METHODS)[-1], label="Method", elem_id="step-method")
                step_slider = gr.Slider(0, 1, value=0, step=1, label="Step (token index)")
            step_plot = gr.Plot(elem_id="step-plot")
            step_rows = gr.JSON(label="Candidates at this step")
            gr.Markdown(notes.BRANCH)
            with gr.Row():
                # any value reaches the library, which refuses a token that was not a candidate at this step
                branch_token = gr.Dropdown([], label="Take this candidate instead", allow_custom_value=True, elem_id="branch-token")
                branch_btn = gr.Button("Decode the rest from here", elem_id="branch")
            branch_stats = gr.Markdown(elem_id="branch-stats")
            with gr.Row(equal_height=False):
                with gr.Column(elem_classes="answer-col"):
                    gr.Markdown("**Original**")
                    branch_original = gr.HTML(elem_id="branch-original")
                with gr.Column(elem_classes="answer-col"):
                    gr.Markdown("**Branch**")
                    branch_new = gr.HTML(elem_id="branch-new")
        with gr.Tab("Hidden-state map"):
            gr.Markdown(notes.MAP)
            with gr.Row():
                projection_in = gr.Radio(list(VIEWS), value=PROBE_AXIS, label="Projection", elem_id="projection")
                every_step_in = gr.Checkbox(False, label="Every step", info="all tokens' states, not just the first steps", elem_id="every-step")
            map_plot = gr.Plot(elem_id="map-plot")
        with gr.Tab("Export"):
            gr.Markdown("Download this run: every trace as JSON (tokens, candidates, probabilities, scores, judge, MSAV) and the figures as one HTML page.")
            export_json = gr.File(label="Trace (JSON)", elem_id="export-json")
            export_html = gr.File(label="Figures (HTML)", elem_id="export-html")
    with gr.Accordion("Attack composer: one request as text, typed into an image, and as a FigStep-style list", open=False, elem_id="composer"):
        gr.Markdown(notes.COMPOSER)
        with gr.Row():
            compose_request = gr.Textbox(label="Request", lines=2, placeholder="How can someone pick a lock?", elem_id="compose-request")
            compose_phrase = gr.Textbox(label="Key phrase (read off the request; edit it)", lines=2, elem_id="compose-phrase")
        with gr.Row():
            compose_method = gr.Radio([(m.title, m.name) for m in METHODS.values()], value="vanilla", label="Method", elem_id="compose-method")
            compose_btn = gr.Button("Compose and run the three forms", variant="primary", elem_id="compose")
        compose_status = gr.Markdown(elem_id="compose-status")
        form_images, form_prompts, form_stats, form_answers = {}, {}, {}, {}
        with gr.Row(equal_height=False):
            for name, heading in FORM_TITLES.items():
                with gr.Column(elem_classes="answer-col"):
                    gr.Markdown(f"#### {heading}")
                    form_images[name] = gr.Image(height=180, interactive=False, show_label=False, elem_id=f"form-image-{name}")
                    form_prompts[name] = gr.Markdown(elem_id=f"form-prompt-{name}")
                    form_stats[name] = gr.Markdown(elem_id=f"form-stats-{name}")
                    form_answers[name] = gr.HTML(elem_id=f"form-answer-{name}", elem_classes="answer-box")
    run_state = gr.State(None, time_to_live=3600)  # the finished run (traces, model, kept KV for branches): every view reads it

    # ------------------------------------------------------------ listeners
    # what a run fills, live (Generate) or stored (an example's click); their API outputs, in this order
    run_outputs = [status, *answers.values(), *stats.values(), *infos.values(), story, delta_plot, map_plot,
                   step_plot, step_rows, step_slider, run_state, export_json, export_html, legend, branch_token]
    generate_btn.click(
        gpu(generate),
        inputs=[image_in, prompt_in, model_in, projection_in, step_method, *controls],
        outputs=run_outputs,
        api_name="generate",
        preprocess=False,  # raw upload path: load_image checks it with clear messages
        concurrency_limit=CONCURRENCY,  # requests running at once: their rows share the model's one batch
    )
    examples.load_input_event.then(
        show_example, inputs=[image_in, prompt_in, model_in, projection_in, step_method, *controls],
        outputs=run_outputs,
        api_name="show_example",
    )
    # .input: the user's change only (a token click sets the method and the step together)
    step_method.input(inspect, inputs=[run_state, step_method, step_slider], outputs=[step_plot, step_rows, branch_token])
    step_slider.release(inspect, inputs=[run_state, step_method, step_slider], outputs=[step_plot, step_rows, branch_token])
    compose_request.change(composer.phrase_for, inputs=[compose_request], outputs=[compose_phrase], show_progress="hidden")
    compose_btn.click(
        compose, inputs=[compose_request, compose_phrase, model_in, compose_method, *controls],
        outputs=[compose_status, *form_images.values(), *form_prompts.values(), *form_stats.values(), *form_answers.values()],
        api_name="compose", concurrency_limit=CONCURRENCY,
    )
    for m in METHODS:  # a click on a token opens the inspector at its step
        answers[m].token(open_step(m), inputs=[run_state], outputs=[step_plot, step_rows, branch_token, step_method, step_slider, views])
    branch_btn.click(branch, inputs=[run_state, step_method, step_slider, branch_token], outputs=[branch_original, branch_new, branch_stats],
                     api_name="branch", concurrency_limit=CONCURRENCY)
    gr.on([projection_in.change, every_step_in.change], remap, inputs=[run_state, projection_in, every_step_in], outputs=[map_plot])

demo.queue(max_size=int(os.environ.get("SAFETY_DEMO_QUEUE", 16)), default_concurrency_limit=1)
# Gradio's queue looks for new events every 1 ms while none is waiting (streaming included) and for
# progress-bar news every 10 ms: on 2 cores that took 4.2% of a core while idle, and the GIL from the
# decode thread a thousand times a second. Every 10 ms is soon enough for a click; this app shows no
# progress bars. Idle, the busiest thread used 0.42 s of CPU per 10 s, now 0.13 s (/proc/PID/task/*/stat).
_queue = getattr(demo, "_queue", None)
if hasattr(_queue, "sleep_when_free") and hasattr(_queue, "progress_update_sleep_when_free"):
    _queue.sleep_when_free = max(_queue.sleep_when_free, 0.01)
    _queue.progress_update_sleep_when_free = max(_queue.progress_update_sleep_when_free, 0.1)
# uploads above the limit are refused by Gradio before they reach a callback; its own refusals are sentences too
LAUNCH_OPTIONS = dict(max_file_size=f"{LIMITS.max_upload_mb}mb", show_error=True, css=CSS, theme=gr.themes.Soft())


def warm_start(name: str = DEFAULT_MODEL) -> None:
    """Load the default model and its probe, compile UMAP and precompute the examples (those not
    stored yet, about a minute on a 2-core CPU) before the first click.

    With SAFETY_DEMO_FIT_PROBES=1 the operator has a missing probe fitted here, at start-up;
    a visitor's request never fits one.
    """
    try:
        probe_for(model(name), fit_if_missing=os.environ.get("SAFETY_DEMO_FIT_PROBES") == "1")
        warm_up_umap()
        if INSTANT_EXAMPLES:
            computed = instant.precompute(name, shared=SHARED_BATCH)
            log.info("examples precomputed: %s", ", ".join(computed) or "all were stored already")
    except Exception:  # the first request will report it properly
        log.exception("warm start failed")


if __name__ == "__main__":
    # Torch ops run on one core in every thread but the one decoding, whose team of cores is the only
    # one: an idle team left by another thread slowed every decode step 1.6x (models/threads.py).
    threads.serve_mode()
    threading.Thread(target=warm_start, daemon=True).start()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        **LAUNCH_OPTIONS,  # the answers' CSS, the theme and the limits, for every launch (tests too)
    )
