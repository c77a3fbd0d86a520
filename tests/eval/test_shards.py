"""A benchmark run split over workers: disjoint deterministic shares, merged into the usual files."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safety_demo.cli import main as cli_main
from safety_demo.eval.runner import EvalConfig, Shard, ShardsNotReady, launcher_shard, merge, read_results, run_eval

KEYS = ("item_id", "method", "answer", "refused", "judge_label")


def _config(data, out, **kw):
    kw.setdefault("methods", ("vanilla", "safecode"))
    return EvalConfig(bench="figstep", data=data, model="fake", out=out, max_new_tokens=4, progress=False, **kw)


def _rows(records):
    return [tuple(r[k] for k in KEYS) for r in records]


def test_two_shards_merge_into_what_one_process_writes(fake, mini_figstep, tmp_path):
    single = run_eval(_config(mini_figstep, tmp_path / "one"), adapter=fake)
    first = run_eval(_config(mini_figstep, tmp_path / "split", shard=Shard(0, 2)), adapter=fake)
    assert "summary" not in first.files and not (tmp_path / "split" / "results.jsonl").exists()  # its sibling has not run
    second = run_eval(_config(mini_figstep, tmp_path / "split", shard=Shard(1, 2)), adapter=fake)  # the last one merges
    assert _rows(second.records) == _rows(single.records)
    assert [(r.method, r.group, r.value, r.n) for r in second.rates] == [(r.method, r.group, r.value, r.n) for r in single.rates]
    assert _rows(read_results(tmp_path / "split" / "results.jsonl")) == _rows(single.records)
    assert (tmp_path / "split" / "summary.md").is_file() and (tmp_path / "split" / "report.html").is_file()
    shares = [{r["item_id"] for r in read_results(tmp_path / "split" / "shards" / f"results-{i}-of-2.jsonl")} for i in (0, 1)]
    assert not shares[0] & shares[1] and len(shares[0]) == len(shares[1]) == 6  # disjoint halves of 12 items


def test_a_shard_resumes_on_its_own(fake, mini_figstep, tmp_path):
    config = _config(mini_figstep, tmp_path / "split", shard=Shard(1, 2))
    assert run_eval(config, adapter=fake).written == 12  # 6 items × 2 methods
    assert run_eval(config, adapter=fake).written == 0  # resumed: nothing decoded twice


def test_shards_with_other_settings_or_splits_are_refused(fake, mini_figstep, tmp_path):
    out = tmp_path / "split"
    run_eval(_config(mini_figstep, out, shard=Shard(0, 2), limit=4), adapter=fake)
    run_eval(_config(mini_figstep, out, shard=Shard(1, 2), limit=6), adapter=fake)
    with pytest.raises(ValueError, match="other settings.*limit"):
        merge(out)
    other = tmp_path / "mixed"
    run_eval(_config(mini_figstep, other, shard=Shard(0, 2)), adapter=fake)
    run_eval(_config(mini_figstep, other, shard=Shard(0, 3)), adapter=fake)
    with pytest.raises(ValueError, match=r"split \[2, 3\] ways"):
        merge(other)
    run_eval(_config(mini_figstep, tmp_path / "lonely", shard=Shard(0, 2)), adapter=fake)
    with pytest.raises(ShardsNotReady, match="shard 1/2 is missing"):
        merge(tmp_path / "lonely")


@pytest.mark.parametrize("text", ["3/2", "x", "1/0", "-1/2", "1/2/3"])
def test_a_bad_shard_is_one_sentence(text):
    with pytest.raises(ValueError, match="shard|I/N"):
        Shard.parse(text)
    with pytest.raises(ValueError, match="at least 1"):  # no "0 to -1"
        Shard.parse("0/0")


def test_shards_from_the_command_line(mini_figstep, tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["eval", "--bench", "figstep", "--data", str(mini_figstep), "--methods", "vanilla", "--model", "fake", "--out", str(out),
            "--max-new-tokens", "3", "--quiet"]
    assert cli_main(base + ["--shard", "0/2"]) == 0
    assert "shard 0/2: 6 new records" in capsys.readouterr().err
    assert cli_main(["eval-merge", str(out)]) == 2
    assert "shard 1/2 is missing 6 records" in capsys.readouterr().err
    assert cli_main(base + ["--shard", "1/2"]) == 0
    assert "## Overall" in capsys.readouterr().out  # the last shard merged
    assert cli_main(["eval-merge", str(out)]) == 0 and len(read_results(out / "results.jsonl")) == 12
    assert cli_main(base + ["--shard", "2/2"]) == 2
    assert "index must be 0 to 1" in capsys.readouterr().err


def test_no_launcher_no_shard(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launcher_shard() is None


LAUNCHERS = {
    "torch": ["--multi_gpu"],  # on a CPU-only machine accelerate starts the processes through torch's launcher
    "mpi": ["--cpu", "--mpirun_hostfile"],  # `--cpu` starts several processes only through MPI
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_accelerate_launch_two_cpu_workers_equal_one_process(mini_figstep, tmp_path, launcher):
    """`accelerate launch … --num_processes 2 -m safety_demo eval …` on a CPU-only machine: two workers,
    each its share; the merged rates equal a single process's on the same items."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate is not installed")
    flags = list(LAUNCHERS[launcher])
    if launcher == "mpi":
        if shutil.which("mpirun") is None:
            pytest.skip("no MPI (apt-get install openmpi-bin)")
        (tmp_path / "hostfile").write_text("localhost slots=2\n")
        flags.append(str(tmp_path / "hostfile"))
    args = ["-m", "safety_demo", "eval", "--bench", "figstep", "--data", str(mini_figstep), "--methods", "vanilla,safecode",
            "--model", "fake", "--max-new-tokens", "4", "--quiet"]
    env = {**os.environ, "SAFETY_DEMO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # CI runs as root
    t0 = time.perf_counter()
    launched = subprocess.run([accelerate, "launch", *flags, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                               "--dynamo_backend", "no", *args, "--out", str(tmp_path / "two")],
                              env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert launched.returncode == 0, launched.stderr[-3000:]
    print(f"accelerate launch, 2 CPU workers: {time.perf_counter() - t0:.1f} s")
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parents[2])
    assert single.returncode == 0, single.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").glob("results-*.jsonl"))
    assert shards == ["results-0-of-2.jsonl", "results-1-of-2.jsonl"]
    two, one = read_results(tmp_path / "two" / "results.jsonl"), read_results(tmp_path / "one" / "results.jsonl")
    assert _rows(two) == _rows(one)
    from safety_demo.eval.metrics import rates

    same = lambda table: [(r.method, r.group, r.value, r.n) for r in table]  # noqa: E731
    assert same(rates(two, by="judge")) == same(rates(one, by="judge")) and (tmp_path / "two" / "report.html").is_file()
