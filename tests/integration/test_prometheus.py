"""A real Prometheus scrapes moatwatch metrics; every dashboard query returns data; rules load.

The scrape target is a stand-alone HTTP server exporting :class:`streams.metrics.Metrics` (through
the same ``render()`` and content type the worker's ``/metrics`` uses) while a thread simulates
worker activity: events consumed, processed and rejected, alerts with reasons, lag, state.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.validation import INVALID_REASONS
from streams.metrics import CONTENT_TYPE, Metrics

try:  # rootdir-relative package import, or the test folder on sys.path (pytest's default)
    from tests.integration.servers import (
        ROOT,
        RULES,
        binary,
        http_json,
        prometheus_server,
        wait_until,
    )
except ImportError:
    from servers import ROOT, RULES, binary, http_json, prometheus_server, wait_until  # type: ignore[no-redef]

DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
sys.path.insert(0, str(ROOT / "infra" / "grafana"))
import build_dashboards  # noqa: E402

#: Values Grafana would put in place of its variables when the dashboard is viewed.
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__interval": "15s",
    "$__range": "5m",
    "${instance}": ".*",
    "$instance": ".*",
}


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def dashboard_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for expr in build_dashboards.expressions(json.loads(path.read_text("utf-8"))):
            out.append((path.name, expr))
    return out


class SimulatedWorker:
    """Drives a Metrics object the way a busy worker would, from a thread."""

    FEATURES = ("cot_share", "prompt_diversity", "topic_coverage", "tokens_ratio", "logprobs_share")

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self.stop = threading.Event()
        self.rng = random.Random(7)
        self.lock = threading.Lock()  # render() and updates come from different threads
        m = metrics
        m.set_build_info(model_version="sim-1")
        m.recovery_complete.set(1)
        m.partitions_assigned.set(4)
        m.rebalances.inc()

    def step(self) -> None:
        m, rng = self.m, self.rng
        n = rng.randint(50, 150)
        m.events_consumed.inc(n)
        bad = rng.randint(0, 3)
        for _ in range(bad):
            m.events_invalid.labels(reason=rng.choice(INVALID_REASONS)).inc()
            m.dlq_published.inc()
        m.events_processed.inc(n - bad)
        m.duplicates.inc(rng.randint(0, 1))
        with m.batch_seconds.time():
            for _ in range(n - bad):
                m.processing_seconds.observe(rng.lognormvariate(math.log(4e-5), 0.8))
                m.event_lag_seconds.observe(rng.expovariate(1 / 0.3))
                m.score.observe(rng.betavariate(1, 6))
        for p in range(4):
            m.consumer_lag.labels(topic="moatwatch.query-events", partition=str(p)).set(
                rng.randint(0, 200))
            m.partition_progress.labels(topic="moatwatch.query-events", partition=str(p)).set(
                time.time() - rng.uniform(0, 2))
        if rng.random() < 0.5:
            m.observe_alert({
                "detector": rng.choice(("key_drift", "key_population", "campaign")),
                "severity": rng.choice(("warning", "critical")),
                "entity_type": rng.choice(("api_key", "account")),
                "status": rng.choice(("firing", "firing", "resolved")),
                "reasons": [{"feature": f} for f in rng.sample(self.FEATURES, 2)],
            })
        m.open_episodes.set(rng.randint(0, 5))
        m.tracked_keys.set(1000 + rng.randint(0, 50))
        m.state_bytes.set(1_200_000 + rng.randint(0, 60_000))
        m.keys_evicted.inc(rng.randint(0, 2))
        m.merge_buffered.set(rng.randint(0, 300))
        m.merge_out_of_order.labels(rng.choice(("late", "forced"))).inc(rng.randint(0, 1))
        m.last_event_timestamp.set(time.time())

    def run(self) -> None:
        while not self.stop.wait(0.1):
            with self.lock:
                self.step()


@pytest.fixture
def metrics_target() -> Iterator[str]:
    """host:port of a live /metrics endpoint with simulated worker traffic."""
    metrics = Metrics(CollectorRegistry())
    sim = SimulatedWorker(metrics)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/metrics":
                self.send_error(404)
                return
            with sim.lock:
                body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threads = [threading.Thread(target=httpd.serve_forever, daemon=True),
               threading.Thread(target=sim.run, daemon=True)]
    for t in threads:
        t.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        sim.stop.set()
        httpd.shutdown()
        httpd.server_close()


def test_promtool_checks_rules_and_config(tmp_path: Path) -> None:
    promtool = binary("promtool")
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 rules found" in out.stdout
    cfg = ROOT / "infra" / "prometheus" / "prometheus.yml"
    out = subprocess.run([promtool, "check", "config", "--syntax-only", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_pass() -> None:
    """promtool's own rule unit tests: each self-alert fires (and only) when it should."""
    tests = RULES.with_name("moatwatch.rules.test.yml")
    out = subprocess.run([binary("promtool"), "test", "rules", str(tests)],
                         capture_output=True, text=True, cwd=tests.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_dashboard_query_returns_data(tmp_path: Path, metrics_target: str) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) >= 20, f"dashboards have only {len(exprs)} queries: did generation break?"
    with prometheus_server(tmp_path, [metrics_target]) as prom:
        # rate() over 30s needs two samples of each series; wait for a few scrapes.
        wait_until(lambda: prom.query('count_over_time(up{job="moatwatch"}[1m]) >= 4'),
                   timeout=30, what="four scrapes of the target")
        assert prom.query('up{job="moatwatch"} == 1'), "target not up"

        empty, nan_only = [], []
        for name, expr in exprs:
            result = prom.query(grafana_to_promql(expr))
            if not result:
                empty.append(f"{name}: {expr}")
                continue
            values = [float(r["value"][1]) for r in result]
            if not any(math.isfinite(v) for v in values):
                nan_only.append(f"{name}: {expr} -> {values}")
        assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)
        assert not nan_only, "dashboard queries with only NaN/Inf:\n" + "\n".join(nan_only)

        # The moatwatch self-alert rules load and evaluate without error.
        def rules_healthy() -> list[dict]:
            groups = prom_rules(prom)
            rules = [r for g in groups for r in g["rules"]]
            ok = len(rules) == 6 and all(r.get("health") == "ok" for r in rules)
            return rules if ok else []

        rules = wait_until(rules_healthy, timeout=15, what="6 healthy rules")
        assert {r["name"] for r in rules} == {
            "MoatwatchWorkerDown", "MoatwatchConsumerLagGrowing", "MoatwatchPartitionStalled",
            "MoatwatchInvalidRateHigh", "MoatwatchNoEvents", "MoatwatchRecoveryStuck"}
        for r in rules:
            assert r["annotations"]["runbook_url"].startswith("docs/operations.md#"), r
            assert r["annotations"]["summary"] and r["annotations"]["description"], r
            # Healthy traffic: none of the self-alerts is pending or firing.
            assert r["state"] == "inactive", r


