"""`python -m safety_demo eval`: run methods over a benchmark, resumably, and report the rates.

For each item every requested method decodes side by side (`generate_many`, one batch per
step). As soon as an item finishes, one JSON line per (item, method) is appended to
`<out>/results.jsonl` and flushed to disk (fsync), so a crash or Ctrl-C loses at most the
item in flight. A restart skips every (item, method) already in the file; a half-written
last line is cut off first. `<out>/run.json` records what the answers depend on (benchmark,
model, tokens, seed); a restart with different values is refused rather than mixed in.

At the end `summary.md` (tables) and `report.html` (plotly charts) are written next to the
results, both covering the items and methods of this invocation.

Split over workers (`--shard I/N`, or one process of `accelerate launch`): worker I takes items
I, I + N, I + 2N, … of the same deterministic list and appends to
`<out>/shards/results-I-of-N.jsonl` (resumable per shard) beside its settings,
`shards/run-I-of-N.json`. The last worker to finish, or `python -m safety_demo eval-merge
<out>`, merges the shards into the usual results.jsonl, summary.md and report.html; shards
whose settings differ are refused, not mixed.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm import tqdm

from ..compare import CompareConfig, compare as side_by_side
from ..decoding import GenerationConfig, SafeSteerConfig, Trace
from ..methods import METHODS, default_configs, method_names, uses_probe
from ..inputs import InputError
from ..models import DEFAULT_MODEL, Request, VLMAdapter, load_adapter
from ..probe import get_probe
from .loaders import LOADERS, BenchItem, load_bench
from .answer_judge import judge_answer
from .metrics import Judge, Rate, phrase_judge, rates
from .report import write_reports

RESULTS = "results.jsonl"
RUN_INFO = "run.json"
PROMPT_CHARS = 200  # prompts are stored truncated (the benchmark file has them in full)
FINGERPRINT = ("bench", "model", "max_new_tokens", "seed", "probe_components")  # a resumed run must match these
SHARDS = "shards"
SHARD_SETTINGS = (*FINGERPRINT, "calibration", "data", "limit", "methods")  # the shards of one run share all of these


@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count`: items index, index + count, … of the run's list."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:  # "index 0 to -1" would not say what is wrong
            raise ValueError(f"shard {self.index}/{self.count}: N, the number of workers, must be at least 1 (I/N, counted from 0)")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: the index must be 0 to {self.count - 1} (I/N, counted from 0)")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """ "1/4" -> Shard(1, 4), with one sentence for anything else."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match:
            raise ValueError(f"--shard takes I/N (this worker's index from 0, and the number of workers), e.g. 0/4; got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def take(self, items: list) -> list:
        return items[self.index :: self.count]


def launcher_shard() -> Shard | None:
    """This process's share when a launcher started several (`accelerate launch`, torchrun):
    accelerate's own state says which process this is; on GPUs each worker gets its own device."""
    sizes = (os.environ.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))  # torchrun or MPI
    if max((int(v) for v in sizes if v and v.isdigit()), default=1) <= 1:
        return None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True, CPU workers all read as process 0
    if state.device.type == "cuda":
        torch.cuda.set_device(state.device)  # "cuda" in the loaders now means this worker's GPU
    return Shard(state.process_index, state.num_processes)


