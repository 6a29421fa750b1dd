"""Scoped torch thread count for the small CPU models (Silero VAD, the GE2E speaker encoder)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op threads (None: leave as is), then restore the caller's count.

    Silero's per-32 ms calls are tiny: with 2 threads on a busy 2-core machine they ran 10-50x slower
    than with 1 (thread hand-offs), so the stages default to one thread per call.
    """
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
