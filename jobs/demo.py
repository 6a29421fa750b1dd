"""The end-to-end demo on embedded defaults: local Ray, local disk, bundled models, the committed corpus.

    python jobs/demo.py --output runs/demo

preprocess (tests/fixtures/corpus) -> train (short) -> evaluate -> score -> query. Each step is the real job's
main(), exactly as a user would call it, on the jobs' defaults (whisper word features; each of the manifest's 8
labelled rows is one utterance); only the demo's size is set here (2 epochs, 1 seed, 1 worker). The demo prints
where every output is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

try:
    from jobs import _wiring
except ImportError:  # python jobs/demo.py: jobs/ is on sys.path, the repo root may not be
    import _wiring

from cmbert import query, storage
from cmbert.errors import UserError
from cmbert.runinfo import REPO_ROOT
from jobs import evaluate, preprocess, score, train

CORPUS = os.path.join(REPO_ROOT, "tests", "fixtures", "corpus")


@dataclass
class DemoConfig:
    """Run the whole pipeline on the committed demo corpus."""

    output: str = field(default="runs/demo", metadata={"help": "where every output of the demo goes"})
    epochs: int = field(default=2, metadata={"help": "training epochs (short: the corpus is tiny)"})
    fresh: bool = field(default=True, metadata={"help": "delete the previous demo output first"})
    encoder: str | None = field(default=None, metadata={"help": "encoder for the training step (default: train's)"})


class StepFailed(UserError):
    """A step exited non-zero; its own error is on stderr above."""


def step(title: str, job, argv: list[str]) -> None:
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    code = job.main(argv)
    if code != 0:
        raise StepFailed(f"{title} failed with exit code {code}")


def run(cfg: DemoConfig) -> None:
    out = os.path.abspath(cfg.output)
    if cfg.fresh:
        storage.remove_tree(out)
    data = f"{out}/data"
    ckpt = f"{out}/checkpoint"
    scores = f"{out}/scored"
    step("preprocess", preprocess, ["--input", CORPUS, "--manifest", f"{CORPUS}/manifest.csv", "--output", data])
    step("train", train, ["--train", f"{data}/utterances", "--dev", f"{data}/utterances", "--output", ckpt,
                          "--epochs", str(cfg.epochs), "--seeds", "1", "--workers", "1"]
         + (["--encoder", cfg.encoder] if cfg.encoder else []))
    step("evaluate", evaluate, ["--checkpoint", ckpt, "--data", f"{data}/utterances",
                                "--output", f"{out}/metrics.json", "--heatmaps", f"{out}/heatmaps"])
    step("score", score, ["--checkpoint", ckpt, "--input", f"{data}/utterances", "--output", scores])
    step("query", query, ["--scores", f"{scores}/scores", "--plot", f"{out}/trend.png"])
    outputs = [("utterances", f"{data}/utterances"), ("rejects", f"{data}/rejects"), ("checkpoint", ckpt),
               ("metrics", f"{out}/metrics.json"), ("heatmaps", f"{out}/heatmaps"),
               ("scores", f"{scores}/scores"), ("trend plot", f"{out}/trend.png")]
    print("\n=== demo outputs")
    for name, path in outputs:
        print(f"  {name:<11} {path}")


def main(argv: list[str] | None = None) -> int:
    return _wiring.run_job("demo", DemoConfig, run, argv=argv)


if __name__ == "__main__":
    _wiring.exit_with(main)
