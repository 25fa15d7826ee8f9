"""`moatwatch bench --smoke --skip-kafka`: the in-process parts produce every number.

No timing assertions (the machine is shared and noisy): only that the numbers exist, are
positive and finite, and that the pieces the numbers rest on do what they claim.
"""

from __future__ import annotations

import math

import orjson

from streams import bench
from streams.cli import main
from streams.pipeline import Detector


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_skip_kafka_writes_every_in_process_number(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["bench", "--smoke", "--skip-kafka", "--out", str(out)]) == 0
    r = orjson.loads(out.read_bytes())
    tp = r["throughput"]
    for name in ("decode_limit", "validated_decode", "naive_peer", "replay_peer_subset", "replay"):
        assert tp[name] and all(_finite_positive(x) for x in tp[name]), name
    assert _finite_positive(tp["replay_over_peer"])
    assert "raw_consume" not in tp and "latency" not in r
    mem = r["memory"]["sizes"]
    assert mem and all(_finite_positive(m["rss_with_table_per_key"]) for m in mem)
    assert all(_finite_positive(m["traced_core_per_key"]) for m in mem)
    assert all(m["blob_median"] > 0 and m["blob_p99"] >= m["blob_median"] for m in mem)
    assert r["memory"]["realistic_blobs"]["keys"] > 0
    assert r["profile_replay"] and r["profile_replay"][0]["own_s"] >= 0
    results = {t["target"]: t["result"] for t in r["targets"]}
    assert results["replay >= 10x naive peer"] in ("PASS", "FAIL")
    assert results["p99 produce->alert at 50% load"] == "not measured"
    assert r["machine"]["nproc"] >= 1 and r["machine"]["python"]
    printed = capsys.readouterr().out
    assert "naive peer" in printed and "targets:" in printed


def test_naive_peer_keeps_one_pipeline_per_key():
    lines = [orjson.dumps({"event_id": str(i), "ts": float(i), "api_key": f"k{i % 3}",
                           "prompt_tokens": 10 + i, "completion_tokens": 50, "status": 200})
             for i in range(30)]
    res = bench.naive_peer(lines)
    assert res["keys"] == 3 and _finite_positive(res["events_per_s"])


def test_latency_stream_attack_keys_alert_within_their_phase():
    # The latency measurement needs alerts: every attack key, warmed in the past as the bench
    # does, must fire during its phase on top of background traffic.
    now = 1.8e9
    det = Detector(2)
    keys = 6
    for j in range(keys):
        for i in range(bench.WARM_EVENTS):
            ev = bench.attack_event(0, j, i)
            ev["ts"] = now - 600.0 + 150.0 * i
            assert det.process(ev) == []
    background = [{"event_id": f"b{i}", "ts": 0.0, "api_key": f"bg{i % 40}",
                   "prompt_tokens": 300 + i % 50, "completion_tokens": 120, "status": 200}
                  for i in range(400)]
    stream = bench.latency_stream(background, 0, 2000, keys, 48)
    assert len(stream) == 2000
    fired = set()
    for k, ev in enumerate(stream):
        ev["ts"] = now + k / 500.0
        for a in det.process(ev):
            if a["status"] == "firing":
                fired.add(a["entity"])
    assert fired == {f"ak_bench00{j:06d}" for j in range(keys)}


def test_latency_stream_spreads_attack_keys_over_the_phase():
    bg = [{"api_key": "b", "ts": 0.0}]
    s = bench.latency_stream(bg, 1, 1000, 5, 20)
    first = [min(i for i, e in enumerate(s) if e["api_key"] == f"ak_bench01{j:06d}") for j in range(5)]
    assert first == sorted(first) and first[-1] - first[0] > 400


def test_hist_delta_reads_bucket_bounds_between_two_scrapes():
    name = "moatwatch_processing_seconds"
    before = {f'{name}_bucket{{le="0.001"}}': 10.0, f'{name}_bucket{{le="0.01"}}': 10.0,
              f'{name}_bucket{{le="+Inf"}}': 10.0, f"{name}_sum": 0.005, f"{name}_count": 10.0}
    after = {f'{name}_bucket{{le="0.001"}}': 100.0, f'{name}_bucket{{le="0.01"}}': 109.0,
             f'{name}_bucket{{le="+Inf"}}': 110.0, f"{name}_sum": 0.105, f"{name}_count": 110.0}
    h = bench.hist_delta(before, after, name)
    assert h["count"] == 100 and abs(h["mean"] - 0.001) < 1e-12
    assert h["p50_le"] == 0.001 and h["p99_le"] == 0.01


def test_targets_pass_and_fail_from_the_numbers():
    r = {"throughput": {"replay_over_peer": 9.9, "worker1_over_raw": 0.5,
                        "faust_noop_over_raw": 0.08},
         "latency": {"phases": [{"load": 0.5, "alerts": 120, "p99_ms": 251.0},
                                {"load": 0.8, "alerts": 0, "p99_ms": float("nan")}]},
         "memory": {"sizes": [{"rss_with_table_per_key": 2000.0},
                              {"rss_with_table_per_key": 2100.0}]}}
    got = [t["result"] for t in bench.targets(r)]
    assert got == ["FAIL", "PASS", "FAIL", "FAIL", "not measured", "FAIL"]


def test_collapsed_stacks_summary_counts_own_and_inclusive(tmp_path):
    p = tmp_path / "raw.txt"
    p.write_text("main (a.py:1);_handle_batch (streams/app.py:9);decode_event (schemas/validation.py:3) 30\n"
                 "main (a.py:1);_handle_batch (streams/app.py:9) 10\n"
                 "main (a.py:1);select (selectors.py:5) 60\n")
    s = bench.summarize_collapsed(str(p))
    assert s["samples"] == 100
    own = {o["function"]: o["share"] for o in s["own"]}
    assert own["select (selectors.py)"] == 0.6 and own["decode_event (validation.py)"] == 0.3
    incl = {o["function"]: o["share"] for o in s["inclusive"]}
    assert incl["_handle_batch (app.py)"] == 0.4
