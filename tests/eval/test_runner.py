"""The eval runner on the fake model: records, resumability, the reports, the CLI."""
import json
from html.parser import HTMLParser

import pytest

import safety_demo.eval.runner as runner
from safety_demo.cli import main as cli_main
from safety_demo.eval.runner import EvalConfig, read_results, run_eval

from .conftest import BENCH, axis_probe, needs_mossbench

FIELDS = {"bench", "item_id", "method", "category", "composition", "label", "prompt", "answer", "refused", "tokens",
          "decode_seconds", "judge_verdict", "msav_fired", "h0_score", "model_id", "error"}


def _config(data, out, **kw):
    kw.setdefault("methods", ("vanilla", "safecode"))
    return EvalConfig(bench="figstep", data=data, model="fake", out=out, max_new_tokens=4, progress=False, **kw)


def _lines(path):
    return path.read_text().splitlines()


def test_records_carry_every_field(fake, mini_figstep, tmp_path):
    result = run_eval(_config(mini_figstep, tmp_path / "run", limit=2), adapter=fake)
    assert result.written == 4 and result.reused == 0
    records = read_results(tmp_path / "run" / "results.jsonl")
    assert len(records) == 4 and FIELDS <= set(records[0])
    vanilla, safecode = records[0], records[1]
    assert (vanilla["method"], safecode["method"]) == ("vanilla", "safecode")
    assert vanilla["item_id"] == safecode["item_id"] == "1-1:figstep"
    assert vanilla["model_id"] == "fake-0" and vanilla["tokens"] == 4 and isinstance(vanilla["refused"], bool)
    assert safecode["judge_verdict"] in ("safe", "unsafe") and vanilla["judge_verdict"] is None
    assert len(vanilla["prompt"]) <= runner.PROMPT_CHARS


def test_resume_after_interruption(fake, mini_figstep, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_eval(_config(mini_figstep, out, limit=3), adapter=fake)
    results = out / "results.jsonl"
    lines = _lines(results)
    assert len(lines) == 6
    # simulate a crash in the middle of writing item 3's second record
    results.write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])
    result = run_eval(_config(mini_figstep, out, limit=5), adapter=fake)
    after = _lines(results)
    assert after[:5] == lines[:5]  # finished records kept byte for byte
    keys = [(json.loads(l)["item_id"], json.loads(l)["method"]) for l in after]
    assert len(keys) == len(set(keys)) == 10  # no duplicates, the rest completed
    assert result.written == 5 and result.reused == 5 and len(result.records) == 10
    # everything done: a rerun decodes nothing and never loads a model
    monkeypatch.setattr(runner, "load_adapter", lambda name: pytest.fail("should not load a model"))
    again = run_eval(_config(mini_figstep, out, limit=5))
    assert again.written == 0 and _lines(results) == after


def test_adding_a_method_runs_only_that_method(fake, mini_figstep, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "get_probe", lambda adapter, progress=True, components=4: axis_probe(adapter))
    out = tmp_path / "run"
    run_eval(_config(mini_figstep, out, limit=2, methods=("vanilla",)), adapter=fake)
    result = run_eval(_config(mini_figstep, out, limit=2, methods=("vanilla", "safesteer")), adapter=fake)
    assert result.written == 2
    steer = [r for r in result.records if r["method"] == "safesteer"]
    assert len(steer) == 2 and all(isinstance(r["msav_fired"], bool) and 0.0 <= r["h0_score"] <= 1.0 for r in steer)


def test_changed_settings_are_refused(fake, mini_figstep, tmp_path):
    run_eval(_config(mini_figstep, tmp_path / "run", limit=1), adapter=fake)
    with pytest.raises(ValueError, match="seed was 0, now 1"):
        run_eval(_config(mini_figstep, tmp_path / "run", limit=1, seed=1), adapter=fake)


def test_judge_hook_decides_refusals(fake, mini_figstep, tmp_path):
    result = run_eval(_config(mini_figstep, tmp_path / "run", limit=2, methods=("vanilla",)), judge=lambda prompt, answer: True, adapter=fake)
    assert all(r["refused"] for r in result.records)
    from safety_demo.eval.metrics import rates

    overall = [r for r in rates(result.records, by="phrase") if r.grouping == "overall"]
    assert [(r.metric, r.value) for r in overall] == [("ASR", 0.0)]
    assert all(r["judge_label"] in ("refusal", "safe", "harmful") for r in result.records)  # the three-way reader beside it


class _Charts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.charts = 0
        self.title = None

    def handle_starttag(self, tag, attrs):
        if tag == "div" and "plotly-graph-div" in (dict(attrs).get("class") or ""):
            self.charts += 1


def test_summary_and_report_are_written_and_parse(fake, mini_figstep, tmp_path):
    result = run_eval(_config(mini_figstep, tmp_path / "run", limit=6), adapter=fake)
    summary = result.files["summary"].read_text()
    assert "## Overall" in summary and "| vanilla |" in summary and "## ASR by category" in summary
    assert "Illegal Activity" in summary and "| figstep |" in summary and "| text |" in summary
    assert "approximate" in summary
    page = result.files["report"].read_text()
    parser = _Charts()
    parser.feed(page)
    parser.close()
    assert parser.charts == 3  # overall, ASR by category, ASR by composition
    assert page.count("Plotly.newPlot") == 3


def test_cli_eval(mini_figstep, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["eval", "--bench", "figstep", "--data", str(mini_figstep), "--methods", "vanilla", "--model", "fake",
            "--limit", "2", "--out", str(out), "--max-new-tokens", "3", "--quiet"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr()
    assert "## Overall" in printed.out and "2 new records" in printed.err
    assert len(_lines(out / "results.jsonl")) == 2
    assert cli_main(argv[:6] + ["vanilla,nope"] + argv[7:]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli_main(["eval", "--bench", "figstep", "--data", str(tmp_path / "nowhere"), "--model", "fake", "--quiet"]) == 2
    assert "safebench.csv" in capsys.readouterr().err


@needs_mossbench
def test_mossbench_reports_refusal_rate(fake, tmp_path):
    cfg = EvalConfig(bench="mossbench", data=BENCH / "mossbench", methods=("vanilla",), model="fake", out=tmp_path / "m", limit=3, max_new_tokens=3, progress=False)
    result = run_eval(cfg, adapter=fake)
    assert {r.metric for r in result.rates} == {"refusal rate"}
    assert len({r["category"] for r in result.records}) == 3


def test_a_run_made_with_another_calibration_set_is_not_resumed(fake, mini_figstep, tmp_path, monkeypatch):
    import safety_demo.probe as probe_pkg

    run_eval(_config(mini_figstep, tmp_path / "run", limit=1, methods=("vanilla",)), adapter=fake)
    monkeypatch.setattr(probe_pkg, "calibration_key", lambda: "another-set-0000")
    with pytest.raises(ValueError, match="calibration"):
        run_eval(_config(mini_figstep, tmp_path / "run", limit=1, methods=("vanilla",)), adapter=fake)
