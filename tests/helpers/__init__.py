"""Test-only helpers shared by the layers (unit/, jobs/, reliability/): paths, the audio corpus, the bad-input
corpus, the S3 server, the network watcher, the cluster files. Builders shared with bench/ are in cmbert/testing.py."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CORPUS = FIXTURES / "corpus"  # the committed demo clips and their manifest
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = "runs/demo"  # what `make demo` writes (jobs/demo.py --output runs/demo), relative to where it runs
