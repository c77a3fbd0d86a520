"""`bench --json` writes the named figures; the bandwidth bound counts the bytes a step streams."""
from __future__ import annotations

import json

import pytest
import torch

from safety_demo.eval.bench import JSON_FIELDS, BenchConfig, BenchResult, main, model_bytes, runs


class _LM(torch.nn.Module):
    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, 8)
        self.body = torch.nn.Linear(8, 8, bias=False)
        self.head = torch.nn.Linear(8, 100, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


class _Adapter:
    def __init__(self, tied: bool) -> None:
        self.model = _LM(tied)


def test_streamed_bytes_skip_an_untied_embedding_table():
    body, table = 8 * 8 * 4, 100 * 8 * 4
    assert model_bytes(_Adapter(tied=False)) == body + table  # head streamed, embedding only gathered
    assert model_bytes(_Adapter(tied=True)) == body + table  # the shared table streamed once, by the head


def test_each_median_comes_with_its_runs_spread():
    """A noisy host shows: the report gives the lowest and highest run beside a median, the JSON every run."""
    result = BenchResult()
    for value in (0.98, 0.91, 1.02):
        result.add("safesteer ratio", value)
    result.add("vanilla / bound", 0.64)
    result.add("vanilla / bound", float("nan"))
    assert result.median("safesteer ratio") == 0.98
    assert result.span("safesteer ratio") == "runs 0.91–1.02×"
    assert result.span("missing") == "runs nan–nan×"
    assert runs(result) == {"safesteer ratio": [0.98, 0.91, 1.02], "vanilla / bound": [0.64, None]}  # NaN is not JSON


@pytest.mark.slow  # a real bench run (fake model): about a minute on 2 cores
def test_bench_json_has_the_named_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_DEMO_FAKE_MODEL", "1")
    out = tmp_path / "bench.json"
    (tmp_path / "PERF-avx2.md").write_text("# the same bench on another CPU\n")
    main(BenchConfig(model="fake", new_tokens=3, repeats=1, prompts=1, output=tmp_path / "PERF.md"), "test", json_path=out)
    figures = json.loads(out.read_text())
    assert set(JSON_FIELDS) <= set(figures)
    assert figures["vanilla_tok_s"] > 0 and figures["side_by_side_ratio"] > 0
    assert figures["dtype"] == "float32" and "cores" in figures["cpu"]
    text = (tmp_path / "PERF.md").read_text()
    assert "Bandwidth bound" in text and "[PERF-avx2.md](PERF-avx2.md)" in text  # other CPUs' runs are linked
    assert "SafeSteer tok/s ÷ vanilla | " in text and "(runs " in text  # each ratio's spread beside its median
    assert len(figures["runs"]["safesteer ratio"]) == 1  # one prompt × one repeat
    probes = figures["facts"]["bandwidth_probes"]
    assert {"fp32 matrix-vector, 256 MB", "fp32 sum, 1 GB"} <= set(probes) and all(0 < gbs < 10_000 for gbs in probes.values())


@pytest.mark.slow  # a bench run on the fake model without its probes: about 20 s on 2 cores
def test_methods_sit_between_two_vanilla_runs_and_the_bound_brackets_a_third(tmp_path, monkeypatch):
    """The host's speed drifts within seconds: the methods are timed between two vanilla runs (their
    ratios are to the pair's mean), and vanilla's bound is probed right before and after its own run."""
    from safety_demo.eval import bench

    monkeypatch.setenv("SAFETY_DEMO_FAKE_MODEL", "1")
    calls: list[str] = []
    speeds = iter([10.0, 20.0])  # GB/s before and after vanilla: the memory sped up during the run
    monkeypatch.setattr(bench, "Bandwidth", lambda: lambda repeats: calls.append("probes") or {"fp32 sum, 1 GB": next(speeds)})
    traces: dict[str, list] = {}
    real = bench.run_to_end

    def timed(adapter, req, policy, gen):
        calls.append(policy.name)
        trace = real(adapter, req, policy, gen)
        traces.setdefault(policy.name, []).append(trace)
        return trace

    monkeypatch.setattr(bench, "run_to_end", timed)
    result, facts = bench.run_bench(BenchConfig(model="fake", new_tokens=3, repeats=1, prompts=1, output=None), log=lambda *a: None)
    assert calls == ["vanilla", "safecode", "safesteer", "vanilla", "probes", "vanilla", "probes"]
    assert facts["bandwidth_probes"] == {"fp32 sum, 1 GB": 20.0} and facts["bandwidth_drift"] == 2.0  # the faster probe bounds the run
    before, after, bounded = traces["vanilla"]
    assert result.rows["vanilla tok/s"] == [bounded.tokens_per_second]
    assert result.rows["vanilla / bound"] == [bounded.tokens_per_second / facts["bound_tps"]]
    mean = (before.tokens_per_second + after.tokens_per_second) / 2
    assert result.rows["safecode decode ratio"] == [traces["safecode"][0].tokens_per_second / mean]
    assert result.rows["safesteer ratio"] == [traces["safesteer"][0].tokens_per_second / mean]
