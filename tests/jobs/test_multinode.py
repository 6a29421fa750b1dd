"""Several Ray nodes on loopback (``ray.cluster_utils.Cluster``: a head and two workers, 1 CPU each, every one
bound to 127.0.0.1 because conftest sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is imported) with the
real S3 server: preprocess and score S3 -> S3 with a worker node removed mid-run (exit 0, no row lost or
duplicated, a rerun adds nothing), and a local output path checked on every node."""

from __future__ import annotations

import threading
import time

import polars as pl
import pyarrow.fs as pafs
import pytest

import jobs.train
from cmbert import storage
from cmbert.testing import make_checkpoint
from jobs import preprocess
from jobs import score as score_job
from schemas import RUNS_SCHEMA, SCORES_SCHEMA, UTTERANCES_SCHEMA
from tests.helpers import REPO

pytestmark = pytest.mark.slow

CORPUS = REPO / "tests" / "fixtures" / "corpus"
NODE = {"num_cpus": 1, "object_store_memory": 160 * 1024**2}
# The GCS declares a node dead after health_check_failure_threshold (5) failed checks in a row. A removed node's
# checks fail at once (connection refused), so the period sets how soon: 5 s at 1 s instead of 15 s at Ray's 3 s.
# A live node that is slow to answer still fails a check only after health_check_timeout_ms (10 s, unchanged).
HEAD = NODE | {"_system_config": {"health_check_period_ms": 1000}}


