"""Connecting a job to Ray: the cluster in RAY_ADDRESS (set by `ray job submit`), else a local one on loopback."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Workers inherit this. OpenMP's spinning wait costs 10-60x on a shared CPU (bench/bench_score.py finding);
    # a dedicated node may set OMP_WAIT_POLICY=ACTIVE explicitly.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    # address="local": always a private instance, never a cluster some other process left in /tmp/ray.
    start_with_retries(lambda: ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                                        _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=True))


def start_with_retries(start, attempts: int = 3) -> None:
    """Ray gives a starting raylet a fixed 30 s to register; on a loaded machine it may need a second try."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except Exception as exc:  # ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"ray: local start timed out (attempt {attempt}/{attempts}); retrying", flush=True)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


# Non-secret settings only. Credentials never go into a runtime_env: Ray writes its variables verbatim to
# runtime_env_agent.log. Jobs hand actors a ready S3 filesystem object instead (tests/test_reliability_inputs.py).
AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")


def worker_runtime_env() -> dict:
    """The driver's non-secret AWS settings for the workers it starts (a cluster's raylets may not have them).

    Only variables that are set are forwarded; on a cluster with instance roles none are needed.
    """
    env = {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}
    return {"env_vars": env} if env else {}
