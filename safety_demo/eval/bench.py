"""`python -m safety_demo bench`: every method's cost as a ratio to vanilla, measured in one run.

Timings on a shared 2-core machine are noisy, so each figure is a median over repeats and
every ratio is taken between runs of the same repeat, on the same prompts: the methods and side
by side against the mean of a vanilla run just before and one just after them, vanilla against
bandwidth probes just before and after its own run. Absolute times
are reported next to the bound they should be compared with: decoding one token streams
every weight once, so tokens/s ≤ memory bandwidth / model bytes.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..compare import CompareConfig, compare
from ..decoding import GenerationConfig, generate_many, run_to_end
from ..methods import METHODS, build
from ..models import Request, VLMAdapter, load_adapter
from ..models.cpu import cpu_name
from ..probe import get_probe

JSON_FIELDS = ("vanilla_tok_s", "bound_tok_s", "safecode_ratio", "safesteer_ratio", "side_by_side_ratio",
               "app_ratio", "vanilla_ttft_s", "cpu", "dtype")


@dataclass
class BenchConfig:
    model: str = "builtin"  # registry name
    new_tokens: int = 128  # decoded per run, EOS ignored, so every method decodes the same count
    repeats: int = 3  # medians over this many repeats
    prompts: int = 2  # example prompts used (the first N of the app's examples)
    output: Path | None = Path("docs/PERFORMANCE.md")  # markdown report (None: print only)
    app: bool = False  # also time the app's streaming against compare() (starts app.py on loopback)


@dataclass
class BenchResult:
    rows: dict[str, list[float]] = field(default_factory=dict)  # metric -> values over repeats × prompts

    def add(self, name: str, value: float) -> None:
        self.rows.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.rows[name]) if self.rows.get(name) else float("nan")

    def span(self, name: str, fmt: str = ".2f") -> str:
        """"runs 0.91–1.02×": the lowest and highest of a metric's runs, so a reader sees the host's noise beside the median."""
        values = self.rows.get(name) or [float("nan")]
        unit = "" if fmt.endswith("%") else "×"
        return f"runs {min(values):{fmt}}–{max(values):{fmt}}{unit}"


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one untimed call."""
    fn()  # warm: first-touch page faults, kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Bandwidth:
    """GB/s that two or three ways of streaming 256 MB to 1 GB of memory reach now (the third where
    bfloat16 packs), over buffers held for the whole bench: a probe allocates and frees nothing.

    The bound takes the fastest: the machine moves bytes at least that fast, so a decode step
    that streams N bytes takes at least N / that. A single kernel (the old fp32 matrix-vector
    product alone) understates it: on a 2-core EPYC it reached 27 GB/s where a sum reached 45-73
    (`bench`'s medians over five runs). A shared host's memory speed can swing within seconds: on a
    2-core AMD EPYC, `python -m safety_demo.eval.memory_drift` (one 256 MB packed product back to
    back for a minute, the median of each second) read 77-84 GB/s, then 49-51 for seven seconds,
    then 72-84 again, and in another minute 43-53 throughout. So `run_bench` probes right before and
    right after the bound's own vanilla run, and a run that straddles a swing is bounded by the
    faster side. The buffers are held because when each probe allocated and freed 1.25 GB, the run
    right after read slow (an ad hoc script, not shipped, at ae07eeb: 29.7-33.3 tok/s against
    32.5-38.8 just before, in 4 of 5 rounds); no method's timed run follows the probes either."""

    def __init__(self) -> None:
        from ..models.packed import PackedLinear, supported

        self.matrix, self.vector = torch.randn(8192, 8192), torch.randn(8192)  # 256 MB
        self.big = torch.ones(256 * 1024 * 1024)  # 1 GB
        self.packed = None
        if supported(torch.bfloat16):
            layer = torch.nn.Linear(16384, 8192, bias=False, dtype=torch.bfloat16).eval()  # 256 MB
            self.packed, self.row = PackedLinear(layer), torch.randn(1, 16384, dtype=torch.bfloat16)

    def streams(self) -> dict[str, tuple[Callable[[], object], int]]:
        """name -> (one pass over the probe's buffer, the bytes that pass reads)."""
        streams = {"fp32 matrix-vector, 256 MB": (lambda: self.matrix @ self.vector, self.matrix.numel() * 4),
                   "fp32 sum, 1 GB": (self.big.sum, self.big.numel() * 4)}
        if self.packed is not None:
            streams["bf16 packed linear, 1 row, 256 MB"] = (lambda: self.packed(self.row), self.packed.weight.numel() * 2)
        return streams

    @torch.no_grad()
    def __call__(self, repeats: int = 15) -> dict[str, float]:
        """GB/s of each probe, the median of `repeats` passes (a third as many over the 1 GB buffer, 4x the others)."""
        return {name: size / median_seconds(run, max(repeats // 3, 3) if size > 2**28 else repeats) / 1e9
                for name, (run, size) in self.streams().items()}


def model_bytes(adapter: VLMAdapter) -> int:
    """Bytes one decode step streams: every weight once, except an input embedding table that is
    only gathered (one row per token). Tied embeddings are streamed by the output head, once."""
    model = getattr(adapter, "model", None) or getattr(adapter, "lm", None)
    if model is None:
        return 0
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # shared tensors counted once
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embed is not None and (head is None or head.weight is not embed.weight):
        total -= embed.weight.numel() * embed.weight.element_size()
    return total


def _requests(n: int) -> list[Request]:
    from PIL import Image

    from ..data.examples import ensure_examples

    rows = ensure_examples()[:n]
    return [Request(Image.open(path).convert("RGB"), prompt) for path, prompt in rows]


def run_bench(cfg: BenchConfig, log=print) -> tuple[BenchResult, dict[str, Any]]:
    adapter = load_adapter(cfg.model)
    t0 = time.perf_counter()
    probe = get_probe(adapter)
    probe_seconds = time.perf_counter() - t0
    gen = GenerationConfig(max_new_tokens=cfg.new_tokens, ignore_eos=True)
    result = BenchResult()
    requests = _requests(cfg.prompts)
    size = model_bytes(adapter)
    bandwidth = Bandwidth()
    for r in range(cfg.repeats):
        for i, req in enumerate(requests):
            log(f"repeat {r + 1}/{cfg.repeats}, prompt {i + 1}/{len(requests)}")
            policies = {name: build(name, adapter, req, probe=probe) for name in METHODS}  # SafeCoDe's judge decodes here, alone
            # The methods and side by side sit between two vanilla runs (A B A): the host's speed drifts
            # within seconds, and against the two runs' mean a steady drift cancels.
            va = run_to_end(adapter, req, policies["vanilla"], gen)
            sc = run_to_end(adapter, req, policies["safecode"], gen)
            ss = run_to_end(adapter, req, policies["safesteer"], gen)
            both = {n: e.trace for n, e in generate_many(adapter, req, policies, gen) if e.done}
            vb = run_to_end(adapter, req, policies["vanilla"], gen)
            # The bound's own vanilla run, with the machine's memory speed probed right before and after it.
            before = bandwidth(repeats=6)
            v = run_to_end(adapter, req, policies["vanilla"], gen)
            after = bandwidth(repeats=6)
            for name in before:
                result.add(f"bandwidth · {name}", max(before[name], after[name]))
            result.add("bandwidth after ÷ before", max(after.values()) / max(before.values()))
            bound_tps = max(*before.values(), *after.values()) * 1e9 / size if size else float("nan")
            result.add("bound tok/s", bound_tps)
            t0 = time.perf_counter()
            for columns in compare(adapter, req, CompareConfig(generation=gen), probe, refresh=float("inf")):
                pass  # the app's path: the judge's decodes ride in the batch beside the other methods
            live = time.perf_counter() - t0
            v_tps, v_total = v.tokens_per_second, v.timings.prefill + v.timings.decode
            a_tps = (va.tokens_per_second + vb.tokens_per_second) / 2  # vanilla around the methods
            a_total = sum(t.timings.prefill + t.timings.decode for t in (va, vb)) / 2
            result.add("vanilla tok/s", v_tps)
            result.add("vanilla / bound", v_tps / bound_tps)
            result.add("vanilla TTFT s", v.timings.ttft)
            result.add("vanilla prefill s", v.timings.prefill)
            result.add("vanilla after ÷ before the methods", vb.tokens_per_second / va.tokens_per_second)
            result.add("safecode decode ratio", sc.tokens_per_second / a_tps)
            result.add("safecode judge s", sc.judge.seconds)
            result.add("safecode judge / vanilla run", sc.judge.seconds / a_total)
            result.add("safesteer ratio", ss.tokens_per_second / a_tps)
            result.add("safesteer TTFT s", ss.timings.ttft)
            for name, alone in (("vanilla", va), ("safecode", sc), ("safesteer", ss)):  # bf16 rows are not batch-invariant
                result.add(f"{name} side by side = alone", float(alone.token_ids.tolist() == both[name].token_ids.tolist()))
            side = max(t.timings.prefill + t.timings.decode for t in both.values())
            result.add("side-by-side / vanilla run (no judge)", side / a_total)
            result.add("compare (judge in the batch) / vanilla run", live / v_total)
            result.add("compare: vanilla TTFT / alone", columns["vanilla"].trace.timings.ttft / v.timings.ttft)
    del bandwidth  # 1.5 GB of probe buffers, before the app loads its own model
    if cfg.app:
        from .app_speed import measure

        log("the app against compare() (app.py on loopback)")
        speed, _ = measure(new_tokens=cfg.new_tokens, repeats=cfg.repeats * len(requests))
        for name, values in speed.rows.items():
            result.rows[f"app · {name}"] = values
    probes = {name.removeprefix("bandwidth · "): result.median(name) for name in result.rows if name.startswith("bandwidth · ")}
    facts = {
        "model": cfg.model,
        "model_id": adapter.model_id,
        "cpu": cpu_name(),
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "new_tokens": cfg.new_tokens,
        "repeats": cfg.repeats,
        "prompts": len(requests),
        "probe_fit_seconds": probe.metrics.get("fit_seconds"),
        "probe_extract_seconds": probe.metrics.get("extract_seconds"),
        "probe_load_seconds": probe_seconds,
        "bandwidth_probes": probes,  # medians over the repeats of the faster of each run's two probes
        "bandwidth_drift": result.median("bandwidth after ÷ before"),
        "model_mb": size / 1e6,
        "bound_tps": result.median("bound tok/s"),
    }
    return result, facts


NOTES = """How the ratios come out this way:
- SafeCoDe decodes its real and noised rows as one batch of two for the 5 modulated steps, then the
  real row alone, as the official code does. Alone, its judge (caption + verdict) runs before decoding
  and is reported on its own line; in `compare` (the app) the judge's caption and verdict decode as
  extra rows of the batch the other methods are already decoding, and SafeCoDe joins when its verdict
  is ready, so vanilla and SafeSteer start at once.
- SafeSteer runs its top-k candidates as one batch of k rows for the 5 reranked steps, keeping the
  chosen row's cache and logits.
- Side by side, one forward per step carries every method's rows: vanilla 1, SafeCoDe 2 (then 1) and
  SafeSteer 1 (k = 5 while reranking). A decode step is memory-bound: its cost is streaming the
  weights, which every row shares, as long as the matrix kernel batches small row counts well.
- The built-in model runs in bfloat16 on CPUs with native bf16, float32 elsewhere, and its linear
  layers use weights packed once at load for oneDNN (`safety_demo/models/packed.py`): in float32 laid
  out for the smallest batch whose layout gives a row the same bits alone and in a batch, in bfloat16
  for one row. Its decode steps skip transformers' per-layer machinery (`safety_demo/models/builtin/lean.py`:
  the same ops in the same order, bit for bit the same logits). What a step of 1, 3 and 8 rows costs on
  a CPU, plain and packed, in each dtype, and with and without the lean step:
  `python -m safety_demo.eval.dtype_speed`.
"""


def report(result: BenchResult, facts: dict[str, Any], command: str, others: Sequence[str] = ()) -> str:
    """The report as Markdown; `others`: files beside it with the same bench on other CPUs, linked at the top."""
    m, span = result.median, result.span
    bound = facts["bound_tps"]
    lines = [
        "# Performance",
        "",
        *([f"The same bench on other CPUs: {', '.join(f'[{name}]({name})' for name in others)}.", ""] if others else []),
        f"Measured by `{command}` on {facts['cpu']}, {facts['dtype']} ({facts['machine']}). Model: `{facts['model']}` ({facts['model_mb']:.0f} MB of weights). "
        f"{facts['new_tokens']} new tokens per run (EOS ignored), {facts['prompts']} prompts × {facts['repeats']} repeats; "
        "every figure is a median, every ratio is taken within one repeat on the same prompt: the methods and side by side "
        f"against the mean of a vanilla run just before and one just after them (the later ÷ the earlier: {m('vanilla after ÷ before the methods'):.2f}×, median), "
        "vanilla against the bandwidth bound probed just before and after its own run.",
        "",
        "| metric | median | target |",
        "|---|---|---|",
        f"| vanilla decode | {m('vanilla tok/s'):.2f} tok/s = {m('vanilla / bound'):.0%} of the bandwidth bound ({bound:.1f} tok/s; each run against the bound measured right before and after it; {span('vanilla / bound', '.0%')}) | ≥ 70% of the bound |",
        f"| vanilla time to first token | {m('vanilla TTFT s'):.2f} s (prefill {m('vanilla prefill s'):.2f} s) | — |",
        f"| SafeCoDe decode tok/s ÷ vanilla | {m('safecode decode ratio'):.2f}× ({span('safecode decode ratio')}) | ≥ 0.95× |",
        f"| SafeCoDe judge (caption + verdict) | {m('safecode judge s'):.1f} s = {m('safecode judge / vanilla run'):.2f}× one vanilla run | reported separately |",
        f"| SafeSteer tok/s ÷ vanilla | {m('safesteer ratio'):.2f}× ({span('safesteer ratio')}) | ≥ 0.95× |",
        f"| SafeSteer time to first token | {m('safesteer TTFT s'):.2f} s | — |",
        f"| side-by-side (all three, one batch per step) ÷ one vanilla run, judge excluded | {m('side-by-side / vanilla run (no judge)'):.2f}× ({span('side-by-side / vanilla run (no judge)')}) | ≤ 1.3× |",
        "| runs whose answer side by side is token for token the one alone (vanilla / SafeCoDe / SafeSteer) | "
        + " / ".join(f"{sum(result.rows[f'{c} side by side = alone']):.0f} of {len(result.rows[f'{c} side by side = alone'])}" for c in ("vanilla", "safecode", "safesteer"))
        + " | all, in float32 (tested); bfloat16 breaks near-ties by the batch |",
        f"| `compare` (the app's path: judge decoded in the same batch) ÷ one vanilla run | {m('compare (judge in the batch) / vanilla run'):.2f}× | — |",
        f"| `compare`: vanilla's time to first token ÷ vanilla alone | {m('compare: vanilla TTFT / alone'):.2f}× | ≤ 1.5× |",
        *([
            f"| app: each column's tok/s in the stream ÷ the same column in `compare()` (vanilla / SafeCoDe / SafeSteer) | "
            + " / ".join(f"{m(f'app · {c}: app ÷ compare tok/s'):.2f}×" for c in ("vanilla", "safecode", "safesteer")) + " | ≥ 0.9× |",
            f"| app: vanilla's first token on screen ÷ vanilla's time to first token alone | {m('app · app first token ÷ alone TTFT'):.2f}× "
            f"({m('app · app: vanilla first token s'):.2f} s vs {m('app · alone: vanilla TTFT s'):.2f} s) | ≤ 1.5× |",
            f"| app: what the page receives per run (Gradio's event stream: the columns' new tokens, then the finished views) | "
            f"{m('app · app: kB streamed per run'):.0f} kB | — |",
        ] if "app · vanilla: app ÷ compare tok/s" in result.rows else []),
        f"| probe: h₀ extraction over the calibration set, as recorded when the loaded probe was fitted (`fit-probe --re-extract` measures it again) | {facts['probe_extract_seconds'] or float('nan'):.0f} s | ≤ 120 s |",
        f"| probe: fit (PCA + logistic regression) | {facts['probe_fit_seconds'] or float('nan'):.2f} s | < 60 s |",
        "",
        f"Bandwidth bound: right before and right after the bound's own vanilla run in each repeat, {len(facts['bandwidth_probes'])} ways to stream memory are timed ("
        + ", ".join(f"{name}: {gbs:.1f} GB/s" for name, gbs in facts["bandwidth_probes"].items())
        + f"; medians over the repeats of the faster of the two) and the fastest of all sets that run's bound "
        f"(the fastest probe after a run ÷ before it: {facts['bandwidth_drift']:.2f}×, median). A decode step streams {facts['model_mb']:.0f} MB of weights ({facts['dtype']}; the input embedding table is "
        f"gathered, not streamed, unless the output head shares it), so it runs at most at bandwidth ÷ that: {bound:.1f} tok/s (median).",
        "",
        NOTES,
    ]
    return "\n".join(lines) + "\n"


def figures(result: BenchResult, facts: dict[str, Any]) -> dict[str, Any]:
    """The named figures of `bench --json` (app_ratio: the slowest column's app ÷ compare tok/s; None without --app)."""
    def m(name: str) -> float | None:  # NaN (nothing measured) is not JSON
        value = result.median(name)
        return None if value != value else value

    return {
        "vanilla_tok_s": m("vanilla tok/s"),
        "bound_tok_s": None if facts["bound_tps"] != facts["bound_tps"] else facts["bound_tps"],
        "vanilla_bound_ratio": m("vanilla / bound"),
        "safecode_ratio": m("safecode decode ratio"),
        "safesteer_ratio": m("safesteer ratio"),
        "side_by_side_ratio": m("side-by-side / vanilla run (no judge)"),
        "app_ratio": min((v for c in ("vanilla", "safecode", "safesteer") if (v := m(f"app · {c}: app ÷ compare tok/s")) is not None), default=None),
        "app_vanilla_ttft_ratio": m("app · app first token ÷ alone TTFT"),
        "vanilla_ttft_s": m("vanilla TTFT s"),
        "compare_ratio": m("compare (judge in the batch) / vanilla run"),
        "compare_vanilla_ttft_ratio": m("compare: vanilla TTFT / alone"),
        "cpu": facts["cpu"],
        "dtype": facts["dtype"],
    }


def runs(result: BenchResult) -> dict[str, list[float | None]]:
    """Every metric's value in each run (prompt × repeat, in order), for `--json`: the spread behind each median."""
    return {name: [None if v != v else v for v in values] for name, values in result.rows.items()}


def main(cfg: BenchConfig, command: str, json_path: Path | None = None) -> int:
    result, facts = run_bench(cfg)
    others = sorted(p.name for p in cfg.output.parent.glob(f"{cfg.output.stem}-*.md")) if cfg.output else []  # e.g. PERFORMANCE-avx2.md
    text = report(result, facts, command, others)
    print(text)
    if cfg.output:
        cfg.output.parent.mkdir(parents=True, exist_ok=True)
        cfg.output.write_text(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({**figures(result, facts), "facts": facts, "runs": runs(result)}, indent=1) + "\n")
    return 0
