"""Command line: parse into configs, call the library, print. No logic of its own."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .decoding import POLICIES, GenerationConfig, generate, make_policy
from .inputs import InputError, clean_prompt, load_image
from .models import DEFAULT_MODEL, ModelLoadError, Request, load_adapter, model_choices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safety_demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode one image + prompt, streaming the answer")
    gen.add_argument("--image", required=True, help="path of the image (PNG, JPEG, ...)")
    gen.add_argument("--prompt", required=True, help="the user's request")
    gen.add_argument("--model", default=DEFAULT_MODEL, help=f"builtin, builtin-fast, a preset or an allowed repo id (default {DEFAULT_MODEL})")
    gen.add_argument("--method", default="vanilla", choices=list(POLICIES))
    gen.add_argument("--trace", type=Path, help="write the trace as JSON here")
    gen.add_argument("--trace-hidden", action="store_true", help="include hidden states in the trace JSON (large)")
    defaults = GenerationConfig()
    gen.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    gen.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=defaults.top_p)
    gen.add_argument("--seed", type=int, default=defaults.seed)

    sub.add_parser("models", help="list the models this install can load by name")

    setup = sub.add_parser("setup", help="fetch, check and convert the built-in model(s) once")
    setup.add_argument("--variant", choices=["default", "fast", "all"], default="default")
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = clean_prompt(args.prompt)
    image = load_image(args.image)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    policy = make_policy(args.method)
    adapter = load_adapter(args.model)
    trace = None
    for event in generate(adapter, Request(image=image, prompt=prompt), policy, config):
        if event.done:
            trace = event.trace
        else:
            print(event.piece, end="", flush=True)
    print()
    m = trace.meta
    print(
        f"[{trace.method}] {len(trace)} tokens, {trace.tokens_per_second:.1f} tok/s, "
        f"first token after {m['ttft_seconds']:.2f}s",
        file=sys.stderr,
    )
    if args.trace:
        trace.save_json(args.trace, include_hidden=args.trace_hidden)
        print(f"trace written to {args.trace}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for name, description in model_choices().items():
        print(f"{name:24s} {description}")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from .models.builtin import build_builtin

    for variant in (["default", "fast"] if args.variant == "all" else [args.variant]):
        build_builtin(variant)
    return 0


COMMANDS = {"generate": cmd_generate, "models": cmd_models, "setup": cmd_setup}


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
