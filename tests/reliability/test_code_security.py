"""Static checks over the library and the jobs: no unsafe deserialisation, no shell command strings.

- ``pickle.load``/``pickle.loads`` run arbitrary code from the data they read;
- ``torch.load`` does too unless ``weights_only=True``;
- ``shell=True`` and ``os.system``/``os.popen`` hand a string to the shell (injection through file names).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

SCANNED = ("cmbert", "jobs")


def python_files() -> list[Path]:
    files = []
    for top in SCANNED:
        files.extend(p for p in sorted((REPO / top).rglob("*.py")) if "__pycache__" not in p.parts)
    return files


class Finder(ast.NodeVisitor):
    """Collects unsafe calls, resolving ``import x as y`` and ``from x import f as g`` aliases."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # local name -> dotted origin
        self.problems: list[tuple[int, str]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:  # import torch.nn as nn -> nn means torch.nn
                self.names[alias.asname] = alias.name
            else:  # import os.path -> os means os
                self.names[alias.name.split(".")[0]] = alias.name.split(".")[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if node.module:
                self.names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        self.generic_visit(node)

    def dotted(self, func: ast.expr) -> str:
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return ""
        parts.append(self.names.get(func.id, func.id))
        return ".".join(reversed(parts))

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        if name in ("pickle.load", "pickle.loads", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads"):
            self.problems.append((node.lineno, f"{name}() deserialises arbitrary code"))
        if name == "torch.load":
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                self.problems.append((node.lineno, "torch.load() without weights_only=True"))
        if name in ("os.system", "os.popen"):
            self.problems.append((node.lineno, f"{name}() runs a shell command string"))
        for k in node.keywords:
            if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                self.problems.append((node.lineno, "shell=True hands a string to the shell"))
        self.generic_visit(node)


def problems_in(source: str) -> list[tuple[int, str]]:
    finder = Finder()
    finder.visit(ast.parse(source))
    return finder.problems


def test_there_is_code_to_scan():
    assert len(python_files()) >= 3


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_unsafe_calls(path):
    found = problems_in(path.read_text(encoding="utf-8"))
    assert not found, "\n".join(f"{path.relative_to(REPO)}:{line}: {why}" for line, why in found)


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("import pickle\npickle.load(f)", True),
        ("import pickle as pk\npk.loads(b)", True),
        ("from pickle import load\nload(f)", True),
        ("import torch\ntorch.load(p)", True),
        ("import torch\ntorch.load(p, weights_only=False)", True),
        ("import torch\ntorch.load(p, map_location='cpu', weights_only=True)", False),
        ("import subprocess\nsubprocess.run('ls', shell=True)", True),
        ("import subprocess\nsubprocess.run(['ls'], shell=False)", False),
        ("import os\nos.system('ls')", True),
        ("from os import system\nsystem('ls')", True),
        ("import json\njson.load(f)", False),
    ],
)
def test_the_checker_itself(source, flagged):
    assert bool(problems_in(source)) is flagged
