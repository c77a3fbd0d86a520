"""The app's streaming against the library: `python -m safety_demo.eval.app_speed`.

Starts `app.py` on loopback, sends one of the examples through Gradio's queue as a browser does
(`Stream`: the image uploaded first, as on drop) and timestamps every streamed update on arrival;
in this process, runs `compare()` on the same image, prompt and knobs, and vanilla alone.
Each is repeated; medians. Figures:
  * per column, tok/s as the reader sees it, (tokens − 1) ÷ (column complete − its first token):
    app ÷ `compare()` (≥ 0.9: the app streams at library speed);
  * vanilla's first token in the browser's stream ÷ vanilla's time to first token alone (≤ 1.5:
    SafeCoDe's judge does not hold the other columns).
The runs alternate (app, `compare()`, vanilla alone; repeat): the app process is idle while this
process decodes and the other way round, so the two never compete for the cores, and a slow
minute on a shared machine lands on both sides of a ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

OUTPUT_INDEX = {"status": 0, "vanilla": 1, "safecode": 2, "safesteer": 3, "stats": {"vanilla": 4, "safecode": 5, "safesteer": 6}}


@dataclass
class AppSpeed:
    rows: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.rows.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.rows[name]) if self.rows.get(name) else float("nan")


METHODS = ("vanilla", "safecode", "safesteer")


def _tok_s(first: float, done: float, tokens: int) -> float:
    return (tokens - 1) / (done - first) if tokens > 1 and done > first else float("nan")


class Stream:
    """Gradio's queue protocol (sse_v3) as the browser speaks it: upload once, join, then read the
    event stream as it arrives. gradio_client instead polls for messages every 50 ms and for
    outputs every 1 ms: that adds up to 50 ms to every timestamp and takes CPU from the server on
    a 2-core machine, so it would measure the client, not the app."""

    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(timeout=httpx.Timeout(None))
        config = self.http.get(url.rstrip("/") + "/config").json()
        self.base = url.rstrip("/") + "/" + config.get("api_prefix", "/gradio_api").strip("/")
        self.fn = {d.get("api_name"): d["id"] for d in config["dependencies"] if d.get("api_name")}
        self.received = 0  # bytes of event-stream messages read so far

    def upload(self, path: str) -> dict[str, Any]:
        """The browser uploads an image when it is dropped, before Generate: not timed."""
        with open(path, "rb") as f:
            server_path = self.http.post(self.base + "/upload", files=[("files", (Path(path).name, f))]).json()[0]
        return {"path": server_path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}

    def run(self, api_name: str, data: list[Any]) -> Iterator[list[Any]]:
        """The endpoint's outputs after each message, as they arrive (diffs applied)."""
        import uuid

        from gradio_client.utils import apply_diff

        session = uuid.uuid4().hex[:11]
        self.http.post(self.base + "/queue/join", json={"data": data, "fn_index": self.fn[api_name], "event_data": None,
                                                       "trigger_id": None, "session_hash": session}).raise_for_status()
        with self.http.stream("GET", self.base + "/queue/data", params={"session_hash": session}) as events:  # held messages come first
            sent: list[Any] | None = None  # what the server last sent, diffs apply to it
            shown: list[Any] = []  # what the page shows: a component left out of an update keeps its value
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                self.received += len(line.encode())
                msg = json.loads(line[5:])
                if msg["msg"] not in ("process_generating", "process_completed"):
                    continue
                if not msg.get("success", True):
                    raise RuntimeError(str(msg.get("output", {}).get("error")))
                data_ = msg["output"]["data"]
                if msg["msg"] == "process_completed" or sent is None:
                    sent = list(data_)
                else:
                    sent = [apply_diff(old, diff) for old, diff in zip(sent, data_)]
                shown = [old if _unchanged(new) and i < len(shown) else new for i, (new, old) in enumerate(zip(sent, shown or sent))]
                yield shown
                if msg["msg"] == "process_completed":
                    return


def _app_run(stream: Stream, image: dict[str, Any], prompt: str, knobs: list[Any], model: str = "builtin") -> dict[str, float]:
    """Seconds from Generate to each column's first token and completion, its tok/s, and Done."""
    t0, received = time.perf_counter(), stream.received
    seen: dict[str, float] = {}
    for out in stream.run("generate", [image, prompt, model, "PCA", "safesteer", *knobs]):
        now = time.perf_counter() - t0
        for m in METHODS:
            answer, stats = str(out[OUTPUT_INDEX[m]]), str(out[OUTPUT_INDEX["stats"][m]])
            tokens = answer.count('class="tok')  # the answer's token spans
            if f"{m} first" not in seen and tokens:
                seen[f"{m} first"] = now
            if m not in seen and "tok/s" in stats:  # the column's final line
                seen[m], seen[f"{m} tokens"] = now, tokens
        if str(out[OUTPUT_INDEX["status"]]).startswith("Done"):
            seen["done"] = now
    seen["kB"] = (stream.received - received) / 1e3
    return {**seen, **{f"{m} tok/s": _tok_s(seen[f"{m} first"], seen[m], seen[f"{m} tokens"]) for m in METHODS}}


