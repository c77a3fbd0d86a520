"""The tables of docs/RESULTS.md from run folders: `python -m safety_demo.eval.tables RUN_DIR [--by composition]`.

One row per group (composition, category or MOSSBench type), one column per method: the rate
read by the three-way answer judge with its 95% Wilson interval, and the phrase matcher's rate
after a slash. Only items answered by every listed method are counted, so the methods are
compared on the same items. Reads `results.jsonl` only; no model calls.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .metrics import Rate, rates
from .runner import RESULTS, read_results


def table(run: Path, by: str = "composition", methods: list[str] | None = None) -> str:
    records = read_results(Path(run) / RESULTS)
    seen = list(dict.fromkeys(r["method"] for r in records))
    methods = [m for m in (methods or seen) if m in seen]
    records = [r for r in records if r["method"] in methods]
    have = {}
    for r in records:
        have.setdefault(r["item_id"], set()).add(r["method"])
    records = [r for r in records if have[r["item_id"]] >= set(methods)]  # compare methods on the same items
    judge = {(r.method, r.group): r for r in rates(records, by="judge") if r.grouping in (by, "overall")}
    phrase = {(r.method, r.group): r for r in rates(records, by="phrase") if r.grouping in (by, "overall")}
    groups = list(dict.fromkeys(g for _, g in judge if g != "all")) + ["all"]
    metric = next(iter(judge.values())).metric if judge else "rate"

    def cell(rate: Rate | None, other: Rate | None) -> str:
        if rate is None or not rate.n:
            return "—"
        lo, hi = rate.wilson()
        return f"{rate.value:.0%} [{lo:.0%}, {hi:.0%}] / {other.value:.0%}" if other else f"{rate.value:.0%} [{lo:.0%}, {hi:.0%}]"

    lines = [f"{metric}: three-way judge [95% Wilson] / phrase matcher", "",
             f"| {by} | n | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for g in groups:
        n = max((judge[(m, g)].n for m in methods if (m, g) in judge), default=0)
        lines.append(f"| {g} | {n} | " + " | ".join(cell(judge.get((m, g)), phrase.get((m, g))) for m in methods) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--by", default="composition", choices=["composition", "category"])
    parser.add_argument("--methods", help="comma-separated subset, in this order")
    args = parser.parse_args()
    print(table(args.run, args.by, args.methods.split(",") if args.methods else None))


if __name__ == "__main__":
    main()
