"""Security checks of issue 6 that tests/reliability/test_code_security.py (no unpickling, no shell strings) and
tests/unit/test_cluster_manifests.py (non-root, no privilege escalation, least-privilege Role) do not already make:
the nightly script does not evaluate its settings, the manifests keep pods off the host and credentials out of
their text, and the fault-injection hook cannot be armed outside tests.

Credentials in job output, Ray's logs and written objects: tests/reliability/test_bad_inputs.py (preprocess) and
tests/reliability/test_faults.py (score), both on a real S3 server; in messages and Parquet metadata:
tests/unit/test_storage.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cmbert import faults, storage
from tests.helpers.cluster import REPO, SCRIPT, manifests, pod_specs


def hostile_settings(marker: Path) -> dict[str, str]:
    """Values that a shell would execute if the script ever evaluated them."""
    return {
        "CMBERT_INPUT": f"s3://v/x; touch {marker}",
        "CMBERT_MANIFEST": f"m.csv | touch {marker}",
        "CMBERT_CHECKPOINT": f"s3://m/x; touch {marker}",
        "CMBERT_DATA": f"$(touch {marker})",
        "CMBERT_OUTPUT": f"`touch {marker}` -rf --gpu",
        "CMBERT_SCORE_DATE": f"2024-01-01 && touch {marker}",
        # options are split into words on purpose, and nothing else: no expansion, no globbing, no evaluation
        "CMBERT_PREPROCESS_OPTIONS": f"--actors 1 && touch {marker} *",
        "CMBERT_SCORE_OPTIONS": f"--batch-size $(touch {marker})",
    }


def test_nightly_script_passes_settings_as_single_arguments(tmp_path):
    marker = tmp_path / "pwned"
    settings = hostile_settings(marker)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" "--" >> "$ARGS_OUT"\n')
    (fake / "python").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CMBERT_")} | {
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args")}
    want_pre = ["jobs/preprocess.py", "--input", settings["CMBERT_INPUT"], "--output", settings["CMBERT_DATA"],
                "--manifest", settings["CMBERT_MANIFEST"], *settings["CMBERT_PREPROCESS_OPTIONS"].split(" ")]
    want_score = ["jobs/score.py", "--checkpoint", settings["CMBERT_CHECKPOINT"], "--input",
                  settings["CMBERT_DATA"] + "/utterances", "--output", settings["CMBERT_OUTPUT"], "--score-date",
                  settings["CMBERT_SCORE_DATE"], *settings["CMBERT_SCORE_OPTIONS"].split(" ")]
    # the same values from the environment and from a settings file (which is parsed, never sourced)
    env_file = tmp_path / "nightly.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    for env in (base | settings | {"CMBERT_ENV_FILE": str(REPO / "cluster" / "nightly.env")},
                base | {"CMBERT_ENV_FILE": str(env_file)}):
        (tmp_path / "args").unlink(missing_ok=True)
        for step, want in (("preprocess", want_pre), ("score", want_score)):
            printed = subprocess.run(["bash", str(SCRIPT), "print", step], env=env, capture_output=True, text=True,
                                     timeout=30, check=True).stdout.splitlines()
            assert printed == ["python", *want]
        subprocess.run(["bash", str(SCRIPT), "run"], env=env, capture_output=True, text=True, timeout=30, check=True)
        ran = (tmp_path / "args").read_text().splitlines()
        assert ran == [*want_pre, "--", *want_score, "--"]  # each value verbatim; only the options split into words
        assert not marker.exists()


def test_pods_stay_off_the_host_with_the_default_seccomp_profile():
    n = 0
    for name, docs in manifests().items():
        for doc in docs:
            for where, spec in pod_specs(doc):
                n += 1
                assert (spec.get("securityContext") or {}).get("seccompProfile") == {"type": "RuntimeDefault"}, \
                    f"{name}{where}"
                for key in ("hostNetwork", "hostPID", "hostIPC"):
                    assert not spec.get(key), f"{name}{where}: {key}"
                assert not [v for v in spec.get("volumes", []) if "hostPath" in v], f"{name}{where}: hostPath"
    assert n >= 7


def test_manifests_and_scripts_hold_no_credentials():
    """Credentials reach pods only from a Secret (envFrom secretRef / secretKeyRef) or a workload identity."""
    def envs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "env" and isinstance(v, list):
                    yield from v
                else:
                    yield from envs(v)
        elif isinstance(node, list):
            for v in node:
                yield from envs(v)

    for name, docs in manifests().items():
        for doc in docs:
            for var in envs(doc):
                if storage.is_secret_key(var["name"]) or var["name"] in storage.SECRET_ENV:
                    assert "value" not in var, f"{name}: {var['name']} has a literal value"
    aws_key = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    for path in [*(REPO / "cluster").rglob("*"), REPO / "Makefile"]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not aws_key.search(text), path
            assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[=:]\s*['\"]?[A-Za-z0-9/+]{20,}", text), path


def test_fault_hook_is_armed_only_by_tests():
    """CMBERT_TEST_KILL is read in cmbert/faults.py only and set by nothing but tests (the jobs forward it to their
    actors through faults.worker_env() when it is set) and by bench/bench_delta.py's exactly-once experiment, for
    the write tasks of its own private Ray (through faults.ENV); kill points sit only in the two stages and that
    bench."""
    setters, calls = [], []
    for top in ("cmbert", "jobs", "cluster", "bench"):
        for path in (REPO / top).rglob("*"):
            if not path.is_file() or path.suffix not in (".py", ".sh", ".yaml", "") or "__pycache__" in path.parts:
                continue
            text = path.read_text(errors="replace")
            rel = str(path.relative_to(REPO))
            if rel != "cmbert/faults.py":  # elsewhere the name may appear in comments only
                setters += [f"{rel}: {line}" for line in text.splitlines()
                            if faults.ENV in line and "#" not in line.split(faults.ENV)[0]]
            if "kill_point(" in text and rel != "cmbert/faults.py":
                calls.append(rel)
    assert setters == []
    assert sorted(calls) == ["bench/bench_delta.py", "cmbert/scoring.py", "cmbert/stages.py"]
    for name in ("Makefile", "pyproject.toml"):
        assert faults.ENV not in (REPO / name).read_text()


def test_worker_runtime_env_never_carries_credentials(monkeypatch):
    """Ray logs a runtime_env's variables verbatim: only endpoint and region may be forwarded."""
    from cmbert.raysetup import worker_runtime_env
    from cmbert.storage import SECRET_ENV

    for var in SECRET_ENV:
        monkeypatch.setenv(var, "sekret-value-1234")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    env = worker_runtime_env().get("env_vars", {})
    assert env.get("AWS_ENDPOINT_URL") == "http://127.0.0.1:9"
    assert not set(env) & set(SECRET_ENV) and "sekret-value-1234" not in repr(env)
