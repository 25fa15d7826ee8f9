"""bench/trace_key.py: a key's evaluations, with the alerts replay emits for it, no others."""

from __future__ import annotations

import os
import random
import sys

import orjson
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "models"))
from detection_streams import T0, harvester, human  # noqa: E402

from models.features import FEATURES  # noqa: E402
from streams.replay import replay  # noqa: E402


@pytest.fixture
def events_file(tmp_path):
    rng = random.Random(7)
    events = harvester(rng, "k_harvest", T0, T0 + 1800) + human(rng, "k_human", T0, T0 + 1800, 30.0)
    events.sort(key=lambda e: e["ts"])
    path = tmp_path / "events.jsonl"
    with open(path, "wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e) + b"\n")
        fh.write(b'{"not": "an event"}\n')
    return path


def test_trace_records_the_engines_values_and_the_replays_alerts(tmp_path, events_file, capsys, bench_script):
    tk = bench_script("trace_key")
    out = tmp_path / "trace.jsonl"
    assert tk.main(["--events", str(events_file), "--key", "k_harvest", "--every", "5",
                    "--json", str(out), "--vector"]) == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert rows and {r["api_key"] for r in rows} == {"k_harvest"}
    assert [r["events"] for r in rows] == sorted(r["events"] for r in rows)
    assert set(rows[0]["features"]) == set(FEATURES)
    # the alerts on the trace are the ones replay writes for the key, in order, score and all
    replay(str(events_file), str(tmp_path / "alerts.jsonl"), progress=False, campaigns=False)
    replayed = [orjson.loads(line) for line in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    mine = [(a["status"], a["detector"], a["score"]) for a in replayed if a["entity"] == "k_harvest"]
    traced = [(r["alert"]["status"], r["alert"]["detector"], r["alert"]["score"]) for r in rows if r["alert"]]
    assert mine and traced == mine
    firing = next(r for r in rows if r["alert"] and r["alert"]["status"] == "firing")
    assert firing["score"] >= firing["threshold"] and firing["alert"]["score"] == pytest.approx(firing["score"], abs=1e-4)
    printed = capsys.readouterr().out
    assert "k_harvest:" in printed and "firing" in printed and "1 invalid lines skipped" in printed


def test_a_key_with_no_events_is_named_and_exits_1(events_file, capsys, bench_script):
    tk = bench_script("trace_key")
    assert tk.main(["--events", str(events_file), "--key", "k_nobody"]) == 1
    assert "k_nobody has no valid event" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        tk.main(["--events", str(events_file) + ".missing", "--key", "k_harvest"])
    assert exc.value.code == 2
    assert "is not a file" in capsys.readouterr().err
