"""`bench/ab_core.py`: both trees run, every round is reported, bad arguments say what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import ab_core  # noqa: E402
from streams.simulator import simulate  # noqa: E402


def test_two_rounds_alternate_and_report_a_ratio(tmp_path, capsys):
    events = tmp_path / "e.jsonl"
    simulate(0.05, 3, str(events), str(tmp_path / "t.json"), scale=0.2, progress=False)
    assert ab_core.main([str(ROOT), str(ROOT), "--events-file", str(events), "--events", "300",
                         "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if line.startswith("round ")]
    assert [line.split()[:3] for line in runs] == [["round", "1", "A"], ["round", "1", "B"],
                                                   ["round", "2", "B"], ["round", "2", "A"]]
    assert "B / A per round:" in out and "median" in out


def test_a_folder_that_is_not_a_source_tree_is_refused(tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ab_core.py"), str(tmp_path), str(ROOT),
                           "--events-file", str(events)], capture_output=True, text=True)
    assert proc.returncode == 2 and "has no models/engine.py" in proc.stderr


def test_a_failing_run_raises_with_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="failed"):
        ab_core.run_once(str(ROOT), str(tmp_path / "missing.jsonl"), 10)
