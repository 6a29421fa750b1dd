"""A toy job for the exit-contract tests: its config and run, importable by a test and by a subprocess."""

from __future__ import annotations

from dataclasses import dataclass, field

from cmbert.errors import UserError


@dataclass
class ToyConfig:
    what: str = field(default="ok", metadata={"choices": ("ok", "user", "crash")})


def toy_run(cfg: ToyConfig) -> str:
    if cfg.what == "user":
        raise UserError("the input is not there\n(second line)")
    if cfg.what == "crash":
        raise ZeroDivisionError("a bug")
    return "result"
