"""Command line: parse into configs, call the library, print. No logic of its own."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .decoding import GenerationConfig, generate
from .inputs import InputError, clean_prompt, load_image
from .methods import METHODS, build, method_names
from .models import DEFAULT_MODEL, ModelLoadError, Request, load_adapter, model_choices


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type, prefix: str) -> None:
    """One --prefix-field flag per dataclass field, with the named default in the help."""
    group = parser.add_argument_group(f"{prefix} knobs")
    for f in dataclasses.fields(config_cls):
        flag = f"--{prefix}-{f.name.replace('_', '-')}"
        if f.type in (bool, "bool"):
            group.add_argument(flag, dest=f"{prefix}__{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str, "int | str": _components}.get(str(f.type), str)
            group.add_argument(flag, dest=f"{prefix}__{f.name}", metavar=f.name.upper(), type=kind, default=f.default, help=f"default {f.default!r}")


def _components(value: str) -> int | str:
    """argparse type of the probe-components flags: 'auto' or one of 4 … 128."""
    from .probe import parse_components

    try:
        return parse_components(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safety_demo", description="Safety-steering decoding, token by token.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode one image + prompt with one method, streaming the answer")
    _add_request_flags(gen)
    gen.add_argument("--method", default="vanilla", choices=list(method_names()))
    gen.add_argument("--trace", type=Path, help="write the trace as JSON here")
    gen.add_argument("--trace-hidden", action="store_true", help="include hidden states in the trace JSON (large)")

    cmp = sub.add_parser("compare", help="decode one image + prompt with every method side by side, in one batch per step")
    _add_request_flags(cmp)
    cmp.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, among {', '.join(method_names())}")
    cmp.add_argument("--json", type=Path, metavar="FILE", help="write every method's trace as JSON here")

    sub.add_parser("models", help="list the models this install can load by name")

    setup = sub.add_parser("setup", help="fetch, check and convert the built-in model(s) once")
    setup.add_argument("--variant", choices=["default", "fast", "all"], default="default")

    bench = sub.add_parser("bench", help="measure every method's cost as a ratio to vanilla (writes docs/PERFORMANCE.md)")
    bench.add_argument("--model", default=DEFAULT_MODEL)
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--prompts", type=int, default=2)
    bench.add_argument("--output", type=Path, default=Path("docs/PERFORMANCE.md"))
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the named figures (vanilla_tok_s, bound_tok_s, ratios, cpu, dtype) as JSON")
    bench.add_argument("--app", action="store_true", help="also time the app's streaming against compare() (starts app.py on loopback)")

    ev = sub.add_parser("eval", help="run methods over a benchmark: ASR / refusal rate, resumable (writes results.jsonl, summary.md, report.html)")
    ev.add_argument("--bench", required=True, choices=list(_bench_loaders()), help="benchmark format")
    ev.add_argument("--data", required=True, type=Path, help="the benchmark's folder (or its main file)")
    ev.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, among {', '.join(method_names())}")
    ev.add_argument("--model", default=DEFAULT_MODEL)
    ev.add_argument("--limit", type=int, help="at most N items, spread over categories (default: all)")
    ev.add_argument("--out", type=Path, help="run folder; rerun with the same folder to resume (default out/eval/<bench>-<model>)")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--probe-components", type=_components, default="auto", help="SafeSteer's probe PCs: auto (default) or 4 … 128 (paper: 4)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--shard", metavar="I/N", help="this worker's share: items I, I+N, I+2N, ... (0 ≤ I < N); "
                    "under `accelerate launch` the process index and count are used")

    merge = sub.add_parser("eval-merge", help="merge a sharded eval run's shards into results.jsonl, summary.md and report.html")
    merge.add_argument("run_dir", type=Path, help="the --out folder the shards wrote to")

    fit = sub.add_parser("fit-probe", help="fit SafeSteer's Decoding-Probe on the calibration set")
    fit.add_argument("--model", default=DEFAULT_MODEL)
    fit.add_argument("--refit", action="store_true", help="refit even if a probe file exists (reuses cached h₀)")
    fit.add_argument("--re-extract", action="store_true", help="extract the calibration h₀ again even if cached or shipped (implies --refit; times the pass)")
    fit.add_argument("--components", type=_components, default="auto", help="PCA components: auto (smallest k within 0.01 AUROC of the best; default) or 4, 8, … 128 (paper: 4)")
    fit.add_argument("--ship", action="store_true", help="also copy the probe, the paper's 4-PC probe and the calibration h₀ into assets/probes/")
    return parser


def _add_request_flags(parser: argparse.ArgumentParser) -> None:
    """--image, --prompt, --model, the generation knobs and every registered method's knobs."""
    parser.add_argument("--image", required=True, help="path of the image (PNG, JPEG, ...)")
    parser.add_argument("--prompt", required=True, help="the user's request")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"builtin, builtin-fast, a preset or an allowed repo id (default {DEFAULT_MODEL})")
    defaults = GenerationConfig()
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    for method in METHODS.values():
        if method.config is not None:
            _add_config_flags(parser, method.config, method.name)