def prom_rules(prom) -> list[dict]:  # type: ignore[no-untyped-def]
    out = http_json(f"{prom.url}/api/v1/rules")
    assert out["status"] == "success", out
    return list(out["data"]["groups"])


def test_runbook_has_an_anchor_for_every_rule() -> None:
    text = (ROOT / "docs" / "operations.md").read_text("utf-8").lower()
    rules = [line.split(":", 1)[1].strip() for line in RULES.read_text("utf-8").splitlines()
             if line.strip().startswith("- alert:")]
    assert len(rules) == 6
    for name in rules:
        assert f"### {name.lower()}" in text, f"docs/operations.md lacks a '### {name}' section"


@pytest.mark.kafka
def test_prometheus_scrapes_a_live_worker_and_dashboards_have_data(
        names, worker_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real `moatwatch worker` on the real broker, with traffic (valid, invalid, attacks)
    flowing while Prometheus scrapes it: every dashboard query returns data."""
    try:
        from tests.integration.helpers import simulate_file, wait_consumed
    except ImportError:
        from helpers import simulate_file, wait_consumed  # type: ignore[no-redef]
    from streams.kafka_io import ensure_topics, produce_file

    events, _ = simulate_file(tmp_path, hours=2.0, seed=5, scale=0.3)
    with open(events, "ab") as fh:  # a few of each kind of bad input, to feed the invalid panels
        fh.write(b'{"not json\n[1, 2]\n{"event_id": "x", "ts": 1}\n'
                 b'{"event_id": "y", "ts": 1, "api_key": "", "prompt_tokens": 1, '
                 b'"completion_tokens": 1, "status": 200}\n')
    settings = names.settings()
    ensure_topics(settings, {names.events: 1, names.alerts: 1})
    worker = worker_factory().start()
    with prometheus_server(tmp_path, [f"127.0.0.1:{worker.web_port}"]) as prom:
        worker.wait_ready()
        # Readiness is what the worker reports through its own endpoints too.
        wait_until(lambda: prom.query('moatwatch_table_recovery_complete{job="moatwatch"} == 1'),
                   timeout=20, what="worker reporting recovery complete")
        sent = produce_file(settings, str(events), rate=1500.0, progress=False)["events"]
        wait_consumed(worker, sent, timeout=120)
        # Two more scrapes after the last event so rates and the alert counters are seen.
        scrapes = prom.query('count_over_time(up{job="moatwatch"}[10m])')
        n0 = float(scrapes[0]["value"][1])
        wait_until(lambda: float(prom.query(
            'count_over_time(up{job="moatwatch"}[10m])')[0]["value"][1]) >= n0 + 6,
            timeout=30, what="six more scrapes")
        assert prom.query('up{job="moatwatch"} == 1')
        assert prom.query("moatwatch_alerts_total > 0"), \
            "the simulated attacks raised no alert on the live worker:\n" + worker.log()[-3000:]

        empty = []
        for name, expr in dashboard_expressions():
            # 1m instead of 30s: the worker is scraped every second, but its timer updates
            # some gauges only every 5 s.
            promql = grafana_to_promql(expr.replace("$__rate_interval", "1m"))
            if not prom.query(promql):
                empty.append(f"{name}: {promql}")
        assert not empty, "dashboard queries with no data from the live worker:\n" + \
            "\n".join(empty)
        processed = prom.query('sum(rate(moatwatch_events_processed_total{job="moatwatch"}[1m]))')
        assert float(processed[0]["value"][1]) > 0
        invalid = prom.query('sum by (reason) (moatwatch_events_invalid_total) > 0')
        assert {r["metric"]["reason"] for r in invalid} >= {"invalid_json", "not_object"}
