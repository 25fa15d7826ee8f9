"""`make demo` runs `moatwatch demo`: it must show live alerts with their reasons."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO, free_port

pytestmark = pytest.mark.kafka


def test_demo_shows_alerts_with_reasons(bootstrap):
    env = dict(os.environ, MOATWATCH_WEB_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--hours", "1", "--scale", "0.4", "--show", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith("[firing")]
    assert len(lines) >= 3, out.stdout
    assert all(" vs " in x and "score=" in x for x in lines), lines
    assert "3 alerts shown" in out.stderr
