"""What every job shares and nothing else: the import bootstrap, the exit contract, the actor pool.

Every job starts with the same four lines, so it runs both as ``python -m jobs.NAME`` and as
``python jobs/NAME.py`` (what ``ray job submit -- python jobs/train.py`` runs, from a working dir where cmbert
may not be installed)::

    try:
        from jobs import _wiring
    except ImportError:  # python jobs/NAME.py: jobs/ is on sys.path, the repo root may not be
        import _wiring

Exit contract, the same for every job: 0 done; 2 a user error (``cmbert.errors.UserError`` or an argparse
error), one line on stderr, ``<job>: error: ...``; 1 a crash, with its traceback (Python's own exit).
``main(argv)`` returns the code (tests call it); ``__main__`` hands it to :func:`exit_with`.
"""

from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bootstrap() -> None:
    """The one sys.path bootstrap: make ``cmbert``, ``schemas`` and ``jobs`` importable from the repo root.

    An installed cmbert is used as it is (the root goes last then: only ``jobs`` comes from it); without one,
    the root goes first, as for a Ray working dir.
    """
    if ROOT in sys.path:
        return
    if importlib.util.find_spec("cmbert") is None:
        sys.path.insert(0, ROOT)
    elif importlib.util.find_spec("jobs") is None:
        sys.path.append(ROOT)


_bootstrap()

from cmbert.cli import parse_config  # noqa: E402  (after the bootstrap)
from cmbert.errors import UserError  # noqa: E402


def user_error_line(job: str, exc: BaseException) -> str:
    """``<job>: error: <message>``, always one line."""
    return f"{job}: error: " + " ".join(str(exc).split("\n"))


def run_job(job: str, config_cls, run, report=None, argv: list[str] | None = None) -> int:
    """Parse ``config_cls`` from ``argv``, call ``run(cfg)``, then ``report(cfg, result)``: the job's exit code.

    A ``UserError`` is printed in one line and gives 2; any other exception propagates (a crash: exit 1 and a
    traceback under :func:`exit_with`, and the exception itself for a test that calls ``main``).
    """
    cfg = parse_config(config_cls, argv, prog=job)  # a bad flag: argparse's usage line and SystemExit(2)
    try:
        result = run(cfg)
    except UserError as exc:
        print(user_error_line(job, exc), file=sys.stderr, flush=True)
        return 2
    if report is not None:
        report(cfg, result)
    return 0


def exit_with(main) -> None:
    """A job's ``__main__``: the quiet console (cmbert/console.py), then exit with ``main()``'s code."""
    from cmbert.console import quiet_console

    quiet_console()
    sys.exit(main())


def actor_pool(*, gpu: bool, actors: int | None, cpus_per_actor: float = 0.5, threads: int = 1,
               env_vars: dict[str, str] | None = None) -> dict:
    """``map_batches`` keyword arguments for a pool of model actors: ``compute``, ``num_cpus``/``num_gpus`` and
    the ``runtime_env`` (``env_vars`` plus the test-only fault injection of cmbert/faults.py).

    One GPU per actor with ``gpu``, one actor per GPU by default. Otherwise a fractional CPU share per actor (two
    actors at ``num_cpus=1`` on 2 CPUs deadlock Ray Data's read: see STACK.md) and, by default, one actor per
    ``threads`` cores: not CPUs / cpus_per_actor, which was 4 single-thread actors on 2 cores, twice the threads
    the cores can run. All actors start at once (an autoscaling pool starting from 1 left a core idle for its
    first ~20 s), but the job runs with fewer when a busy cluster cannot place them all (a fixed-size pool would
    wait). Needs Ray initialised (it reads the cluster's resources).
    """
    import ray

    from cmbert import faults

    total = ray.cluster_resources()
    if gpu:
        resources: dict = {"num_gpus": 1}
        default = int(total.get("GPU", 1))
    else:
        resources = {"num_cpus": cpus_per_actor}
        default = int(total.get("CPU", 1) // max(threads, 1))
    n = max(1, actors or default)
    # Never credentials in a runtime_env: Ray logs its env_vars (runtime_env_agent.log) and shows them in the
    # dashboard. Workers get the filesystems they need passed to them instead.
    env = dict(env_vars or {}) | faults.worker_env()
    if env:
        resources["runtime_env"] = {"env_vars": env}
    return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=n, initial_size=n), **resources}
