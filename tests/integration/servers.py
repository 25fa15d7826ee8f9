"""Start and stop real Prometheus and Alertmanager (Debian packages) for the tests.

Each server runs from its packaged binary on a free 127.0.0.1 port with its data in a temporary
folder, and is stopped (SIGTERM, then SIGKILL) when the context exits. A missing binary fails the
test with what to install: these tests never skip.

    with prometheus_server(tmp_path, targets=["127.0.0.1:6066"]) as prom:
        prom.query("up")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "rules" / "moatwatch.rules.yml"
ALERTMANAGER_CONFIG = ROOT / "infra" / "alertmanager" / "alertmanager.yml"

#: binary -> the Debian package that provides it (what `make test` installs).
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}


def binary(name: str) -> str:
    """Path of a packaged binary, or fail the test saying which package provides it."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `sudo apt-get install -y {PACKAGES[name]}` "
            "(make test's setup does this)", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, *, data: Any = None, method: str | None = None,
              timeout: float = 5.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- Prometheus helpers -----------------------------------------------------------------
    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query through /api/v1/query; raises on a PromQL error."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            out = http_json(url)
        except urllib.error.HTTPError as exc:  # 400 = bad PromQL: show Prometheus's reason
            raise AssertionError(f"{expr!r}: HTTP {exc.code} {exc.read().decode()}") from None
        assert out["status"] == "success", out
        return list(out["data"]["result"])


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"{server.name} exited with {server.proc.returncode}:\n"
                        f"{server.log_tail()}", pytrace=False)
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.1)
    pytest.fail(f"{server.name} not ready after {timeout}s ({last}):\n{server.log_tail()}",
                pytrace=False)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def _run(name: str, argv: list[str], workdir: Path, port: int,
         timeout: float = 30.0) -> Iterator[Server]:
    log = workdir / f"{name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir,
                                start_new_session=True)
    server = Server(name, f"http://127.0.0.1:{port}", proc, log, workdir)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        _stop(proc)


def prometheus_config(targets: list[str], *, scrape_interval: str = "1s",
                      rule_files: list[Path] | None = None,
                      alertmanager: str | None = None) -> str:
    """A prometheus.yml like infra/prometheus/prometheus.yml, with test targets and intervals."""
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in (rule_files if rule_files is not None else [RULES])],
        "scrape_configs": [{
            "job_name": "moatwatch",
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": targets}],
        }],
    }
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return json.dumps(cfg, indent=2)  # JSON is YAML


@contextlib.contextmanager
def prometheus_server(tmp: Path, targets: list[str], **config: Any) -> Iterator[Server]:
    """A real Prometheus scraping ``targets`` (job ``moatwatch``) every second."""
    exe = binary("prometheus")
    workdir = tmp / "prometheus"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(prometheus_config(targets, **config), "utf-8")
    port = free_port()
    argv = [
        exe, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        "--web.console.templates=/dev/null", "--web.console.libraries=/dev/null",
    ]
    with _run("prometheus", argv, workdir, port) as server:
        yield server


@contextlib.contextmanager
def alertmanager_server(tmp: Path, config: Path = ALERTMANAGER_CONFIG) -> Iterator[Server]:
    """A real Alertmanager (clustering off) with the project's configuration."""
    exe = binary("prometheus-alertmanager")
    workdir = tmp / "alertmanager"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        exe, f"--config.file={config}", f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with _run("alertmanager", argv, workdir, port) as server:
        yield server


def wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "") -> Any:
    """Poll ``predicate()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}",
                pytrace=False)
