"""What a process tree listens on, from /proc (Linux): for the tests that prove a private Ray stays on loopback."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
from dataclasses import dataclass

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp{,6}
# What a job's console must not carry (issues 16, 17): Ray's unreachable-GCS lines, and Ray's and libraries'
# internals that cmbert.console keeps in Ray's log files.
CONSOLE_NOISE = ("PlacementGroupCleaner", "Failed to query Ray Train Controller", "Timed out while waiting for GCS",
                 "GCS to become available", "has constructor arguments in the object store", "Progress bars disabled",
                 "LOAD REPORT", "Token authentication is enabled")


@dataclass(frozen=True, order=True)
class Listener:
    process: str
    pid: int
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        addr = ipaddress.ip_address(self.address)
        mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is a v4 loopback socket on a v6 stack
        return addr.is_loopback or bool(mapped and mapped.is_loopback)


def process_tree(root: int) -> set[int]:
    """``root`` and all its descendants alive now."""
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass  # exited meanwhile
    return seen


def _socket_owners(pids: set[int]) -> dict[str, int]:
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners[link[len("socket:["):-1]] = pid
    return owners


def _address(field: str) -> tuple[str, int]:
    hex_ip, hex_port = field.split(":")
    raw = bytes.fromhex(hex_ip)
    # the kernel prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words)), int(hex_port, 16)


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def listeners(pids: set[int]) -> set[Listener]:
    """Every TCP socket in LISTEN state owned by one of ``pids``."""
    owners = _socket_owners(pids)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == LISTEN and cols[9] in owners:
                    address, port = _address(cols[1])
                    pid = owners[cols[9]]
                    found.add(Listener(_name(pid), pid, address, port))
    return found


class Watch:
    """While inside the ``with``, collect (every ``every`` s) what the process tree under ``root`` listens on."""

    def __init__(self, root: int, every: float = 0.25):
        self.root, self.every, self.seen = root, every, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= listeners(process_tree(self.root))
            self._stop.wait(self.every)

    def start(self) -> "Watch":
        self._thread.start()
        return self

    def stop(self) -> set[Listener]:
        self._stop.set()
        self._thread.join()
        return self.seen

    def __enter__(self) -> "Watch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_watching(cmd: list[str], env: dict, cwd: str, timeout: float):
    """Run ``cmd``; while it runs, collect what its process tree listens on. -> (completed process, listeners)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with Watch(proc.pid) as watch:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out), watch.seen
