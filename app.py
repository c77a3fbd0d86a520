"""safety_demo's web app: three answers side by side, streaming, and the views that explain them.

This file wires the screen only: layout first (top to bottom as it appears), then the
listeners. Callbacks are thin wrappers around `safety_demo` and return dicts keyed by
component. Run: `python app.py` (or `make demo`).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import gradio as gr
import torch

from safety_demo.compare import METHODS, TITLES, CompareConfig, Column, compare
from safety_demo.decoding import Trace
from safety_demo.explain import walkthrough
from safety_demo.inputs import InputError, clean_prompt, load_image
from safety_demo.models import DEFAULT_MODEL, Request, model_choices
from safety_demo.ui import notes
from safety_demo.ui.examples import EXAMPLES, ensure_examples
from safety_demo.ui.knobs import KNOBS, Knob, read_configs
from safety_demo.ui.session import UserFacingError, calibration_points, export, model, probe_for
from safety_demo.viz import empty_figure
from safety_demo.viz.contrast import contrastive_delta_figure
from safety_demo.viz.hidden_map import PROJECTIONS, hidden_state_map, warm_up_umap
from safety_demo.viz.inspector import step_figure, step_table

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator anywhere else
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn):
        return fn

log = logging.getLogger("safety_demo.app")
CSS = """
.answer-col {min-width: 0}
.answer-col .token {font-size: 0.95rem}
#status {min-height: 1.5em}
"""


# ---------------------------------------------------------------- callbacks (thin wrappers)
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


def _stats(col: Column) -> str:
    if col.error:
        return f"⚠️ **failed:** {col.error}"
    if col.trace is not None:
        m = col.trace.meta
        judge = f" · judge {m['prepare_seconds']:.1f}s" if "judge" in m else ""
        return f"{len(col.trace)} tokens · **{col.trace.tokens_per_second:.1f} tok/s** · first token {m['ttft_seconds'] or 0:.1f}s · total {m['total_seconds']:.1f}s{judge}"
    return f"{col.n_tokens} tokens · {col.seconds:.1f}s …"


def _method_info(method: str, trace: Trace | None) -> str:
    if trace is None:
        return ""
    m = trace.meta
    if method == "safecode" and "judge" in m:
        j = m["judge"]
        return f"**Caption:** {j['caption'] or '—'}  \n**Verdict:** `{j['verdict']}` ({j['source']}; raw: “{j['raw'][:60]}”) · α = {m.get('alpha')}"
    if method == "safesteer" and "msav" in m:
        s = m["msav"]
        after = f" → h̄₀ {s['h0bar_score']:.2f}" if s.get("h0bar_score") is not None else ""
        return f"**P(harmful | h₀):** {s['h0_score']:.2f}{after} · **MSAV** {'fired' if s['fired'] else 'did not fire'}  \n{m.get('probe', '')}"
    return "The model's own answer, greedy or sampled."


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


def run(image, prompt, model_name, *knob_values):
    """Generate: stream three columns, then fill every view."""
    try:
        prompt = clean_prompt(prompt)
        image = load_image(_upload_path(image))
        generation, safecode, safesteer = read_configs(list(knob_values))
        adapter = model(model_name)
        yield {status: "Preparing: SafeCoDe's judge is captioning the image; SafeSteer's probe is loading…"}
        probe = probe_for(adapter, safesteer.probe_components)
    except Exception as exc:
        raise _fail(exc)
    config = CompareConfig(generation=generation, safecode=safecode, safesteer=safesteer)
    columns = None
    try:
        for columns in compare(adapter, Request(image, prompt), config, probe):
            update = {status: "Decoding all three in one batch per step…"}
            for m, col in columns.items():
                update[answers[m]] = col.tokens
                update[stats[m]] = _stats(col)
            yield update
    except Exception as exc:  # the model forward itself failed (e.g. out of memory)
        raise _fail(exc)
    traces = {m: c.trace for m, c in columns.items() if c.trace is not None}
    figures = _figures(traces, adapter, "PCA", config.methods[0])
    json_path, html_path = export(traces, figures)
    judge = traces["safecode"].meta["prepare_seconds"] if "safecode" in traces else 0.0
    message = "Done. Explore the views below."
    if judge:
        message += f" All three columns started after SafeCoDe's judge ({judge:.1f} s), so their first-token times include it."
    if any(c.error for c in columns.values()):
        message += " ⚠️ One method failed; see its column."
    done = {status: message}
    for m, col in columns.items():
        done.update({answers[m]: col.tokens, stats[m]: _stats(col), infos[m]: _method_info(m, col.trace)})
    longest = max((len(t) for t in traces.values()), default=1)
    done.update({
        story: walkthrough(traces),
        delta_plot: figures["delta"],
        map_plot: figures["map"],
        step_plot: figures["step"],
        step_rows: step_table(traces[config.methods[0]], 0) if len(traces.get(config.methods[0], [])) else [],
        step_slider: gr.update(maximum=max(longest - 1, 0), value=0),
        run_state: traces,
        export_json: json_path,
        export_html: html_path,
    })
    yield done


def _figures(traces: dict[str, Trace], adapter, projection: str, method: str) -> dict:
    calib = calibration_points(adapter)
    hidden_map = (
        hidden_state_map(*calib, traces, method=projection) if calib is not None
        else empty_figure("Hidden-state map", "No calibration features for this model yet (fit the probe first).")
    )
    first = traces.get(method)
    return {
        "delta": contrastive_delta_figure(traces),
        "map": hidden_map,
        "step": step_figure(first, 0) if first is not None and len(first) else empty_figure("Step inspector", "No tokens."),
    }


def inspect(traces, method, step):
    """Step inspector: one method, one step."""
    trace = (traces or {}).get(method)
    if trace is None or not len(trace):
        return {step_plot: empty_figure("Step inspector", "Run a generation first."), step_rows: []}
    step = min(int(step or 0), len(trace) - 1)
    return {step_plot: step_figure(trace, step), step_rows: step_table(trace, step)}


def remap(traces, projection, model_name):
    """Re-project the hidden-state map (t-SNE / UMAP take seconds)."""
    if not traces:
        return {map_plot: empty_figure("Hidden-state map", "Run a generation first.")}
    try:
        calib = calibration_points(model(model_name))
        if calib is None:
            return {map_plot: empty_figure("Hidden-state map", "No calibration features for this model yet.")}
        return {map_plot: hidden_state_map(*calib, traces, method=projection)}
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
                    for group, knobs in KNOBS.items():
                        with gr.Tab(group):
                            with gr.Row():
                                controls += [_control(k) for k in knobs]
    gr.Markdown(notes.BUILTIN_NOTE)
    gr.Examples(
        example_rows, inputs=[image_in, prompt_in], example_labels=[e.name for e in EXAMPLES],
        label="Examples (one click fills the inputs; press Generate)",
    )

    answers, stats, infos = {}, {}, {}
    with gr.Row(equal_height=False):
        for m in METHODS:
            with gr.Column(elem_classes="answer-col"):
                gr.Markdown(f"### {TITLES[m]}")
                stats[m] = gr.Markdown("", elem_id=f"stats-{m}")
                answers[m] = gr.HighlightedText(
                    label=f"{TITLES[m]} answer", show_legend=m == "vanilla", combine_adjacent=False,
                    elem_id=f"answer-{m}", color_map=None,
                )
                infos[m] = gr.Markdown("", elem_id=f"info-{m}")
    gr.Markdown(notes.ANSWERS + " " + notes.LEGEND)
    story = gr.Markdown("", elem_id="walkthrough")

    with gr.Tabs():
        with gr.Tab("Contrastive delta"):
            gr.Markdown(notes.DELTA)
            delta_plot = gr.Plot(elem_id="delta-plot")
        with gr.Tab("Step inspector"):
            gr.Markdown(notes.INSPECTOR)
            with gr.Row():
                step_method = gr.Radio(list(METHODS), value="safesteer", label="Method")
                step_slider = gr.Slider(0, 1, value=0, step=1, label="Step (token index)")
            step_plot = gr.Plot(elem_id="step-plot")
            step_rows = gr.JSON(label="Candidates at this step")
        with gr.Tab("Hidden-state map"):
            gr.Markdown(notes.MAP)
            projection_in = gr.Radio(list(PROJECTIONS), value="PCA", label="Projection")
            map_plot = gr.Plot(elem_id="map-plot")
        with gr.Tab("Export"):
            gr.Markdown("Download this run: every trace as JSON (tokens, candidates, probabilities, scores, judge, MSAV) and the figures as one HTML page.")
            export_json = gr.File(label="Trace (JSON)", elem_id="export-json")
            export_html = gr.File(label="Figures (HTML)", elem_id="export-html")
    run_state = gr.State({})

    # ------------------------------------------------------------ listeners
    generate_btn.click(
        gpu(run),
        inputs=[image_in, prompt_in, model_in, *controls],
        outputs=[status, *answers.values(), *stats.values(), *infos.values(), story, delta_plot, map_plot,
                 step_plot, step_rows, step_slider, run_state, export_json, export_html],
        api_name="generate",
        preprocess=False,  # raw upload path: load_image checks it with clear messages
    )
    step_method.change(inspect, inputs=[run_state, step_method, step_slider], outputs=[step_plot, step_rows])
    step_slider.release(inspect, inputs=[run_state, step_method, step_slider], outputs=[step_plot, step_rows])
    projection_in.change(remap, inputs=[run_state, projection_in, model_in], outputs=[map_plot])

demo.queue(max_size=int(os.environ.get("SAFETY_DEMO_QUEUE", 16)), default_concurrency_limit=1)


def warm_start(name: str = DEFAULT_MODEL) -> None:
    """Load the default model and its probe and compile UMAP before the first click."""
    try:
        probe_for(model(name))
        warm_up_umap()
    except Exception:  # the first request will report it properly
        log.exception("warm start failed")


if __name__ == "__main__":
    threading.Thread(target=warm_start, daemon=True).start()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        css=CSS,
        theme=gr.themes.Soft(),
    )
