"""jobs/_wiring.py: every job runs as `python -m jobs.NAME` and as `python jobs/NAME.py` (what `ray job submit`
runs, from a working dir where cmbert may not be installed), and keeps one exit contract: 0 done, 2 a one-line
user error on stderr, 1 a crash with its traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cmbert.errors import UserError
from tests.helpers import REPO
from jobs import _wiring
from tests.helpers.toy_job import ToyConfig, toy_run



def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("form", ["module", "script"])
@pytest.mark.parametrize("job", ["score", "demo"])  # the demo imports every other job
def test_jobs_start_in_both_forms(job, form):
    cmd = [sys.executable, "-m", f"jobs.{job}"] if form == "module" else [sys.executable, f"jobs/{job}.py"]
    done = subprocess.run(cmd + ["--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{job} ({form}): {done.stderr[-2000:]}"
    assert done.stdout.startswith(f"usage: {job} "), done.stdout[:200]


def test_script_form_without_cmbert_installed(tmp_path):
    """A Ray working dir: a copy of the code, run from elsewhere, with the editable install hidden."""
    for name in ("jobs", "cmbert", "schemas"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "jobs" / "score.py"
    hide = ("import sys, runpy, importlib.util; "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            f"sys.path[:] = [{str(script.parent)!r}] + [p for p in sys.path[1:] if p != {str(REPO)!r}]; "
            "assert importlib.util.find_spec('cmbert') is None; "
            f"sys.argv = [{str(script)!r}] + sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hide, "--checkpoint", str(tmp_path / "nope"), "--input",
                           str(tmp_path), "--output", str(tmp_path / "out")], cwd="/", env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("score: error: ") and "nope" in lines[0], lines
    import cmbert

    assert str(tmp_path) not in cmbert.__file__  # (this process is untouched)


def test_exit_contract_in_process(capsys):
    seen = []
    assert _wiring.run_job("toy", ToyConfig, toy_run, lambda cfg, r: seen.append(r), []) == 0 and seen == ["result"]
    assert _wiring.run_job("toy", ToyConfig, toy_run, argv=["--what", "user"]) == 2
    assert capsys.readouterr().err == "toy: error: the input is not there (second line)\n"
    with pytest.raises(ZeroDivisionError):  # a crash reaches the caller as itself
        _wiring.run_job("toy", ToyConfig, toy_run, argv=["--what", "crash"])
    with pytest.raises(SystemExit) as bad_flag:
        _wiring.run_job("toy", ToyConfig, toy_run, argv=["--what", "nope"])
    assert bad_flag.value.code == 2 and "toy: error: argument --what" in capsys.readouterr().err


@pytest.mark.parametrize("what, code", [("ok", 0), ("user", 2), ("crash", 1)])
def test_exit_codes_of_a_process(what, code):
    prog = ("from jobs import _wiring; "
            "from tests.helpers.toy_job import ToyConfig, toy_run; "
            "_wiring.exit_with(lambda: _wiring.run_job('toy', ToyConfig, toy_run, argv=['--what', %r]))" % what)
    done = subprocess.run([sys.executable, "-c", prog], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == code, done.stderr
    if what == "user":
        assert done.stderr == "toy: error: the input is not there (second line)\n"
    if what == "crash":
        assert "Traceback (most recent call last)" in done.stderr and "ZeroDivisionError: a bug" in done.stderr


def test_library_errors_are_user_errors():
    from cmbert import checkpoint, encoders, inputs, storage
    from cmbert.errors import ConfigError, FeatureMismatch

    for cls in (storage.StorageError, storage.SchemaMismatchError, checkpoint.CheckpointError, inputs.ManifestError,
                encoders.EncoderMissing, FeatureMismatch, ConfigError):
        assert issubclass(cls, UserError), cls
