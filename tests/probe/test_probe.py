"""Decoding-Probe: fitting on synthetic features, persistence, and every way a file can be bad."""
import numpy as np
import pytest

import safety_demo.data.calibration as calibration
from safety_demo import probe as probe_pkg
from safety_demo.probe import DecodingProbe, ProbeError, fit_probe, get_probe, probe_path


def synthetic(n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array(["harmful", "harmless"] * (n // 2))
    comps = np.array(["CB", "CB", "TYPO", "TYPO", "FIGSTEP", "FIGSTEP", "CB", "CB"] * (n // 8))
    splits = np.where(np.arange(n) % 5 == 0, "heldout", "train")
    h = rng.normal(size=(n, d)).astype(np.float32)
    h[labels == "harmful", 0] += 3.0  # harm lives on axis 0
    h[(labels == "harmful") & (comps != "CB"), 1] += 2.0  # image-carried harm shifts axis 1
    return h, labels, comps, splits


def test_fit_separates_and_reports_heldout_metrics():
    probe = fit_probe(*synthetic(), model_id="m", calibration_hash="c")
    assert probe.metrics["overall"]["auroc"] > 0.95
    assert set(probe.metrics) >= {"CB", "TYPO", "FIGSTEP"}
    assert probe.mu[1] > 1.5 and abs(probe.mu[0]) < 0.5  # μ points from text-only to image-carried harm


def test_save_load_round_trip(tmp_path):
    probe = fit_probe(*synthetic(), model_id="m", calibration_hash="c")
    path = probe.save(tmp_path / "p.npz")
    back = DecodingProbe.load(path, model_id="m", calibration_hash="c")
    h = synthetic(seed=1)[0]
    np.testing.assert_allclose(back.prob(h), probe.prob(h), rtol=1e-6)


def test_probe_from_another_model_or_set_is_rejected(tmp_path):
    path = fit_probe(*synthetic(), model_id="m", calibration_hash="c").save(tmp_path / "p.npz")
    with pytest.raises(ProbeError, match="not on 'other'"):
        DecodingProbe.load(path, model_id="other")
    with pytest.raises(ProbeError, match="another calibration set"):
        DecodingProbe.load(path, model_id="m", calibration_hash="different")


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 truncated zip"])
def test_corrupt_file_is_explained(tmp_path, content):
    path = tmp_path / "p.npz"
    path.write_bytes(content)
    with pytest.raises(ProbeError, match="corrupt"):
        DecodingProbe.load(path)


@pytest.fixture
def small_calibration(monkeypatch, tmp_path):
    """A quick calibration subset and a private cache, so get_probe's real path runs in seconds."""
    monkeypatch.setenv("SAFETY_DEMO_CACHE", str(tmp_path))
    full = calibration.calibration_items

    def few(split=None, compositions=("CB", "TYPO", "FIGSTEP"), **kw):
        items = full(split=split, compositions=("CB", "TYPO", "FIGSTEP"), **kw)
        keep = {}
        for it in items:
            keep.setdefault((it.label, it.composition, it.split), []).append(it)
        return [it for group in keep.values() for it in group[:6]]

    monkeypatch.setattr(calibration, "calibration_items", few)
    monkeypatch.setattr(probe_pkg, "_compositions", lambda: ("CB", "TYPO", "FIGSTEP"))


def test_missing_probe_is_fitted_then_loaded(fake, small_calibration):
    first = get_probe(fake, progress=False, components=4)
    path = probe_path(fake.model_id)
    assert path.is_file() and first.model_id == fake.model_id
    again = get_probe(fake, progress=False, components=4)
    np.testing.assert_array_equal(again.weight, first.weight)


def test_corrupt_probe_file_is_refitted(fake, small_calibration):
    get_probe(fake, progress=False, components=4)
    path = probe_path(fake.model_id)
    path.write_bytes(b"not a probe")
    probe = get_probe(fake, progress=False, components=4)
    assert probe.model_id == fake.model_id
    DecodingProbe.load(path)  # the refit replaced the bad file


def test_missing_probe_without_fitting_says_how_to_fit(fake, small_calibration):
    with pytest.raises(ProbeError, match="fit-probe"):
        get_probe(fake, fit_if_missing=False)


def test_shipped_probe_is_used_when_the_cache_has_none(fake, small_calibration, monkeypatch, tmp_path):
    fitted = get_probe(fake, progress=False)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    path = probe_path(fake.model_id, components="auto")
    path.rename(shipped / path.name)
    monkeypatch.setattr(probe_pkg, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(probe_pkg, "fit_for", lambda *a, **k: pytest.fail("refitted although a shipped probe exists"))
    np.testing.assert_array_equal(get_probe(fake, progress=False).weight, fitted.weight)


def test_re_extract_runs_the_model_although_h0_are_cached(fake, small_calibration, monkeypatch):
    """`fit-probe --re-extract` times a real calibration pass: cached h₀ must not short-cut it."""
    from safety_demo.probe import calibration_features, calibration_key

    key = calibration_key()
    calibration_features(fake, key, progress=False)  # cached now
    calls = []
    real = probe_pkg.extract_h0
    monkeypatch.setattr(probe_pkg, "extract_h0", lambda *a, **k: calls.append(1) or real(*a, **k))
    calibration_features(fake, key, progress=False)
    assert calls == []  # the cache answered
    feats = calibration_features(fake, key, progress=False, re_extract=True)
    assert calls == [1] and feats["h"].shape[0] > 0


def test_auto_keeps_the_smallest_k_within_tolerance_of_the_best(fake, small_calibration):
    from safety_demo.probe.probe import AUTO_TOLERANCE

    auto = get_probe(fake, progress=False)  # the default
    by_k = {int(k): v for k, v in auto.metrics["selection"]["auroc_by_k"].items()}
    best = max(by_k.values())
    assert auto.n_components == min(k for k, v in by_k.items() if v >= best - AUTO_TOLERANCE)
    assert auto.metrics["overall"]["auroc"] == by_k[auto.n_components]
    assert probe_path(fake.model_id, components="auto").is_file()


def test_shipped_builtin_probe_and_features_match_the_cached_key():
    """The files a fresh machine needs for the built-in model: the auto probe, the paper's 4, the h₀."""
    from safety_demo.probe import SHIPPED_DIR

    names = [p.name for p in SHIPPED_DIR.glob("builtin_*")]
    assert any(n.endswith("-pcauto.npz") for n in names) and any(n.endswith(".features.npz") for n in names)
    with np.load(next(SHIPPED_DIR.glob("builtin_*.features.npz"))) as z:
        assert {"h", "labels", "compositions", "splits"} <= set(z.files) and z["h"].shape[0] == len(z["labels"])


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("4", 4), (64, 64), (" AUTO ", "auto")])
def test_components_parse(value, expected):
    from safety_demo.probe import parse_components

    assert parse_components(value) == expected


@pytest.mark.parametrize("value", ["5", "abc", -1, "", "4.5"])
def test_bad_components_are_refused(value):
    from safety_demo.probe import parse_components

    with pytest.raises(ValueError, match="auto"):
        parse_components(value)


def test_more_components_are_a_separate_probe_from_the_same_features(fake, small_calibration):
    four = get_probe(fake, progress=False, components=4)
    eight = get_probe(fake, progress=False, components=8)
    assert four.n_components == 4 and eight.n_components == 8
    assert probe_path(fake.model_id, components=8) != probe_path(fake.model_id)