@pytest.fixture(scope="module")
def cluster():
    """A 3-node cluster this module's jobs join (init_ray sees Ray initialised). Any in-process Ray of earlier
    tests is stopped first and started again, as conftest's ``ray_local`` made it, afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    from cmbert.raysetup import start_local_ray

    had_local = ray.is_initialized()
    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args=HEAD)
    workers = [c.add_node(**NODE) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    c.wait_for_nodes()
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        if had_local:
            start_local_ray(include_dashboard=False, num_cpus=2, object_store_memory=512 * 1024**2,
                            log_to_driver=False)


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


class RemoveNodeWhen(threading.Thread):
    """Removes a worker node (no graceful shutdown: its processes are killed) once ``ready()`` is true."""

    def __init__(self, cluster, node, ready):
        super().__init__(daemon=True)
        self.cluster, self.node, self.ready = cluster, node, ready
        self.finished = threading.Event()
        self.removed_at: float | None = None

    def run(self):
        while not self.finished.is_set():
            if self.ready():
                self.cluster.remove_node(self.node, allow_graceful=False)
                self.removed_at = time.monotonic()
                return
            time.sleep(0.2)


def run_with_node_removed(cluster, node, ready, job) -> int:
    killer = RemoveNodeWhen(cluster, node, ready)
    killer.start()
    try:
        rc = job()
        ended = time.monotonic()
    finally:
        killer.finished.set()
        killer.join()
    assert killer.removed_at is not None and killer.removed_at < ended, "the node was not removed mid-run"
    return rc


def wait_for(cond, timeout_s: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return False


def s3_parquet(bucket: str, prefix: str) -> list[str]:
    fs = storage.locate(f"s3://{bucket}").fs
    infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/{prefix}", recursive=True, allow_not_found=True))
    return [i.path for i in infos if i.path.endswith(".parquet")]


def test_preprocess_then_score_s3_with_a_worker_node_removed_mid_run(cluster, s3_env, tmp_path):
    c, workers = cluster
    bucket = s3_env
    corpus, out = f"s3://{bucket}/corpus", f"s3://{bucket}/prep"
    pafs.copy_files(str(CORPUS), storage.locate(corpus).path, destination_filesystem=storage.locate(corpus).fs)
    argv = ["--input", corpus, "--manifest", f"{corpus}/manifest.csv", "--output", out, "--diarizer", "none",
            "--clips-per-batch", "1", "--features", "egemaps"]  # the tiny checkpoint below expects eGeMAPS
    assert len(alive_nodes()) == 3

    # preprocess: the first file a worker staged (or published) means workers are mid-run; then node 1 goes
    rc = run_with_node_removed(c, workers[0], lambda: any(s3_parquet(bucket, p) for p in
                                                          ("_staging", "prep/_staging", "prep/utterances")),
                               lambda: preprocess.main(argv))
    assert rc == 0
    assert wait_for(lambda: len(alive_nodes()) == 2)  # the GCS notices a dead node after its heartbeats stop
    utt = pl.from_arrow(storage.read_table(f"{out}/utterances", UTTERANCES_SCHEMA))
    assert sorted(utt["source"].unique()) == sorted(p.name for p in CORPUS.iterdir() if p.suffix != ".csv")
    assert utt["utterance_id"].n_unique() == utt.height  # none twice
    assert not s3_parquet(bucket, "_staging") and not s3_parquet(bucket, "prep/_staging")
    n_utt = utt.height
    assert preprocess.main(argv) == 0  # a rerun adds nothing
    assert storage.read_table(f"{out}/utterances", UTTERANCES_SCHEMA).num_rows == n_utt

    # score the utterances on S3 (checkpoint too), losing the other worker node mid-run
    workers.append(c.add_node(**NODE))
    c.wait_for_nodes()
    ckpt = f"s3://{bucket}/ckpt"
    meta = make_checkpoint(ckpt)
    sargv = ["--checkpoint", ckpt, "--input", f"{out}/utterances", "--output", f"s3://{bucket}/scored",
             "--batch-size", "4", "--sort-window", "1", "--score-date", "2024-05-01"]
    rc = run_with_node_removed(c, workers[1], lambda: s3_parquet(bucket, "scored/_staging"),
                               lambda: score_job.main(sargv))
    assert rc == 0
    assert wait_for(lambda: len(alive_nodes()) == 2)  # (Ray Data's footer reader may land on a node not yet seen dead)
    scores = pl.from_arrow(storage.read_table(f"s3://{bucket}/scored/scores", SCORES_SCHEMA))
    assert scores.height == n_utt and scores["utterance_id"].n_unique() == n_utt  # none lost, none twice
    assert set(scores["utterance_id"]) == set(utt["utterance_id"])
    assert set(scores["model_version"]) == {meta.model_version}
    assert score_job.main(sargv) == 0  # a rerun adds nothing
    assert storage.read_table(f"s3://{bucket}/scored/scores", SCORES_SCHEMA).num_rows == n_utt
    runs = storage.read_table(f"s3://{bucket}/scored/runs", RUNS_SCHEMA).to_pylist()
    assert sorted((r["n_output"], r["n_skipped"]) for r in runs) == [(0, n_utt), (n_utt, 0)]
    workers.append(c.add_node(**NODE))  # back to three nodes for the next test
    c.wait_for_nodes()


def test_local_output_path_is_probed_on_every_node(cluster, tmp_path):
    """All loopback nodes share this machine's disk, so the probe passes (a node-local disk cannot be made on one
    machine: the failing branch is not exercised here)."""
    assert len(alive_nodes()) >= 2
    storage.require_shared(str(tmp_path / "out"))  # every node reads the probe back
    assert not any(p.name.startswith(".cmbert-probe") for p in (tmp_path / "out").iterdir())


def test_training_two_workers_on_two_nodes_resumes_after_a_node_is_removed_mid_epoch(cluster, tmp_path):
    """Ray Train (FailureConfig max_failures=1) restarts the worker group from the last checkpoint after the node
    of one of its two workers (1 CPU each, so they sit on two nodes) is removed after the first checkpoint, during
    epoch 1 or 2 of 3. Tolerance: every
    dev metric of the best checkpoint within rel 1e-6 of an uninterrupted run on the same cluster (the loop is
    deterministic on CPU and replays the lost epoch exactly from the last checkpoint)."""
    import ray
    from ray._private.state import available_resources_per_node  # no public per-node view of free resources

    from cmbert.testing import tiny_encoder_dir, tiny_rows, write_utterances

    c, workers = cluster
    train = jobs.train
    data = (write_utterances(str(tmp_path / "train"), tiny_rows(160, seed=0)),
            write_utterances(str(tmp_path / "dev"), tiny_rows(16, seed=1)))

    def argv(out):
        return ["--train", data[0], "--dev", data[1], "--output", out, "--encoder", tiny_encoder_dir(),
                "--epochs", "3", "--workers", "2", "--batch-size", "8", "--cpus-per-worker", "1",
                "--max-failures", "1", "--cls-audio", "mean"]

    assert train.main(argv(str(tmp_path / "straight"))) == 0
    straight = storage.read_json(str(tmp_path / "straight" / "summary.json"))
    out = tmp_path / "resumed"
    head = ray.get_runtime_context().get_node_id()
    by_id = {w.node_id: w for w in workers}

    def epoch0_saved():
        """After the first complete checkpoint (meta.json is written last): pick a non-head node whose CPU a
        training worker holds (each worker takes a node's only CPU)."""
        if not list(out.glob("_ray/*/epoch-*/meta.json")):
            return False
        free = available_resources_per_node()
        busy = [n for n in by_id if n != head and n in free and free[n].get("CPU", 0.0) < 0.5]
        if busy:
            epoch0_saved.victim = by_id[busy[0]]
            return True
        return False

    class Killer(RemoveNodeWhen):
        def run(self):
            while not self.finished.is_set():
                if self.ready():
                    self.cluster.remove_node(epoch0_saved.victim, allow_graceful=False)
                    self.removed_at = time.monotonic()
                    return
                time.sleep(0.1)

    killer = Killer(c, None, epoch0_saved)
    killer.start()
    try:
        assert train.main(argv(str(out))) == 0
        ended = time.monotonic()
    finally:
        killer.finished.set()
        killer.join()
    assert killer.removed_at is not None and killer.removed_at < ended, "no node was removed mid-run"
    resumed = storage.read_json(str(out / "summary.json"))
    a, b = straight["seeds"][0], resumed["seeds"][0]
    assert a["best_epoch"] == b["best_epoch"]
    for k, v in a["dev"].items():
        assert b["dev"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    workers.append(c.add_node(**NODE))
    c.wait_for_nodes()
