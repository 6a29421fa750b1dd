"""Typed job configs from the command line: one dataclass per job, one flag per field.

A field ``max_clip_seconds: float = 3600`` becomes ``--max-clip-seconds``; ``metadata={"choices": [...],
"help": "..."}`` adds choices and help; a bool field becomes ``--flag`` / ``--no-flag``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def build_parser(config_cls, description: str = "", prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description or config_cls.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs = {"help": f.metadata.get("help", ""), "dest": f.name}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, type=kind, default=default, required=required, **kwargs)
    return parser


def parse_config(config_cls, argv: list[str] | None = None, prog: str | None = None):
    """``config_cls`` from ``argv`` (default: sys.argv); a bad flag exits 2 with ``<prog>: error: ...``."""
    args = build_parser(config_cls, prog=prog).parse_args(argv)
    return config_cls(**vars(args))


def _base_type(hint):
    """``str | None`` -> str; ``int`` -> int."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def option(source, name: str, **metadata):
    """A job config field whose default is the field ``name`` of the dataclass ``source``: the option keeps its
    one default there (e.g. a model option's in CMBertConfig), and the job adds only the flag's help."""
    f = next(f for f in dataclasses.fields(source) if f.name == name)
    if f.default is dataclasses.MISSING:
        raise TypeError(f"{source.__name__}.{name} has no plain default to share")
    return dataclasses.field(default=f.default, metadata=metadata)


def shared_fields(cfg, target) -> dict:
    """The values of ``cfg``'s fields that the dataclass ``target`` also has, by name (no hand mapping)."""
    names = {f.name for f in dataclasses.fields(target)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
