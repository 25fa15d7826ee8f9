"""Shared fixtures: the repository root, a loader for bench scripts and a small deterministic
event factory."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script("evaluate_seeds")``: a script of bench/ (not a package) as a module."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "bench", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    return load
