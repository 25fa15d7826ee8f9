"""Grafana dashboards as code and ``moatwatch grafana provision|annotate``.

No Grafana server can be installed on these machines, so provisioning is tested against a local
HTTP server that answers like Grafana's HTTP API (the response shapes documented at
grafana.com/docs/grafana/latest/developers/http_api/) and records every request, whose bodies
the tests check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from streams.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "infra" / "grafana" / "build_dashboards.py"
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
TOKEN = "glsa_test_token"


# -- dashboards as code ---------------------------------------------------------------------
def test_committed_dashboards_match_the_generator() -> None:
    out = subprocess.run([sys.executable, str(BUILD), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, f"stale dashboards; run `python {BUILD.relative_to(ROOT)}`:\n" \
                                + out.stderr


def test_check_fails_when_a_dashboard_is_stale(tmp_path: Path) -> None:
    for p in DASHBOARDS.glob("*.json"):
        board = json.loads(p.read_text())
        board["title"] = "edited by hand"
        (tmp_path / p.name).write_text(json.dumps(board))
    out = subprocess.run([sys.executable, str(BUILD), "--check", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "stale" in out.stderr


def test_dashboard_uses_a_prometheus_datasource_variable_and_covers_the_metrics() -> None:
    board = json.loads((DASHBOARDS / "moatwatch-overview.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    text = json.dumps(board)
    for metric in (
        "moatwatch_events_consumed_total", "moatwatch_events_processed_total",
        "moatwatch_consumer_lag_messages", "moatwatch_processing_seconds_bucket",
        "moatwatch_event_time_lag_seconds_bucket", "moatwatch_events_invalid_total",
        "moatwatch_alerts_total", "moatwatch_alert_reason_features_total",
        "moatwatch_tracked_keys", "moatwatch_state_bytes", "moatwatch_open_episodes",
        "moatwatch_table_recovery_complete", "moatwatch_partitions_assigned",
        "moatwatch_rebalances_total", "up{job=\\\"moatwatch\\\"",
    ):
        assert metric in text, f"no panel uses {metric}"
    for q in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
              "topk(10,"):
        assert q in text
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


# -- a recording stand-in for Grafana's HTTP API ---------------------------------------------
class FakeGrafana:
    """Answers the Grafana HTTP API calls moatwatch makes, with Grafana's response shapes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.annotations: list[dict[str, Any]] = []

    def handle(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, Any]:
        self.requests.append({"method": method, "path": path, "body": body,
                              "auth": headers.get("Authorization")})
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "Unauthorized", "traceID": ""}
        route = path.split("?")[0]
        if method == "GET" and route.startswith("/api/datasources/name/"):
            ds = self.datasources.get(route.rsplit("/", 1)[1])
            return (200, ds) if ds else (404, {"message": "Data source not found"})
        if method == "POST" and route == "/api/datasources":
            if body["name"] in self.datasources:
                return 409, {"message": "data source with the same name already exists"}
            ds = {**body, "id": len(self.datasources) + 1, "orgId": 1, "readOnly": False}
            self.datasources[body["name"]] = ds
            return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource added",
                         "name": ds["name"]}
        if method == "PUT" and route.startswith("/api/datasources/uid/"):
            uid = route.rsplit("/", 1)[1]
            ds = next((d for d in self.datasources.values() if d["uid"] == uid), None)
            if ds is None:
                return 404, {"message": "Data source not found"}
            ds.update(body)
            return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource updated",
                         "name": ds["name"]}
        if method == "GET" and route.startswith("/api/folders/"):
            f = self.folders.get(route.rsplit("/", 1)[1])
            return (200, f) if f else (404, {"message": "folder not found", "status": "not-found"})
        if method == "POST" and route == "/api/folders":
            f = {"id": len(self.folders) + 1, "uid": body.get("uid", "generated"),
                 "title": body["title"], "url": f"/dashboards/f/{body.get('uid')}/",
                 "version": 1}
            self.folders[f["uid"]] = f
            return 200, f
        if method == "POST" and route == "/api/dashboards/db":
            board = body["dashboard"]
            if not body.get("overwrite") and board["uid"] in self.dashboards:
                return 412, {"message": "The dashboard has been changed by someone else",
                             "status": "version-mismatch"}
            version = self.dashboards.get(board["uid"], {}).get("version", 0) + 1
            self.dashboards[board["uid"]] = {"body": body, "version": version}
            return 200, {"id": 1, "uid": board["uid"], "status": "success", "version": version,
                         "url": f"/d/{board['uid']}/moatwatch-overview",
                         "slug": "moatwatch-overview"}
        if method == "GET" and route == "/api/annotations":
            return 200, self.annotations[:1]
        if method == "POST" and route == "/api/annotations":
            self.annotations.append(body)
            return 200, {"message": "Annotation added", "id": len(self.annotations)}
        return 404, {"message": "Not found"}


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload = fake.handle(self.command, self.path, self.headers, body)
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = _serve  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", fake
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_provision_creates_then_updates(grafana: tuple[str, FakeGrafana],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, fake = grafana
    assert cli_main(["grafana", "provision", "--url", url, "--token", TOKEN,
                     "--prometheus-url", "http://prom.internal:9090"]) == 0
    calls = [(r["method"], r["path"]) for r in fake.requests]
    assert calls[:5] == [
        ("GET", "/api/datasources/name/moatwatch-prometheus"),
        ("POST", "/api/datasources"),
        ("GET", "/api/folders/moatwatch"),
        ("POST", "/api/folders"),
        ("POST", "/api/dashboards/db"),
    ]
    ds = fake.requests[1]["body"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy"
    assert ds["url"] == "http://prom.internal:9090"
    assert ds["uid"] == ds["name"] == "moatwatch-prometheus"
    assert fake.requests[3]["body"] == {"title": "moatwatch", "uid": "moatwatch"}
    saved = fake.requests[4]["body"]
    assert saved["overwrite"] is True and saved["folderUid"] == "moatwatch"
    committed = json.loads((DASHBOARDS / "moatwatch-overview.json").read_text())
    assert saved["dashboard"]["uid"] == "moatwatch-overview"
    assert saved["dashboard"]["id"] is None  # Grafana matches by uid, never a stale id
    assert saved["dashboard"]["panels"] == committed["panels"]
    assert len(fake.dashboards) == len(list(DASHBOARDS.glob("*.json")))
    assert "created" in capsys.readouterr().err

    fake.requests.clear()
    assert cli_main(["grafana", "provision", "--url", url, "--token", TOKEN]) == 0
    calls = [(r["method"], r["path"]) for r in fake.requests]
    assert ("PUT", "/api/datasources/uid/moatwatch-prometheus") in calls
    assert ("POST", "/api/datasources") not in calls
    assert ("POST", "/api/folders") not in calls
    assert fake.dashboards["moatwatch-overview"]["version"] == 2
    assert fake.datasources["moatwatch-prometheus"]["url"] == "http://127.0.0.1:9090"


def test_provision_with_a_wrong_token_says_so(grafana: tuple[str, FakeGrafana],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, fake = grafana
    assert cli_main(["grafana", "provision", "--url", url, "--token", "wrong"]) == 1
    err = capsys.readouterr().err
    assert "401" in err and "--token" in err
    assert not fake.datasources and not fake.dashboards


def test_provision_when_grafana_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli_main(["grafana", "provision", "--url", f"http://127.0.0.1:{port}",
                     "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Grafana" in err and str(port) in err


def test_annotate_from_file(grafana: tuple[str, FakeGrafana], tmp_path: Path) -> None:
    url, fake = grafana
    alerts = [
        {"alert_id": "a" * 32, "status": "firing", "entity_type": "api_key", "entity": "key-9",
         "severity": "critical", "detector": "key_drift", "score": 0.91, "event_ts": 1700000000.25,
         "reasons": [{"feature": "cot_share", "explanation": "91% step-by-step prompts"},
                     {"feature": "topic_coverage", "explanation": "all 7 topics evenly"}]},
        {"alert_id": "b" * 32, "status": "firing", "entity_type": "account", "entity": "acct-3",
         "severity": "warning", "detector": "campaign", "score": 0.7, "event_ts": 1700000100,
         "related_total": 40, "reasons": [{"feature": "template_share",
                                          "explanation": "40 keys share one prompt template"}]},
    ]
    path = tmp_path / "alerts.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in alerts) + "\nnot json\n")
    assert cli_main(["grafana", "annotate", "--url", url, "--token", TOKEN,
                     "--file", str(path)]) == 0
    assert len(fake.annotations) == 2
    first, second = fake.annotations
    assert first["time"] == 1700000000250 and first["timeEnd"] == first["time"]
    assert first["tags"] == ["moatwatch", "api_key", "critical", "key_drift"]
    assert "key-9" in first["text"] and "0.91" in first["text"]
    assert "91% step-by-step prompts" in first["text"] and "all 7 topics" in first["text"]
    assert second["tags"] == ["moatwatch", "account", "warning", "campaign"]
    assert "40 keys" in second["text"]


def test_annotate_with_a_missing_file_fails_clearly(grafana: tuple[str, FakeGrafana],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = grafana
    assert cli_main(["grafana", "annotate", "--url", url, "--token", TOKEN,
                     "--file", "/nonexistent/alerts.jsonl"]) == 1
    assert "cannot read /nonexistent/alerts.jsonl" in capsys.readouterr().err
