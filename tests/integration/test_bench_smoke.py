"""`moatwatch bench --smoke` through the real local Kafka: every Kafka-side number is produced.

No timing assertions: on a shared 2-core machine they would test the neighbours. The test
proves the measurement runs end to end (raw consume, one and two workers, produce-to-alert
latency with alerts actually read back, the worker's processing histogram) and cleans up its
topics.
"""

from __future__ import annotations

import math

import orjson
import pytest

from streams.cli import main

pytestmark = pytest.mark.kafka


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_smoke_measures_kafka_side(bootstrap, tmp_path, monkeypatch):
    monkeypatch.setenv("MOATWATCH_BOOTSTRAP", bootstrap)
    out = tmp_path / "results.json"
    assert main(["bench", "--smoke", "--out", str(out)]) == 0
    r = orjson.loads(out.read_bytes())
    tp = r["throughput"]
    for name in ("raw_consume", "raw_consume_detect", "faust_noop", "worker1", "worker2",
                 "produce"):
        assert tp[name] and all(_ok(x) for x in tp[name]), (name, tp[name])
    assert _ok(tp["worker1_over_raw"]) and _ok(tp["worker2_over_raw"])
    assert _ok(tp["faust_noop_over_raw"]) and _ok(tp["worker1_over_faust_noop"])
    phases = r["latency"]["phases"]
    assert phases, "no latency phase ran"
    for ph in phases:
        assert ph["alerts"] >= 1, ph          # alerts were read back from the alerts topic
        assert ph["alerts_from_attack_keys"] >= 1
        assert _ok(ph["p50_ms"]) and ph["p99_ms"] >= ph["p50_ms"] and ph["max_ms"] >= ph["p99_ms"]
        assert ph["processing_seconds"]["count"] >= ph["events"] * 0.99
        assert _ok(ph["processing_seconds"]["mean"])
    results = {t["target"]: t["result"] for t in r["targets"]}
    assert results["worker (1 proc) >= 50% of raw consume"] in ("PASS", "FAIL")
    assert results["(ceiling) Faust no-op agent >= 50% of raw consume"] in ("PASS", "FAIL")
    assert results["p99 produce->alert at 50% load"] in ("PASS", "FAIL")

    from confluent_kafka.admin import AdminClient

    left = [t for t in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
            if t.startswith(r["prefix"])]
    assert left == [], f"bench left topics behind: {left}"
