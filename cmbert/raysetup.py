"""Connecting a job to Ray: the cluster in RAY_ADDRESS (set by `ray job submit`), else a private one on loopback."""

from __future__ import annotations

import contextlib
import os

LOOPBACK = "127.0.0.1"
# Ray binds every server (GCS, raylet, core workers, agents) to all interfaces unless this is 0. It reads the
# variable once, when `ray` is imported (ray._private.ray_constants.ENABLE_RAY_CLUSTER), so setting it later only
# reaches the processes Ray starts, not the driver that starts them.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Make the Ray started next from this process (and every process it starts) listen on 127.0.0.1 only.

    For private instances: local jobs, tests, the multi-node test cluster. Never call it before joining a real
    cluster: a driver that thinks its node is 127.0.0.1 cannot find its raylet among the cluster's addresses.
    """
    os.environ[LOOPBACK_ENV] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # ray may have been imported before the variable was set


def check_loopback() -> None:
    """Refuse to run on a private Ray that came up on another address (it would expose its ports)."""
    import ray

    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"the private local Ray came up on {address}, not {LOOPBACK}; refusing to run")


def data_context() -> None:
    """The one place the jobs configure Ray Data (``DataContext``): set before their datasets are built, which
    copy the context. ``init_ray`` applies it, so it holds on a cluster the job joins and in tests' shared Ray.

    - Group-bys shuffle with Ray tasks (sort-based, pull), not the default hash shuffle's aggregator actors: a
      task's output lost with a node is rebuilt from its lineage; an actor's is not, so losing the node that held
      an aggregator would fail the whole run (tests/jobs/test_multinode.py removes a node mid-run).
    - A worker's StorageError comes back as itself (the cause of Ray's task error), not as a UserCodeException
      with the cause only in its text, so the jobs print it as their one-line error.
    - No Ray Data progress bars: every job prints its own progress line (``incremental.drain``). They are not
      what the driver's CPU goes to: ``bench/profile_driver.py pool`` measures the streaming executor's cost
      the same with and without them (README, "What one driver can feed").
    """
    from ray.data.context import DataContext, ShuffleStrategy

    ctx = DataContext.get_current()
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.raise_original_map_exception = True
    ctx.enable_progress_bars = False


def init_ray(num_cpus: int | None = None) -> None:
    import ray

    data_context()
    if ray.is_initialized():
        return
    # Workers inherit this. OpenMP's spinning wait costs 10-60x on a shared CPU (bench/bench_score.py finding);
    # a dedicated node may set OMP_WAIT_POLICY=ACTIVE explicitly.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    dashboard = start_local_ray(num_cpus=num_cpus, log_to_driver=True)
    print(f"ray: private local Ray on {LOOPBACK}; dashboard http://{dashboard}", flush=True)


def start_local_ray(include_dashboard: bool = True, **init_args) -> str | None:
    """A private Ray instance on loopback (never a cluster some other process left in /tmp/ray).

    Its address is chosen up front and handed to every process it starts: Ray's own helpers (Ray Train's
    PlacementGroupCleaner, the state API) otherwise look for "their" cluster by scanning the machine for GCS
    processes, which fails once two Rays run here. The state API needs the dashboard, so it is on (loopback).
    """
    import ray

    loopback_only()
    init_args = {"configure_logging": False, "include_dashboard": include_dashboard, **init_args}
    started = []

    def start():
        gcs, dashboard = free_ports(2)  # picked together, so they differ; not 8265, which a ray-local.sh head uses
        if include_dashboard:
            init_args.update(dashboard_host=LOOPBACK, dashboard_port=dashboard)
        with _environ(RAY_GCS_SERVER_PORT=str(gcs), RAY_ADDRESS=f"{LOOPBACK}:{gcs}"):  # for Ray's processes only
            started.append(ray.init(address="local", _node_ip_address=LOOPBACK, **init_args))

    start_with_retries(start)
    check_loopback()
    return started[-1].dashboard_url  # host:port, or None without the dashboard


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback now (held open together so they differ)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            socks.append(sock)
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def torch_config():
    """Ray Train's torch process-group setup for the Ray this driver is connected to.

    When the driver's node is 127.0.0.1 the whole cluster is on this machine (a private local Ray, or the
    loopback test cluster), and the process group must listen there too: torch's TCPStore server binds every
    interface, and gloo picks the interface of the host name, unless told otherwise.
    """
    import ray
    from ray.train.torch import TorchConfig

    if ray.util.get_node_ip_address() != LOOPBACK:
        return TorchConfig()
    from ray.train.torch.config import _TorchBackend

    class LoopbackTorchBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            worker_group.execute(_process_group_on_loopback)
            super().on_start(worker_group, backend_config)

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return LoopbackTorchBackend

    return LoopbackTorchConfig()


def _process_group_on_loopback() -> None:
    """Runs in each Ray Train worker before torch.distributed starts (torch 2.13's env:// rendezvous)."""
    import importlib
    import socket

    # the module, not the function torch.distributed re-exports under the same name
    rendezvous = importlib.import_module("torch.distributed.rendezvous")

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pair sockets on the loopback interface
    tcp_store = rendezvous.TCPStore
    if getattr(tcp_store, "on_loopback", False):
        return

    def loopback_store(*args, **kwargs):
        # rank 0 hosts the store; TCPStore has no bind address, but serves on a socket it is handed
        if kwargs.get("is_master") and kwargs.get("master_listen_fd") is None:
            kwargs["master_listen_fd"] = socket.create_server((LOOPBACK, kwargs["port"])).detach()
        return tcp_store(*args, **kwargs)

    loopback_store.on_loopback = True
    rendezvous.TCPStore = loopback_store


def start_with_retries(start, attempts: int = 3) -> None:
    """Ray gives a starting raylet a fixed 30 s to register; on a loaded machine it may need a second try."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except Exception as exc:  # ray raises a bare Exception for this
            # a port picked as free can be taken before Ray binds it: the next attempt picks new ones
            retry = ("timed out during startup", "already occupied", "address already in use")
            if not any(m in str(exc) for m in retry) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"ray: local start timed out (attempt {attempt}/{attempts}); retrying", flush=True)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


# Non-secret settings only. Credentials never go into a runtime_env: Ray writes its variables verbatim to
# runtime_env_agent.log. Jobs hand actors a ready S3 filesystem object instead (tests/reliability/test_bad_inputs.py).
AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")


def worker_runtime_env() -> dict:
    """The driver's non-secret AWS settings for the workers it starts (a cluster's raylets may not have them).

    Only variables that are set are forwarded; on a cluster with instance roles none are needed.
    """
    env = {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}
    return {"env_vars": env} if env else {}
