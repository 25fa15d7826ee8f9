"""bench/rescore_boost.py: the recorded evaluation points reproduce the engine's own alerts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "models"))  # --import-mode=importlib
from detection_streams import mixed_stream  # noqa: E402

from models.engine import DetectionCore, DetectorConfig  # noqa: E402


def test_rescoring_at_the_engines_own_support_gives_its_alerts(tmp_path, bench_script):
    rb = bench_script("rescore_boost")
    events = mixed_stream(seed=11, hours=2.0)
    src = tmp_path / "seed1.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    cfg = DetectorConfig()
    n = rb.record(src, tmp_path / "seed1.npz", cfg)
    assert n > 100
    with np.load(tmp_path / "seed1.npz", allow_pickle=False) as z:
        rec = {k: z[k] for k in z.files}
    assert rec["vec"].shape == (n, len(rec["vec"][0])) and np.isfinite(rec["thr"]).all()

    # the engine itself: the event time of each key's first firing alert
    core = DetectionCore(cfg)
    first: dict[str, float] = {}
    next_adv = None
    for seq, ev in enumerate(events):
        if next_adv is None:
            next_adv = ev["ts"] + 5.0
        elif ev["ts"] >= next_adv:
            core.advance(ev["ts"])
            next_adv = ev["ts"] + 5.0
        for a in core.process(ev, seq):
            if a["status"] == "firing":
                first.setdefault(a["entity"], a["event_ts"])
    assert "k_harvest" in first  # the stream has something to find

    offline = {k: t[0] for k, t in rb.alert_times(rec, cfg, cfg.population_support).items()}
    assert offline == pytest.approx(first)
    # the boost ungated can only add alerts, never lose one
    ungated = rb.alert_times(rec, cfg, 0.0)
    assert set(offline) <= set(ungated)


def test_rescore_without_records_says_how_to_make_them(tmp_path, capsys, bench_script):
    rb = bench_script("rescore_boost")
    with pytest.raises(SystemExit) as exc:
        rb.main(["rescore", "--sim-dir", str(tmp_path), "--seeds", "3", "--rec-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "record mode" in capsys.readouterr().err
