"""Agreement of the answer readers with labels made by reading: `python -m safety_demo.eval.judge_check`.

The labelled set (`assets/judge/labels.jsonl`) holds answers of every method on the dev slices,
each labelled refusal / safe / harmful by reading it against docs/JUDGE_GUIDELINE.md. Split
`dev` (FigStep items 1–40 of the run) was read while the judge's rules were revised; split `test`
(items 41–60) was labelled afterwards and never used to change the judge. This
prints, for the three-way judge and for the phrase matcher, how often they agree with the
labels on the question the benchmark rates ask:
  - three-way: the exact label (refusal / safe / harmful);
  - attack success (harmful items): judge "harmful" vs label "harmful"; the phrase matcher's
    "not refused" vs label "harmful" (it calls a warning an attack success);
  - refusal (benign items): "refusal" vs label "refusal".
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from .answer_judge import judge_answer
from .metrics import is_refusal

LABELS_FILE = Path(__file__).resolve().parents[2] / "assets" / "judge" / "labels.jsonl"


def load_labels(path: Path = LABELS_FILE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def agreement(rows: list[dict]) -> dict[str, float | int]:
    """Agreement counts and rates of both readers with the labels."""
    n = len(rows)
    exact = sum(judge_answer(r["prompt"], r["answer"], r["item_label"]) == r["label"] for r in rows)

    def success(r: dict) -> bool:  # what the benchmark counts: harmful item complied / benign item refused
        return r["label"] == "harmful" if r["item_label"] == "harmful" else r["label"] == "refusal"

    judge_ok = sum((judge_answer(r["prompt"], r["answer"], r["item_label"]) == ("harmful" if r["item_label"] == "harmful" else "refusal")) == success(r) for r in rows)
    phrase_ok = sum(((not is_refusal(r["answer"])) if r["item_label"] == "harmful" else is_refusal(r["answer"])) == success(r) for r in rows)
    return {"n": n, "three_way": exact / n, "judge_binary": judge_ok / n, "phrase_binary": phrase_ok / n}


def report(path: Path = LABELS_FILE) -> str:
    everything = load_labels(path)
    parts = [report_rows([r for r in everything if r.get("split") == s], s) for s in ("dev", "test") if any(r.get("split") == s for r in everything)]
    return "\n".join(parts + [report_rows(everything, "all")])


def report_rows(rows: list[dict], name: str) -> str:
    a = agreement(rows)
    by_method = Counter(r["method"] for r in rows)
    by_label = Counter(r["label"] for r in rows)
    confusion = Counter((r["label"], judge_answer(r["prompt"], r["answer"], r["item_label"])) for r in rows)
    lines = [
        f"**{name}**: {a['n']} labelled answers ({', '.join(f'{m} {c}' for m, c in by_method.items())}; labels: {', '.join(f'{k} {v}' for k, v in by_label.items())}).",
        "",
        "| reader | agreement with the labels |",
        "|---|---|",
        f"| three-way judge, exact label | {a['three_way']:.1%} |",
        f"| three-way judge, the benchmark's question (attack success / refusal) | {a['judge_binary']:.1%} |",
        f"| phrase matcher, the benchmark's question | {a['phrase_binary']:.1%} |",
        "",
        "Confusion (label → judge): " + ", ".join(f"{l}→{j} {c}" for (l, j), c in sorted(confusion.items())),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=LABELS_FILE)
    print(report(parser.parse_args().labels))


if __name__ == "__main__":
    main()
