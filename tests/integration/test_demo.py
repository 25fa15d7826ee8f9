"""`make demo` runs `moatwatch demo`: it must show live alerts with their reasons, then score
every alert the live worker published."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from .conftest import REPO, free_port

pytestmark = pytest.mark.kafka


def test_demo_shows_alerts_with_reasons_then_scores_the_whole_run(bootstrap, tmp_path):
    # The demo keeps its events, truth and alerts in a fresh temporary folder for the user to
    # look at; the test's run keeps them under pytest's tmp_path, not one more folder in /tmp.
    env = dict(os.environ, MOATWATCH_WEB_PORT=str(free_port()), PYTHONUNBUFFERED="1",
               TMPDIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--hours", "1", "--scale", "0.4", "--show", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith("[firing")]
    assert len(lines) >= 3, out.stdout
    assert all(" vs " in x and "score=" in x for x in lines), lines
    assert "3 alerts shown" in out.stderr
    # the scorecard: every event taken, every published alert saved and evaluated
    assert "the worker took all" in out.stderr, out.stderr[-3000:]
    assert "recall (attack keys)" in out.stdout and "benign false positives" in out.stdout
    assert "targets issue3" not in out.stdout  # a short demo is not held to the 12-hour targets
    saved = out.stderr.split("alert updates (", 1)[1].split(")", 1)[0]
    assert saved.startswith(str(tmp_path))
    with open(saved, "rb") as fh:
        alerts = [orjson.loads(line) for line in fh]
    episodes = {a["alert_id"] for a in alerts if a["status"] == "firing"}
    assert len(episodes) >= 3
    firing = int(out.stdout.split("firing (", 1)[0].rsplit(" ", 2)[-2])
    assert firing == len(episodes)  # the table counts the saved file's firing episodes
