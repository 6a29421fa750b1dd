"""The benchmark suite's own logic: which benches `make bench` runs, and the scale-on-paper arithmetic.

Timings are never asserted (bench/ measures them); these check the code that turns figures into the summary.
"""

from __future__ import annotations

import json
import sys
import pytest

from tests.helpers import REPO

BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import bench_scale  # noqa: E402
import run_all  # noqa: E402
from common import merge_seeds  # noqa: E402


def test_make_bench_runs_the_cost_benches_and_not_the_accuracy_evaluations(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(run_all, "run_bench", lambda name, timeout: ran.append(name) or
                        {"name": name, "error": None, "seconds": 0.0, "started": 0.0})
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    assert run_all.main([]) == 0
    names = run_all.bench_names()
    assert ran == [n for n in names if n not in run_all.QUALITY]
    assert ran[:3] == ["preprocess", "train", "score"] and ran[-1] == "scale"  # scale reads the others' JSONs
    assert set(run_all.QUALITY) <= set(names) and not set(run_all.QUALITY) & set(ran)
    ran.clear()
    assert run_all.main(["--quality"]) == 0
    assert ran == names
    assert (tmp_path / "summary.md").exists()


def test_every_headline_names_a_bench_that_exists():
    # NAME-VARIANT (gpu-ravdess, score-minilm) is a second results file of bench_NAME.py
    assert {name.split("-")[0] for name in run_all.HEADLINES} <= set(run_all.bench_names())


def test_merge_keeps_earlier_seeds_not_run_now_in_the_job_order():
    doc = {"git": "abc", "time": "t0", "command": "bench ..."}
    old = [{"seed": 1, "v": "old"}, {"seed": 11, "v": "old"}, {"seed": 111, "v": "older", "from_results_file": "x"}]
    new = [{"seed": 11111, "v": "new"}, {"seed": 11, "v": "new"}]
    out = merge_seeds(new, old, doc)
    assert [(r["seed"], r["v"]) for r in out] == [(1, "old"), (11, "new"), (111, "older"), (11111, "new")]
    assert out[0]["from_results_file"] == doc and out[2]["from_results_file"] == "x"  # provenance kept
    assert "from_results_file" not in out[1] and "from_results_file" not in old[0]  # inputs untouched


def test_scale_arithmetic():
    # 20x realtime preprocessing = 180 s per video hour; 1000 utterances at 100/s = 10 s.
    row = bench_scale.per_hour(20.0, 1000.0, 100.0)
    assert row["preprocess_node_s_per_video_hour"] == 180.0 and row["score_node_s_per_video_hour"] == 10.0
    assert row["video_hours_per_node_hour"] == pytest.approx(3600 / 190, abs=0.01)
    job = bench_scale.cluster(row, 100_000, 100)
    assert job["wall_hours_for_job"] == pytest.approx(100_000 / (100 * 3600 / 190), abs=0.1)


def test_summary_reads_nested_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    (tmp_path / "memory.json").write_text(json.dumps({"time": "t", "git": "g", "figures": {
        "preprocess": {"corpus_1x": {"peak_pss_mib": 1000.0}, "corpus_4x": {"peak_pss_mib": 1100.0},
                       "ratio_4x_over_1x": 1.1}}}))
    text = run_all.summary_markdown(["memory"], {})
    assert "| 1000 MiB |" in text and "| 1.10x |" in text
    assert "| score peak PSS, 1x corpus | - |" in text  # a figure the JSON lacks shows as a dash
