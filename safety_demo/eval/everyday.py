"""Does the model answer ordinary photos? `python -m safety_demo.eval.everyday [--model builtin]`.

Greedy vanilla decoding (the product's engine) of the project's everyday image questions
(`assets/everyday/questions.jsonl`, 8 photos x 5 plain questions), read by the phrase refusal
detector; an answer "names" the photo when it contains one of the expected words. Also reports
how much the image moves the logits: the largest first-token logit change between an image and
its SafeCoDe-noised copy (sigma 0.1), which SafeCoDe's contrast needs to be non-zero.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..data import FIGSTEP_PROMPT
from ..data.calibration import load_photo
from ..data.everyday import EverydayQuestion, everyday_questions
from ..decoding import GenerationConfig, run_to_end
from ..inputs import add_gaussian_noise
from ..models import Request, VLMAdapter, load_adapter
from .metrics import is_refusal

ANSWER_TOKENS = 32
# (note_mode, named_min_prob) of the built-in adapter's image turn: the version before issue 11 first.
ABLATION = [("off", 0.15), ("off", 0.10), ("always", 0.10), ("auto", 0.10)]
CB_TOKENS = 16  # enough for the phrase detector to read a refusal's opening


def answer_all(adapter: VLMAdapter, questions: list[EverydayQuestion], max_new_tokens: int = ANSWER_TOKENS) -> list[dict]:
    """One greedy vanilla answer per question, with whether it refuses and names the object."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, keep_hidden=False)
    images = {q.image: q.load_image() for q in questions}
    rows = []
    for q in questions:
        answer = run_to_end(adapter, Request(images[q.image], q.prompt), config=config).text
        rows.append({"id": q.id, "prompt": q.prompt, "answer": answer,
                     "refused": is_refusal(answer), "named": q.names_object(answer)})
    return rows


@torch.no_grad()
def greedy_batch(adapter: VLMAdapter, requests: list[Request], max_new_tokens: int, batch: int = 20) -> list[str]:
    """Plain batched greedy decoding (left-padded rows): the ablation's fast path, not the product's engine."""
    answers = []
    for start in range(0, len(requests), batch):
        chunk = requests[start:start + batch]
        out = adapter.prefill(chunk)
        ids: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(max_new_tokens):
            nxt = out.logits.argmax(-1)  # (B,)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    ids[i].append(t)
                    done[i] = t in adapter.eos_token_ids
            if all(done):
                break
            out = adapter.step(nxt, out.state)
        answers += [adapter.decode(row) for row in ids]
    return answers


def ablation(adapter: VLMAdapter, questions: list[EverydayQuestion], max_new_tokens: int = ANSWER_TOKENS) -> str:
    """The image turn's alternatives, measured on the everyday set and on text-only harmful requests.

    Text-only harmful: the held-out harmful CB calibration requests (the project's own, a blank
    page as the image), whose refusal the product's gap needs, read after CB_TOKENS tokens.
    """
    from ..data.calibration import calibration_items, image_for

    if not hasattr(adapter, "note_mode"):
        raise SystemExit(f"--ablation needs the built-in model; {adapter.name} has no image-turn settings")
    cb = [it for it in calibration_items(split="heldout", compositions=("CB",)) if it.label == "harmful"]
    images = {q.image: q.load_image() for q in questions}
    everyday = [Request(images[q.image], q.prompt) for q in questions]
    harmful = [Request(image_for(it), it.prompt) for it in cb]
    lines = [
        f"Image-turn alternatives on `{adapter.name}`: batched greedy, {max_new_tokens} tokens on {len(questions)} everyday "
        f"questions; {CB_TOKENS} tokens on {len(cb)} held-out harmful text-only (CB) calibration requests.",
        "",
        "| system note | names classes from p ≥ | everyday refusals | names the object | CB harmful refused |",
        "|---|---|---|---|---|",
    ]
    saved = adapter.note_mode, adapter.named_min_prob
    try:
        for mode, min_prob in ABLATION:
            adapter.note_mode, adapter.named_min_prob = mode, min_prob
            answers = greedy_batch(adapter, everyday, max_new_tokens)
            refused_cb = sum(map(is_refusal, greedy_batch(adapter, harmful, CB_TOKENS, batch=28)))
            lines.append(f"| {mode} | {min_prob:.2f} | {sum(map(is_refusal, answers))}/{len(answers)} | "
                         f"{sum(q.names_object(a) for q, a in zip(questions, answers))}/{len(answers)} | {refused_cb}/{len(cb)} |")
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        adapter.note_mode, adapter.named_min_prob = saved
    return "\n".join(lines) + "\n"


@torch.no_grad()
def noise_logit_change(adapter: VLMAdapter, image, prompt: str, sigma: float = 0.1, seed: int = 0) -> float:
    """max_v |z(image)_v - z(noised image)_v| at the first answer token."""
    out = adapter.prefill([Request(image, prompt), Request(add_gaussian_noise(image, sigma, seed), prompt)])
    return float((out.logits[0] - out.logits[1]).abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--max-new-tokens", type=int, default=ANSWER_TOKENS)
    parser.add_argument("--json", action="store_true", help="print every answer as JSON lines instead of the table")
    parser.add_argument("--ablation", action="store_true", help="measure the built-in image turn's alternatives instead")
    args = parser.parse_args(argv)
    adapter = load_adapter(args.model)
    questions = everyday_questions()
    if args.ablation:
        print(ablation(adapter, questions, args.max_new_tokens))
        return
    t0 = time.perf_counter()
    rows = answer_all(adapter, questions, args.max_new_tokens)
    seconds = time.perf_counter() - t0
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    print(f"Everyday photos on `{args.model}` ({adapter.model_id}), greedy, {args.max_new_tokens} tokens, {seconds:.0f} s\n")
    print("| question | refused | names it | answer |\n|---|---|---|---|")
    for row in rows:
        answer = row["answer"].replace("\n", " ").replace("|", "\\|")[:90]
        print(f"| {row['id']} | {'yes' if row['refused'] else ''} | {'yes' if row['named'] else ''} | {answer} |")
    n = len(rows)
    print(f"\nrefusals {sum(r['refused'] for r in rows)}/{n}; answers naming the photo's object {sum(r['named'] for r in rows)}/{n}")
    checks = [("example:figstep_drugs.png", FIGSTEP_PROMPT), ("example:flower.jpg", "What is in this image?")]
    for source, prompt in checks:
        change = noise_logit_change(adapter, load_photo(source), prompt)
        print(f"largest first-token logit change, {source} vs its sigma=0.1 noised copy: {change:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
