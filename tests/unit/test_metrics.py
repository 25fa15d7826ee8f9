"""streams.metrics and streams.web: metric names, units, labels; the worker's HTTP surface."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from schemas.validation import INVALID_REASONS
from streams.metrics import CONTENT_TYPE, MAX_FEATURE_LABELS, PROCESSING_BUCKETS, Metrics
from streams.web import install_web, readiness, recovery_complete, web_app_options

EXPECTED = {
    # family name as the text parser reports it -> (type, label names)
    "moatwatch_events_consumed": ("counter", set()),
    "moatwatch_events_invalid": ("counter", {"reason"}),
    "moatwatch_events_processed": ("counter", set()),
    "moatwatch_events_duplicate": ("counter", set()),
    "moatwatch_processing_seconds": ("histogram", set()),
    "moatwatch_batch_seconds": ("histogram", set()),
    "moatwatch_event_time_lag_seconds": ("histogram", set()),
    "moatwatch_consumer_lag_messages": ("gauge", {"topic", "partition"}),
    "moatwatch_alerts": ("counter", {"detector", "severity", "entity_type", "status"}),
    "moatwatch_alert_reason_features": ("counter", {"feature"}),
    "moatwatch_open_episodes": ("gauge", set()),
    "moatwatch_tracked_keys": ("gauge", set()),
    "moatwatch_state_bytes": ("gauge", set()),
    "moatwatch_keys_evicted": ("counter", set()),
    "moatwatch_key_score": ("histogram", set()),
    "moatwatch_table_recovery_complete": ("gauge", set()),
    "moatwatch_campaign_snapshots_buffered": ("gauge", set()),
    "moatwatch_campaign_snapshots_out_of_order": ("counter", {"reason"}),
    "moatwatch_partitions_assigned": ("gauge", set()),
    "moatwatch_rebalances": ("counter", set()),
    "moatwatch_dlq_published": ("counter", set()),
    "moatwatch_build_info": ("gauge", {"version", "model_version"}),
    "moatwatch_last_event_timestamp_seconds": ("gauge", set()),
    "moatwatch_partition_progress_timestamp_seconds": ("gauge", {"topic", "partition"}),
}

ALERT = {"detector": "key_drift", "severity": "critical", "entity_type": "api_key",
         "status": "firing", "entity": "key-secret-id-123",
         "reasons": [{"feature": "cot_share"}, {"feature": "topic_coverage"}]}


def families(m: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def test_every_metric_is_exported_with_its_type_and_only_bounded_labels() -> None:
    m = Metrics(CollectorRegistry())
    m.consumer_lag.labels(topic="t", partition="0").set(3)
    m.partition_progress.labels(topic="t", partition="0").set(1.7e9)
    m.observe_alert(ALERT)
    fams = families(m)
    for name, (kind, labels) in EXPECTED.items():
        assert name in fams, f"{name} not exported"
        assert fams[name].type == kind, (name, fams[name].type)
        for s in fams[name].samples:
            got = set(s.labels) - {"le"}
            assert got == labels, (s.name, got)
    text = m.render().decode()
    assert "api_key=" not in text and "key-secret-id-123" not in text


def test_two_instances_do_not_collide_and_none_touches_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    a, b = Metrics(), Metrics()
    a.events_consumed.inc(5)
    assert b.registry.get_sample_value("moatwatch_events_consumed_total") == 0.0
    assert REGISTRY.get_sample_value("moatwatch_events_consumed_total") is None


def test_invalid_reasons_start_at_zero() -> None:
    reg = CollectorRegistry()
    Metrics(reg)
    for reason in INVALID_REASONS:
        assert reg.get_sample_value("moatwatch_events_invalid_total", {"reason": reason}) == 0.0


def test_processing_histogram_resolves_sub_millisecond_work() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert PROCESSING_BUCKETS[0] <= 5e-6 and PROCESSING_BUCKETS[-1] >= 1.0
    assert sum(1 for b in PROCESSING_BUCKETS if b < 1e-3) >= 6
    m.processing_seconds.observe(2e-5)
    assert reg.get_sample_value("moatwatch_processing_seconds_bucket", {"le": "1e-05"}) == 0.0
    assert reg.get_sample_value("moatwatch_processing_seconds_bucket", {"le": "2.5e-05"}) == 1.0


def test_observe_alert_counts_labels_and_reason_features() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.observe_alert(ALERT)
    m.observe_alert({**ALERT, "status": "resolved"})
    labels = {k: ALERT[k] for k in ("detector", "severity", "entity_type")}
    assert reg.get_sample_value("moatwatch_alerts_total", {**labels, "status": "firing"}) == 1
    assert reg.get_sample_value("moatwatch_alerts_total", {**labels, "status": "resolved"}) == 1
    # Reasons count when an episode fires, not again when it resolves.
    assert reg.get_sample_value("moatwatch_alert_reason_features_total",
                                {"feature": "cot_share"}) == 1
    with pytest.raises(KeyError):
        m.observe_alert({"detector": "x", "status": "firing"})


def test_feature_label_cardinality_is_capped() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    for i in range(MAX_FEATURE_LABELS + 10):
        m.observe_alert({**ALERT, "reasons": [{"feature": f"f{i}"}]})
    feats = {s.labels["feature"] for s in families(m)["moatwatch_alert_reason_features"].samples
             if s.name.endswith("_total")}
    assert len(feats) == MAX_FEATURE_LABELS + 1 and "other" in feats
    assert reg.get_sample_value("moatwatch_alert_reason_features_total",
                                {"feature": "other"}) == 10


def test_build_info() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.set_build_info(model_version="m-7", version="1.2.3")
    assert reg.get_sample_value("moatwatch_build_info",
                                {"version": "1.2.3", "model_version": "m-7"}) == 1.0


# -- web --------------------------------------------------------------------------------------
def make_app(**kw: Any) -> tuple[faust.App, Metrics]:
    """A real Faust app (never started: building routes needs no broker)."""
    settings = SimpleNamespace(web_host="127.0.0.1", web_port=6066)
    app = faust.App(f"test-web-{id(kw)}", broker="kafka://127.0.0.1:1", **web_app_options(settings),
                    **kw)
    metrics = Metrics(CollectorRegistry())
    return app, metrics


async def _requests(app: faust.App, calls: list[tuple[str, str, dict[str, str]]]
                    ) -> list[tuple[int, str, str]]:
    app.web.init_server()
    out = []
    async with TestClient(TestServer(app.web.web_app)) as client:
        for method, path, headers in calls:
            r = await client.request(method, path, headers=headers)
            out.append((r.status, r.headers.get("Content-Type", ""), await r.text()))
    return out


def test_web_serves_metrics_health_and_readiness() -> None:
    app, metrics = make_app()
    metrics.events_consumed.inc(7)
    state = {"ready": (False, "table recovery in progress")}
    install_web(app, metrics=metrics, ready=lambda: state["ready"])

    (ms, mct, mbody), (hs, _, hbody), (rs, _, rbody) = asyncio.run(_requests(app, [
        ("GET", "/metrics", {}), ("GET", "/healthz", {}), ("GET", "/readyz", {})]))
    assert ms == 200 and mct == CONTENT_TYPE
    assert "moatwatch_events_consumed_total 7.0" in mbody
    assert hs == 200 and hbody.strip() == "ok"
    assert rs == 503 and "table recovery in progress" in rbody

    app2, metrics2 = make_app()
    install_web(app2, metrics=metrics2, ready=lambda: (True, "ready: 4 partitions"))
    ((rs, _, rbody),) = asyncio.run(_requests(app2, [("GET", "/readyz", {})]))
    assert rs == 200 and "4 partitions" in rbody


def test_readiness_probe_that_raises_answers_503() -> None:
    app, metrics = make_app()

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    install_web(app, metrics=metrics, ready=broken)
    ((rs, _, rbody),) = asyncio.run(_requests(app, [("GET", "/readyz", {})]))
    assert rs == 503 and "boom" in rbody


def test_faust_builtin_endpoints_are_gone_even_when_enabled_in_settings() -> None:
    # Turn every built-in blueprint on: install_web must still remove them all.
    app, metrics = make_app()
    app.conf.web_tables_enabled = True
    app.conf.web_router_enabled = True
    app.conf.web_stats_enabled = True
    app.conf.web_graph_enabled = True
    app.conf.web_metrics_enabled = True
    install_web(app, metrics=metrics, ready=lambda: (True, "ok"))
    paths = ["/", "/table/", "/table/key-state/", "/table/key-state/some-api-key/", "/router/",
             "/router/key-state/some-api-key/", "/graph/", "/assignment/", "/performance/"]
    results = asyncio.run(_requests(app, [("GET", p, {}) for p in paths]))
    assert [r[0] for r in results] == [404] * len(paths)
    routes = {r.resource.canonical for r in app.web.web_app.router.routes()}
    assert routes == {"/metrics", "/healthz", "/readyz"}


def test_no_write_method_without_the_token() -> None:
    app, metrics = make_app()
    install_web(app, metrics=metrics, ready=lambda: (True, "ok"))
    res = asyncio.run(_requests(app, [("POST", "/metrics", {}), ("DELETE", "/readyz", {}),
                                      ("PUT", "/table/x/", {})]))
    assert [r[0] for r in res] == [403, 403, 403]
    assert "MOATWATCH_WEB_TOKEN" in res[0][2]

    app, metrics = make_app()
    install_web(app, metrics=metrics, ready=lambda: (True, "ok"), token="s3cret")
    res = asyncio.run(_requests(app, [
        ("POST", "/metrics", {}),
        ("POST", "/metrics", {"Authorization": "Bearer wrong"}),
        ("POST", "/metrics", {"Authorization": "Bearer s3cret"}),
        ("GET", "/metrics", {}),
    ]))
    # With the token the request reaches routing, where no write endpoint exists (405).
    assert [r[0] for r in res] == [401, 401, 405, 200]


def test_install_after_the_server_initialised_is_refused() -> None:
    app, metrics = make_app()
    app.web.init_server()
    with pytest.raises(RuntimeError, match="before"):
        install_web(app, metrics=metrics, ready=lambda: (True, "ok"))


def test_web_app_options_bind_loopback_and_disable_builtins() -> None:
    opts = web_app_options(SimpleNamespace(web_host="127.0.0.1", web_port=7001))
    app = faust.App("test-web-opts", broker="kafka://127.0.0.1:1", **opts)
    assert app.conf.web_bind == "127.0.0.1" and app.conf.web_port == 7001
    assert not (app.conf.web_tables_enabled or app.conf.web_router_enabled
                or app.conf.web_stats_enabled or app.conf.web_graph_enabled)


# -- readiness against faust's own objects ---------------------------------------------------
class _Event:
    def __init__(self, is_set: bool) -> None:
        self._set = is_set

    def is_set(self) -> bool:
        return self._set


def fake_app(*, assignment: set[Any] | None, rebalancing: bool = False, completed: bool = True,
             in_recovery: bool = False, actives_ready: bool = True) -> Any:
    from faust.types import TP

    consumer = None if assignment is None else SimpleNamespace(assignment=lambda: assignment)
    recovery = SimpleNamespace(completed=_Event(completed), in_recovery=in_recovery,
                               active_remaining_total=lambda: 42)
    tables = SimpleNamespace(_recovery=recovery, _changelogs={"app-key-state-changelog": None},
                             actives_ready=actives_ready)
    del TP
    return SimpleNamespace(_consumer=consumer, rebalancing=rebalancing, tables=tables)


def test_readiness_states() -> None:
    from faust.types import TP

    src = {TP("events", 0), TP("app-key-state-changelog", 0)}
    assert readiness(fake_app(assignment=None)) == (False, "consumer not started yet")
    ok, why = readiness(fake_app(assignment={TP("app-key-state-changelog", 0)}))
    assert not ok and "no partitions assigned" in why
    ok, why = readiness(fake_app(assignment=src, rebalancing=True))
    assert not ok and "rebalance" in why
    ok, why = readiness(fake_app(assignment=src, completed=False))
    assert not ok and "recovery" in why
    ok, why = readiness(fake_app(assignment=src, in_recovery=True))
    assert not ok and "42 changelog messages remaining" in why
    ok, why = readiness(fake_app(assignment=src))
    assert ok and "1 partitions assigned" in why


def test_recovery_complete_does_not_need_partitions() -> None:
    assert recovery_complete(fake_app(assignment=set()))  # idle worker: nothing to recover
    assert not recovery_complete(fake_app(assignment=set(), completed=False))
    assert not recovery_complete(fake_app(assignment=set(), in_recovery=True))


def test_readiness_of_a_real_unstarted_app() -> None:
    app, _ = make_app()
    ok, why = readiness(app)
    assert not ok and why == "consumer not started yet"


def test_demo_counts_finished_events_from_the_worker_exposition():
    from streams.demo import finished_events

    m = Metrics(CollectorRegistry())
    m.events_processed.inc(7)
    m.events_invalid.labels(reason="invalid_json").inc(2)
    m.events_invalid.labels(reason="too_large").inc(1)
    m.duplicates.inc(3)
    m.events_consumed.inc(100)  # read, not yet finished: not counted
    assert finished_events(m.render().decode()) == 13
    assert finished_events("") == 0


def test_the_demo_sends_kafka_client_logs_to_its_file_and_restores_the_logger_after(tmp_path):
    from streams.demo import client_log_to
    from streams.settings import KAFKA_LOG

    before = (list(KAFKA_LOG.handlers), KAFKA_LOG.propagate)
    path = tmp_path / "kafka-client.log"
    for run in range(2):  # run twice in one process: no handler left behind to stack
        with client_log_to(str(path)):
            assert not KAFKA_LOG.propagate
            KAFKA_LOG.warning("coordinator loading, run %d", run)
        assert (list(KAFKA_LOG.handlers), KAFKA_LOG.propagate) == before
    KAFKA_LOG.warning("after the demo")  # goes where it went before, not to the file
    lines = path.read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["coordinator loading, run 0",
                                                          "coordinator loading, run 1"]
