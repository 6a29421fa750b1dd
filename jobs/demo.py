"""The end-to-end demo on embedded defaults: local Ray, local disk, bundled models, the committed corpus.

    python jobs/demo.py --output runs/demo

preprocess (tests/fixtures/corpus) -> train (short) -> evaluate -> score -> query. Each step is the real job's
main(), exactly as a user would call it, on the jobs' defaults (whisper word features; each of the manifest's 8
labelled rows is one utterance); only the demo's size is set here (2 epochs, 1 seed, 1 worker). The demo prints
where every output is.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field

try:
    import cmbert  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cmbert.cli import parse_config
from cmbert.runinfo import REPO_ROOT

CORPUS = os.path.join(REPO_ROOT, "tests", "fixtures", "corpus")


@dataclass
class DemoConfig:
    """Run the whole pipeline on the committed demo corpus."""

    output: str = field(default="runs/demo", metadata={"help": "where every output of the demo goes"})
    epochs: int = field(default=2, metadata={"help": "training epochs (short: the corpus is tiny)"})
    fresh: bool = field(default=True, metadata={"help": "delete the previous demo output first"})
    encoder: str | None = field(default=None, metadata={"help": "encoder for the training step (default: train's)"})


def step(title: str, job_main, argv: list[str]) -> None:
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    code = job_main(argv)  # train/evaluate return their summary dict; the others an exit code
    if isinstance(code, int) and code != 0:
        raise SystemExit(f"demo: {title} failed with exit code {code}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, argv)
    out = os.path.abspath(cfg.output)
    if cfg.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    data = f"{out}/data"
    ckpt = f"{out}/checkpoint"
    scores = f"{out}/scored"

    import preprocess

    step("preprocess", preprocess.main,
         ["--input", CORPUS, "--manifest", f"{CORPUS}/manifest.csv", "--output", data])
    outputs = [("utterances", f"{data}/utterances"), ("rejects", f"{data}/rejects")]
    try:
        import evaluate
        import score
        import train
    except ImportError as exc:
        print(f"\n(demo: later stages not available yet: {exc})")
    else:
        step("train", train.main, ["--train", f"{data}/utterances", "--dev", f"{data}/utterances",
                                   "--output", ckpt, "--epochs", str(cfg.epochs), "--seeds", "1",
                                   "--workers", "1"] + (["--encoder", cfg.encoder] if cfg.encoder else []))
        step("evaluate", evaluate.main, ["--checkpoint", ckpt, "--data", f"{data}/utterances",
                                         "--output", f"{out}/metrics.json", "--heatmaps", f"{out}/heatmaps"])
        step("score", score.main, ["--checkpoint", ckpt, "--input", f"{data}/utterances", "--output", scores])
        from cmbert import query

        step("query", query.main, ["--scores", f"{scores}/scores", "--plot", f"{out}/trend.png"])
        outputs += [("checkpoint", ckpt), ("metrics", f"{out}/metrics.json"), ("heatmaps", f"{out}/heatmaps"),
                    ("scores", f"{scores}/scores"), ("trend plot", f"{out}/trend.png")]
    print("\n=== demo outputs")
    for name, path in outputs:
        print(f"  {name:<11} {path}")
    return 0


if __name__ == "__main__":
    from cmbert.console import quiet_console

    quiet_console()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
