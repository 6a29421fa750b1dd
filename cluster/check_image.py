"""Checks an installed cmbert environment against the repo's pins: the last step of cluster/Dockerfile.

    python cluster/check_image.py [--cuda] [--models]

- every ``name==version`` in pyproject.toml's dependencies and in the Makefile's NODEPS (the packages
  installed with --no-deps) is installed at exactly that version (a CUDA build's local label, ``+cu128``, aside);
- ``--cuda``: torch is a CUDA build (what the image needs; the CPU build is what a plain pip install gets here);
- ``--models``: every bundled model loads offline (HF_HUB_OFFLINE=1: nothing is downloaded).
Prints one line per problem and exits 1 if there is any. The lists are read from the repo at run time, so the
image and the tests agree with pyproject.toml and the Makefile after every change to them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)")


def pyproject_pins(path: Path = REPO / "pyproject.toml") -> dict[str, str]:
    deps = tomllib.loads(path.read_text())["project"]["dependencies"]
    return {m.group(1): m.group(2) for m in map(PIN.match, deps) if m}


def makefile_nodeps(repo: Path = REPO) -> list[str]:
    """The Makefile's NODEPS, expanded by make itself (continuation lines and variables included)."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(repo), "--eval",
                          "print-nodeps: ; @echo $(NODEPS)", "print-nodeps"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def nodeps_pins(repo: Path = REPO) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in map(PIN.match, makefile_nodeps(repo)) if m}


def check_pins(pins: dict[str, str]) -> list[str]:
    problems = []
    for name, want in sorted(pins.items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={want} is not installed")
            continue
        if have.split("+", 1)[0] != want:
            problems.append(f"{name} is {have}, the repo pins {want}")
    return problems


def check_cuda() -> list[str]:
    import torch

    return [] if torch.version.cuda else [f"torch {torch.__version__} is not a CUDA build"]


def model_loaders() -> dict:
    """One loader per bundled model, as the jobs call them (nothing is loaded here)."""
    sys.path.insert(0, str(REPO))
    from cmbert.audio import diarize, features, vad, words
    from cmbert.model import resolve_encoder

    return {
        "encoder minilm": lambda: resolve_encoder("minilm"),
        "vad": vad.load_vad,
        "aligner": words.load_aligner,
        "asr": words.load_asr,
        "speaker encoder": diarize.load_speaker_encoder,
        "features egemaps": lambda: features.load_features("egemaps"),
        "features whisper": lambda: features.load_features("whisper"),
    }


def check_models() -> list[str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    problems = []
    for name, load in model_loaders().items():
        try:
            load()
        except Exception as exc:  # report every model that fails, not just the first
            problems.append(f"bundled model {name} does not load offline: {type(exc).__name__}: {exc}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="torch must be a CUDA build")
    parser.add_argument("--models", action="store_true", help="every bundled model must load offline")
    args = parser.parse_args(argv)
    pins = pyproject_pins() | nodeps_pins()
    problems = check_pins(pins)
    if args.cuda:
        problems += check_cuda()
    if args.models:
        problems += check_models()
    for p in problems:
        print(f"check_image: {p}", file=sys.stderr)
    if not problems:
        print(f"check_image: {len(pins)} pins installed as pinned"
              + (", CUDA torch" if args.cuda else "") + (", bundled models load offline" if args.models else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