def _unchanged(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value


def _library_run(adapter, request, config, probe) -> dict[str, float]:
    from ..compare import compare

    t0 = time.perf_counter()
    seen: dict[str, float] = {}
    for columns in compare(adapter, request, config, probe):
        now = time.perf_counter() - t0
        for m, col in columns.items():
            if f"{m} first" not in seen and col.tokens:
                seen[f"{m} first"] = now
            if m not in seen and col.done:
                seen[m], seen[f"{m} tokens"] = now, len(col.tokens)
    return {**seen, **{f"{m} tok/s": _tok_s(seen[f"{m} first"], seen[m], seen[f"{m} tokens"]) for m in METHODS}}


def measure(new_tokens: int = 64, repeats: int = 3, example: int = 0) -> tuple[AppSpeed, dict[str, Any]]:
    from PIL import Image

    from ..compare import CompareConfig
    from ..data.examples import ensure_examples
    from ..decoding import VanillaPolicy, run_to_end
    from ..methods import knob_values, read_knobs
    from ..models import Request, load_adapter
    from ..models.cpu import cpu_name
    from ..probe import get_probe
    from .load import served_app

    image, prompt = ensure_examples()[example]
    knobs = knob_values(max_new_tokens=new_tokens)
    generation, configs = read_knobs(knobs)
    result = AppSpeed()
    adapter = load_adapter("builtin")
    probe = get_probe(adapter, fit_if_missing=False, progress=False)
    request = Request(Image.open(image).convert("RGB"), prompt)
    config = CompareConfig(generation=generation, configs=configs)
    with served_app() as (url, _):
        stream = Stream(url)
        upload = stream.upload(image)
        _app_run(stream, upload, prompt, knobs)  # warm-up: model, probe and UMAP load in the server
        _library_run(adapter, request, config, probe)
        for _ in range(repeats):  # interleaved, so a slow minute on a shared machine hits both sides of a ratio
            app = _app_run(stream, upload, prompt, knobs)
            lib = _library_run(adapter, request, config, probe)
            alone = run_to_end(adapter, request, VanillaPolicy(), generation)
            for m in METHODS:
                result.add(f"{m}: app tok/s", app[f"{m} tok/s"])
                result.add(f"{m}: compare tok/s", lib[f"{m} tok/s"])
                result.add(f"{m}: app ÷ compare tok/s", app[f"{m} tok/s"] / lib[f"{m} tok/s"])
            result.add("app: vanilla first token s", app["vanilla first"])
            result.add("alone: vanilla TTFT s", alone.timings.ttft)
            result.add("app first token ÷ alone TTFT", app["vanilla first"] / alone.timings.ttft)
            result.add("app done s", app["done"])
            result.add("app: kB streamed per run", app["kB"])  # the finished views included
            result.add("compare done s", max(lib[m] for m in METHODS))
    facts = {"cpu": cpu_name(), "dtype": str(adapter.dtype).removeprefix("torch."), "new_tokens": new_tokens, "repeats": repeats, "prompt": prompt[:60]}
    return result, facts


def update_cost_ms(repeats: int = 50) -> dict[str, float]:
    """ms Gradio spends on one streamed update of Generate (`Blocks.postprocess_data`, on the thread
    that sends the stream), as `app.generate` gives it (every output) and with only the three
    columns' components (every other output left out, as it was before)."""
    import asyncio

    from gradio.state_holder import SessionState

    import app  # builds the page; launches nothing

    fn = next(f for f in app.demo.fns.values() if f.api_name == "generate")
    answer = '<div class="answer">' + '<span class="tok" tabindex="0">word<span class="card">card</span></span>' * 60
    columns = {**{c: answer for c in app.answers.values()}, **{c: "60 tokens · 4.0s …" for c in app.stats.values()},
               **{c: "" for c in app.infos.values()}}
    page = {**app._blank_page("", "Decoding…"), **columns}  # as `app.generate` streams it

    async def timed(update: dict) -> float:
        state = SessionState(app.demo)
        await app.demo.postprocess_data(fn, update, state)
        t0 = time.perf_counter()
        for _ in range(repeats):
            await app.demo.postprocess_data(fn, update, state)
        return (time.perf_counter() - t0) / repeats * 1e3

    return {"every output": asyncio.run(timed(page)), "the columns only": asyncio.run(timed(columns))}


def figures(result: AppSpeed) -> dict[str, float]:
    return {
        "app_ratio": min(result.median(f"{m}: app ÷ compare tok/s") for m in METHODS),
        "app_vanilla_ttft_ratio": result.median("app first token ÷ alone TTFT"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--update-cost", action="store_true", help="only time what Gradio spends on one streamed update")
    args = parser.parse_args()
    if args.update_cost:
        for name, ms in update_cost_ms().items():
            print(f"one streamed update of Generate, {name}: {ms:.2f} ms in Gradio's postprocess_data")
        return
    result, facts = measure(args.new_tokens, args.repeats)
    print(f"{facts['cpu']}, {facts['dtype']}, {facts['new_tokens']} new tokens, {facts['repeats']} repeats (medians)")
    for name in result.rows:
        print(f"{name:32s} {result.median(name):8.3f}")
    figs = figures(result)
    print(f"app_ratio (slowest column, app tok/s ÷ compare tok/s; target ≥ 0.9): {figs['app_ratio']:.2f}")
    print(f"vanilla's first token in the app ÷ alone (target ≤ 1.5): {figs['app_vanilla_ttft_ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({**figs, "rows": result.rows, "facts": facts}, indent=1) + "\n")


if __name__ == "__main__":
    main()