def _read_request(args: argparse.Namespace) -> tuple[Request, GenerationConfig, dict]:
    """The request, the generation config and each method's config from the flags."""
    request = Request(image=load_image(args.image), prompt=clean_prompt(args.prompt))
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    configs = {}
    for method in (m for m in METHODS.values() if m.config is not None):
        knobs = {k.split("__", 1)[1]: v for k, v in vars(args).items() if k.startswith(f"{method.name}__")}
        configs[method.name] = method.config(**knobs)
    return request, config, configs


def _summary(trace) -> str:
    """One line after an answer: length, speed, and what the method read before decoding."""
    extra = ""
    if trace.judge is not None:
        extra = f"; judge: {trace.judge.verdict} ({trace.judge.source}), caption: {trace.judge.caption!r}"
    if trace.msav is not None:
        extra = f"; P(harmful|h₀)={trace.probe_h0:.3f}, MSAV {'fired' if trace.msav.fired else 'off'}; {trace.probe}"
    if trace.error:
        extra += f"; FAILED: {trace.error}"
    ttft = trace.timings.ttft
    return f"[{trace.method}] {len(trace)} tokens, {trace.tokens_per_second:.1f} tok/s, first token after {ttft or 0:.2f}s{extra}"


def cmd_generate(args: argparse.Namespace) -> int:
    request, config, configs = _read_request(args)
    adapter = load_adapter(args.model)
    probe = _existing_probe(adapter, configs)
    policy = build(args.method, adapter, request, configs, probe)  # SafeCoDe's judge decodes here
    trace = None
    for event in generate(adapter, request, policy, config):
        if event.done:
            trace = event.trace
        elif event.token_id not in adapter.eos_token_ids:
            print(event.piece, end="", flush=True)
    print()
    if probe is not None:
        from .decoding import add_probe_scores

        add_probe_scores(trace, probe)
    print(_summary(trace), file=sys.stderr)
    if args.trace:
        trace.save_json(args.trace, include_hidden=args.trace_hidden)
        print(f"trace written to {args.trace}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Every method side by side; the answers are printed one after the other when all are done."""
    import json

    from .compare import CompareConfig, compare

    request, config, configs = _read_request(args)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in method_names()]
    if unknown or not methods:
        raise InputError(f"Unknown method(s) {unknown}; choose among: {', '.join(method_names())}")
    adapter = load_adapter(args.model)
    probe = _existing_probe(adapter, configs)
    columns = {}
    for columns in compare(adapter, request, CompareConfig(config, configs, methods), probe, refresh=1.0):
        done = sum(c.done for c in columns.values())
        print(f"\r{done}/{len(columns)} done · " + " · ".join(f"{n}: {c.n_tokens}" for n, c in columns.items()), end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for name, col in columns.items():
        print(f"── {name} " + "─" * max(0, 60 - len(name)))
        print(col.text.strip() if col.trace is not None else f"(failed: {col.error})")
        if col.trace is not None:
            print(_summary(col.trace), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({n: c.trace.to_dict() for n, c in columns.items() if c.trace is not None}, ensure_ascii=False, indent=1))
        print(f"traces written to {args.json}", file=sys.stderr)
    return 0 if all(c.error is None for c in columns.values()) else 1


def _existing_probe(adapter, configs: dict):
    """The probe for per-token P(harmful) and SafeSteer, if one exists (shipped or fitted); None otherwise."""
    from .probe import ProbeError, get_probe

    components = configs["safesteer"].probe_components if "safesteer" in configs else "auto"
    try:
        return get_probe(adapter, fit_if_missing=False, progress=False, components=components)
    except ProbeError:
        return None  # SafeSteer then fits one on first use (slow, once); `fit-probe` makes one ahead


def cmd_models(args: argparse.Namespace) -> int:
    for name, description in model_choices().items():
        print(f"{name:24s} {description}")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from .models.builtin import build_builtin

    for variant in (["default", "fast"] if args.variant == "all" else [args.variant]):
        build_builtin(variant)
    return 0


def cmd_fit_probe(args: argparse.Namespace) -> int:
    from .probe import fit_for, get_probe, ship

    adapter = load_adapter(args.model)
    if args.re_extract:
        probe = fit_for(adapter, components=args.components, re_extract=True)
    else:
        probe = fit_for(adapter, components=args.components) if args.refit else get_probe(adapter, components=args.components)
    from .probe import describe_probe

    m = probe.metrics
    print(f"{describe_probe(probe)}")
    if "selection" in m:
        print("held-out AUROC by k: " + ", ".join(f"{k}: {v:.3f}" for k, v in m["selection"]["auroc_by_k"].items()))
    print(f"probe ({probe.n_components} PCs) for {adapter.model_id}: {m.get('n_train')} training items, "
          f"h₀ extraction {m.get('extract_seconds', float('nan')):.1f}s, fit {m.get('fit_seconds', float('nan')):.2f}s")
    print(f"{'held-out':10s} {'n':>5s} {'accuracy':>9s} {'AUROC':>7s}")
    for name in ("overall", "CB", "TYPO", "FIGSTEP", "NATURAL"):
        if name in m:
            row = m[name]
            auroc = "—" if row["auroc"] is None else f"{row['auroc']:.3f}"
            print(f"{name:10s} {row['n']:5d} {row['accuracy']:9.3f} {auroc:>7s}")
    if args.ship:
        for path in ship(adapter, components=tuple(dict.fromkeys((args.components, 4)))):
            print(f"shipped {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .eval.bench import BenchConfig, main as bench_main

    cfg = BenchConfig(model=args.model, new_tokens=args.new_tokens, repeats=args.repeats, prompts=args.prompts, output=args.output, app=args.app)
    return bench_main(cfg, "python -m safety_demo " + " ".join(sys.argv[1:]), json_path=args.json)


def _bench_loaders() -> dict:
    from .eval.loaders import LOADERS

    return LOADERS


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.runner import EvalConfig, Shard, main as eval_main

    cfg = EvalConfig(
        bench=args.bench, data=args.data, methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), model=args.model,
        limit=args.limit, out=args.out, max_new_tokens=args.max_new_tokens, seed=args.seed,
        probe_components=args.probe_components, progress=not args.quiet, shard=Shard.parse(args.shard) if args.shard else None,
    )
    return eval_main(cfg)


def cmd_eval_merge(args: argparse.Namespace) -> int:
    from .eval.runner import merge_main

    return merge_main(args.run_dir)


COMMANDS = {"bench": cmd_bench, "compare": cmd_compare, "generate": cmd_generate, "models": cmd_models, "setup": cmd_setup, "fit-probe": cmd_fit_probe, "eval": cmd_eval,
            "eval-merge": cmd_eval_merge}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (InputError, ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: one line, the traceback on demand
        if os.environ.get("SAFETY_DEMO_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set SAFETY_DEMO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