@dataclass
class EvalConfig:
    bench: str  # a LOADERS name
    data: Path  # the benchmark's folder (or its main file)
    methods: tuple[str, ...] = tuple(METHODS)  # method or variant names (methods.method_names()), side by side per item
    model: str = DEFAULT_MODEL  # registry name, as for `generate`
    limit: int | None = None  # N items, spread round-robin over categories (None = all)
    out: Path | None = None  # run folder; None = out/eval/<bench>-<model>
    max_new_tokens: int = 64  # per answer; refusals show in the first few dozen tokens
    seed: int = 0  # generation seed (and SafeCoDe's noise)
    probe_components: int | str = "auto"  # the probe's PCs: "auto" or a k (paper: 4)
    progress: bool = True  # tqdm bar on stderr
    shard: Shard | None = None  # this worker's share of the items (None: all of them)

    def __post_init__(self) -> None:
        if self.bench not in LOADERS:
            raise ValueError(f"Unknown benchmark {self.bench!r}; choose one of: {', '.join(LOADERS)}")
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in method_names()]
        if unknown or not self.methods:
            raise ValueError(f"Unknown method(s) {unknown}; choose among: {', '.join(method_names())}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"Methods repeat: {self.methods}")
        self.data = Path(self.data)
        if self.out is None:
            self.out = Path("out") / "eval" / f"{self.bench}-{re.sub(r'[^A-Za-z0-9._-]+', '_', self.model)}"
        self.out = Path(self.out)


@dataclass
class EvalResult:
    out: Path  # the run folder
    records: list[dict[str, Any]]  # this invocation's items × methods, from results.jsonl
    rates: list[Rate]  # ASR / refusal rate per method, overall, per category, per composition
    written: int = 0  # records decoded and appended in this invocation
    reused: int = 0  # records found from an earlier invocation
    files: dict[str, Path] = field(default_factory=dict)  # "results", "summary", "report"
    note: str = ""  # a shard: why it did not merge (its siblings are running, or their settings differ)


# ---- results file --------------------------------------------------------------------------
def read_results(path: Path) -> list[dict[str, Any]]:
    """Every well-formed record in a results file; torn or foreign lines are skipped."""
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written line from an interrupted run
            if isinstance(record, dict) and "item_id" in record and "method" in record:
                records.append(record)
    return records


def repair_tail(path: Path) -> None:
    """Cut a half-written last line (no trailing newline) so that appends start clean."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)  # 0 when the only line is torn


def append_records(f, records: Iterable[Mapping[str, Any]]) -> None:
    """Append JSON lines and force them to disk before the next item starts."""
    for record in records:
        f.write(json.dumps(record, ensure_ascii=False, default=_plain) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def run_info(config: EvalConfig) -> dict[str, Any]:
    """What the answers depend on: a resumed run or a sibling shard must match it."""
    from ..probe import calibration_key

    # the calibration set decides the probe (SafeSteer, the probe judge): a run never mixes two of them
    return {**{k: getattr(config, k) for k in FINGERPRINT}, "calibration": calibration_key()[:12]}


def check_run_info(out: Path, config: EvalConfig) -> None:
    """Write run.json on the first run; on a restart refuse settings that would change answers."""
    info = run_info(config)
    path = out / RUN_INFO
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict):
            changed = {k: (old.get(k), v) for k, v in info.items() if old.get(k) != v and (k in old or k != "calibration")}
            if changed:
                detail = ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                raise ValueError(f"{out} holds results of another run ({detail}). Choose another --out, or delete {out} to start over.")
    if not path.is_file() or old is None:
        _write_json(path, {**info, "data": str(config.data)})
    if config.shard is not None:  # each shard's own full settings: eval-merge compares them
        _write_json(out / SHARDS / f"run-{config.shard.name}.json",
                    {**info, "data": str(config.data), "limit": config.limit, "methods": list(config.methods), "shard": config.shard.name})


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Whole or not at all: workers starting together may write the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


# ---- one item -----------------------------------------------------------------------------
def make_record(bench: str, item: BenchItem, method: str, trace: Trace | None, judge: Judge, error: str | None = None) -> dict[str, Any]:
    """One JSON line: the item, the method's answer, the verdict and the method's own signals."""
    error = error or (trace.error if trace is not None else None)
    answer = trace.text if trace is not None else ""
    scene = trace.judge if trace is not None else None  # SafeCoDe's scene judge
    msav = trace.msav if trace is not None else None
    return {
        "bench": bench,
        "item_id": item.id,
        "method": method,
        "category": item.category,
        "composition": item.composition,
        "label": item.label,
        "prompt": item.prompt[:PROMPT_CHARS],
        "answer": answer,
        "refused": None if error else bool(judge(item.prompt, answer)),
        "refusal_judge": getattr(judge, "__name__", type(judge).__name__),
        "judge_label": None if error else judge_answer(item.prompt, answer, item.label),  # refusal / safe / harmful
        "tokens": len(trace) if trace is not None else 0,
        "decode_seconds": trace.timings.decode if trace is not None else None,
        "prefill_seconds": trace.timings.prefill if trace is not None else None,
        "judge_verdict": scene.verdict if scene else None,  # SafeCoDe's scene judge: "safe" / "unsafe"
        "judge_source": scene.source if scene else None,
        "judge_p_unsafe": scene.p_unsafe if scene else None,
        "msav_fired": msav.fired if msav else None,  # SafeSteer: did MSAV move h₀?
        "h0_score": trace.probe_h0 if msav else None,  # SafeSteer: P(harmful | h₀)
        "model_id": trace.model_id if trace is not None else None,
        "error": error,
    }


def run_item(adapter: VLMAdapter, item: BenchItem, methods: tuple[str, ...], compare: CompareConfig, probe, judge: Judge, bench: str) -> list[dict[str, Any]]:
    """Decode one item with `methods` side by side; one record per method (errors recorded, not raised)."""
    try:
        request = Request(item.load_image(), item.prompt)
    except InputError as exc:  # a broken benchmark image: recorded, so a restart does not retry forever
        return [make_record(bench, item, m, None, judge, error=f"InputError: {exc}") for m in methods]
    columns = {}
    for columns in side_by_side(adapter, request, replace(compare, methods=methods), probe, refresh=float("inf")):
        pass
    return [make_record(bench, item, m, columns[m].trace, judge, error=columns[m].error) for m in methods]


# ---- the run --------------------------------------------------------------------------------
def run_eval(config: EvalConfig, judge: Judge = phrase_judge, adapter: VLMAdapter | None = None) -> EvalResult:
    """Run (or resume) `config` and write results.jsonl, summary.md and report.html under `config.out`.

    A shard writes its own results file; the last shard to finish merges them all.
    """
    items = load_bench(config.bench, config.data, config.limit)
    out = config.out
    check_run_info(out, config)
    shard = config.shard
    results = out / RESULTS if shard is None else out / SHARDS / f"results-{shard.name}.jsonl"
    written = _decode(config, shard.take(items) if shard else items, results, judge, adapter)
    if shard is None:
        return _report(out, items, config.methods, read_results(results), asdict_config(config), written)
    try:
        return merge(out)  # the last worker to finish merges
    except ValueError as exc:  # siblings still running (ShardsNotReady), or shards that cannot be merged
        records = read_results(results)
        return EvalResult(out=out, records=records, rates=rates(records, by="judge"), written=written,
                          reused=len(records) - written, files={"results": results}, note=str(exc))


def _decode(config: EvalConfig, items: list[BenchItem], results: Path, judge: Judge, adapter: VLMAdapter | None) -> int:
    """Decode every (item, method) not in `results` yet, appending as each item finishes; returns the records written."""
    results.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(results)
    done = {(r["item_id"], r["method"]) for r in read_results(results)}
    todo = [(it, tuple(m for m in config.methods if (it.id, m) not in done)) for it in items]
    todo = [(it, ms) for it, ms in todo if ms]
    if not todo:
        return 0
    adapter = adapter or load_adapter(config.model)
    k = config.probe_components
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, seed=config.seed, keep_hidden=False)
    compare = CompareConfig(generation=gen, methods=config.methods, configs={**default_configs(), "safesteer": SafeSteerConfig(probe_components=k)})
    needs_probe = any(uses_probe(m, compare.configs) for _, ms in todo for m in ms)
    probe = get_probe(adapter, progress=config.progress, components=k) if needs_probe else None
    tally = {m: [0, 0] for m in config.methods}  # refused, judged
    written = 0
    desc = config.bench + (f" {config.shard.index}/{config.shard.count}" if config.shard else "")
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="item", file=sys.stderr, disable=not config.progress, dynamic_ncols=True)
    with bar, results.open("a", encoding="utf-8") as f:
        for item, methods in todo:
            records = run_item(adapter, item, methods, compare, probe, judge, config.bench)
            append_records(f, records)
            written += len(records)
            for r in records:
                if r["refused"] is not None:
                    tally[r["method"]][0] += int(r["refused"])
                    tally[r["method"]][1] += 1
            bar.set_postfix_str(" · ".join(f"{m} {a}/{b} refused" for m, (a, b) in tally.items() if b), refresh=False)
            bar.update(1)
    return written


def _report(out: Path, items: list[BenchItem], methods: tuple[str, ...], found: list[dict[str, Any]], info: dict[str, Any], written: int) -> EvalResult:
    """The run's records in item order (the first record of a key wins), the rates, summary.md and report.html."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for r in found:
        by_key.setdefault((r["item_id"], r["method"]), r)
    records = [by_key[(it.id, m)] for it in items for m in methods if (it.id, m) in by_key]
    table = rates(records, by="judge")
    files = {"results": out / RESULTS, **write_reports(out, records, table, info, phrase=rates(records, by="phrase"))}
    return EvalResult(out=out, records=records, rates=table, written=written, reused=len(records) - written, files=files)


# ---- shards -----------------------------------------------------------------------------------
class ShardsNotReady(ValueError):
    """Some shard is missing or unfinished: nothing to merge yet."""


def merge(out: str | Path) -> EvalResult:
    """Merge a sharded run's results into results.jsonl, summary.md and report.html.

    Refuses (ValueError, one sentence) shards whose settings differ or whose counts disagree;
    raises ShardsNotReady while a shard is missing or unfinished.
    """
    out = Path(out)
    infos = {p: json.loads(p.read_text()) for p in sorted((out / SHARDS).glob("run-*-of-*.json"))}
    if not infos:
        raise ValueError(f"{out} has no shards ({SHARDS}/run-I-of-N.json): run `eval --shard I/N --out {out}` first.")
    counts = {Shard.parse(i["shard"].replace("-of-", "/")).count for i in infos.values()}
    if len(counts) > 1:
        raise ValueError(f"{out} holds shards of runs split {sorted(counts)} ways: keep one split (delete the other shards).")
    first = next(iter(infos.values()))
    for path, info in infos.items():
        differ = [k for k in SHARD_SETTINGS if info.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"{path.name} was run with other settings ({', '.join(f'{k}: {info.get(k)!r} vs {first.get(k)!r}' for k in differ)}): "
                             "these shards cannot be merged.")
    (count,) = counts
    items, methods = load_bench(first["bench"], first["data"], first["limit"]), tuple(first["methods"])
    found: list[dict[str, Any]] = []
    for index in range(count):
        shard = Shard(index, count)
        records = read_results(out / SHARDS / f"results-{shard.name}.jsonl")
        keys = {(r["item_id"], r["method"]) for r in records}
        missing = sum((it.id, m) not in keys for it in shard.take(items) for m in methods)
        if missing:
            raise ShardsNotReady(f"shard {index}/{count} is missing {missing} records: run (or resume) it, then merge.")
        found += records
    result = _report(out, items, methods, found, {k: first.get(k) for k in SHARD_SETTINGS}, 0)
    tmp = out / f".{RESULTS}.{os.getpid()}"
    with tmp.open("w", encoding="utf-8") as f:
        append_records(f, result.records)
    tmp.replace(out / RESULTS)
    return replace(result, reused=len(result.records))


def asdict_config(config: EvalConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k not in ("progress", "shard")}


def main(config: EvalConfig, judge: Judge = phrase_judge) -> int:
    """CLI entry: run, then print the summary tables and where the files are."""
    if config.shard is None:
        config = replace(config, shard=launcher_shard())  # one process of `accelerate launch`
    result = run_eval(config, judge)
    if "summary" not in result.files:  # a shard whose siblings are still running
        print(f"shard {config.shard.index}/{config.shard.count}: {result.written} new records in {result.files['results']}. "
              f"Not merged: {result.note} (The last shard to finish merges; or: python -m safety_demo eval-merge {result.out})", file=sys.stderr)
        return 0
    print(result.files["summary"].read_text())
    print(f"{result.written} new records, {result.reused} reused; files in {result.out}/", file=sys.stderr)
    return 0


def merge_main(out: Path) -> int:
    """CLI entry of eval-merge."""
    result = merge(out)
    print(result.files["summary"].read_text())
    print(f"merged {len(result.records)} records from {out / SHARDS}/ into {result.files['results']}", file=sys.stderr)
    return 0


__all__ = ["EvalConfig", "EvalResult", "Shard", "ShardsNotReady", "launcher_shard", "main", "make_record", "merge", "merge_main", "read_results",
           "repair_tail", "run_eval"]
