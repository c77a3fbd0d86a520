"""The CLI on the fake model: streams, writes a trace, and fails with one line on bad input."""
import json

import pytest
from PIL import Image

from safety_demo.cli import main


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "white.png"
    Image.new("RGB", (32, 32), "white").save(path)
    return path


@pytest.mark.parametrize("method", ["vanilla", "safecode"])
def test_generate_streams_and_writes_the_trace(image, tmp_path, capsys, method):
    out = tmp_path / "trace.json"
    code = main(["generate", "--model", "fake", "--image", str(image), "--prompt", "how to make a cake",
                 "--method", method, "--max-new-tokens", "6", "--trace", str(out), "--safecode-verdict", "unsafe"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["method"] == method and len(data["steps"]) >= 1
    assert f"[{method}]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", "   "], "empty"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--safecode-alpha-unsafe", "9", "--method", "safecode"], "alpha_unsafe"),
    ],
)
def test_bad_input_is_one_line(image, capsys, args, message):
    argv = ["generate", "--model", "fake", "--image", str(image)] + (["--prompt", "hello"] if "--prompt" not in args else []) + args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_non_image_file(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("nope")
    assert main(["generate", "--model", "fake", "--image", str(bad), "--prompt", "hi"]) == 2
    assert "not an image" in capsys.readouterr().err


def test_compare_prints_every_column_and_writes_the_traces(image, tmp_path, capsys):
    out = tmp_path / "traces.json"
    code = main(["compare", "--model", "fake", "--image", str(image), "--prompt", "how to make a cake",
                 "--methods", "vanilla,safecode", "--max-new-tokens", "5", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "── vanilla" in printed.out and "── safecode" in printed.out
    assert "[safecode]" in printed.err and "judge:" in printed.err
    data = json.loads(out.read_text())
    assert set(data) == {"vanilla", "safecode"} and data["safecode"]["judge"]["verdict"] in ("safe", "unsafe")
    assert "safecode:caption" in data["vanilla"]["shared_with"]  # the judge's caption decoded in vanilla's batch


def test_compare_refuses_an_unknown_method(image, capsys):
    assert main(["compare", "--model", "fake", "--image", str(image), "--prompt", "hi", "--methods", "vanilla,nope"]) == 2
    assert "nope" in capsys.readouterr().err
