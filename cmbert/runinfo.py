"""Run ids, timestamps and the code version that every job records beside its outputs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid
from dataclasses import asdict, is_dataclass

import cmbert

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_run_id(job: str) -> str:
    """Sortable and unique: job, UTC time to the second, and 6 random hex digits."""
    return f"{job}-{utc_now().strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def code_version() -> str:
    """The git commit of the code that ran (with '+dirty' for local changes), else the package version."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"cmbert-{cmbert.__version__}"


def config_json(config) -> str:
    """The resolved job config as JSON, for output metadata. Job configs never hold credentials."""
    data = asdict(config) if is_dataclass(config) else dict(config)
    return json.dumps(data, sort_keys=True, default=str)


def write_run_row(output: str, *, job: str, status: str, run_id: str, started, config, input: str,
                  n_input: int, n_output: int, n_rejected: int, n_skipped: int, audio_seconds: float = 0.0,
                  model_version: str | None = None) -> None:
    """One row of ``OUTPUT/runs/`` (schemas.RUNS_SCHEMA): what a job run did, with its config and code version."""
    import pyarrow as pa

    from cmbert import storage
    from schemas import RUNS_SCHEMA

    finished = utc_now()
    row = {
        "run_id": run_id, "job": job, "status": status, "started_at": started, "finished_at": finished,
        "duration_s": (finished - started).total_seconds(), "input": input, "output": output,
        "n_input": n_input, "n_output": n_output, "n_rejected": n_rejected, "n_skipped": n_skipped,
        "audio_seconds": float(audio_seconds), "model_version": model_version, "code_version": code_version(),
        "config_json": config_json(config),
    }
    runs = storage.locate(output).join("runs").uri
    storage.write_table(pa.Table.from_pylist([row], schema=RUNS_SCHEMA), runs, RUNS_SCHEMA)
