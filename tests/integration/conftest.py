"""Fixtures for tests against the real local Kafka broker (infra/kafka/local-kafka).

`make test` starts the broker before pytest and exports MOATWATCH_BOOTSTRAP. These tests FAIL,
never skip, when the broker is not there: a skipped integration test would hide a missing
service in CI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KAFKA = os.path.join(REPO, "infra", "kafka", "local-kafka")


def _bootstrap() -> str:
    env = os.environ.get("MOATWATCH_BOOTSTRAP")
    if env:
        return env
    out = subprocess.run([KAFKA, "status"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail("the local Kafka broker is not running: run the tests with `make test`, "
                    "or start it with infra/kafka/local-kafka start", pytrace=False)
    return out.stdout.splitlines()[0].strip()


@pytest.fixture(scope="session")
def bootstrap() -> str:
    addr = _bootstrap()
    host, port = addr.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"Kafka at {addr} is not reachable ({exc}); `make test` starts it",
                    pytrace=False)
    return addr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Names:
    """Unique topic names and app id for one test, and the env a worker needs for them."""

    bootstrap: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    partitions: int = 1

    @property
    def app_id(self) -> str:
        return f"mwtest-{self.run}"

    @property
    def events(self) -> str:
        return f"mwtest.{self.run}.events"

    @property
    def alerts(self) -> str:
        return f"mwtest.{self.run}.alerts"

    @property
    def dlq(self) -> str:
        return f"mwtest.{self.run}.dlq"

    @property
    def feedback(self) -> str:
        return f"mwtest.{self.run}.feedback"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "MOATWATCH_BOOTSTRAP": self.bootstrap,
            "MOATWATCH_APP_ID": self.app_id,
            "MOATWATCH_EVENTS_TOPIC": self.events,
            "MOATWATCH_ALERTS_TOPIC": self.alerts,
            "MOATWATCH_DLQ_TOPIC": self.dlq,
            "MOATWATCH_FEEDBACK_TOPIC": self.feedback,
            "MOATWATCH_PARTITIONS": str(self.partitions),
            "MOATWATCH_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def settings(self, **overrides):
        from streams.settings import load_settings

        return load_settings(self.env(), **overrides)


@pytest.fixture
def names(bootstrap: str) -> Names:
    return Names(bootstrap)


class WorkerProcess:
    """A `moatwatch worker` child process with its own web port and data dir."""

    def __init__(self, names: Names, tmp_path, *, web_port: int | None = None,
                 extra_env: dict[str, str] | None = None, tag: str = "w") -> None:
        self.names = names
        self.web_port = web_port or free_port()
        self.log_path = tmp_path / f"worker-{tag}-{self.web_port}.log"
        self.env = names.env(MOATWATCH_WEB_PORT=str(self.web_port),
                             MOATWATCH_DATA_DIR=str(tmp_path / f"data-{tag}-{self.web_port}"),
                             **(extra_env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                     env=self.env, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception as exc:  # noqa: BLE001
                last = str(exc)
            time.sleep(0.3)
        raise AssertionError(f"worker not ready in {timeout}s ({last}):\n{self.log()[-4000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if getattr(self, "_log", None):
            self._log.close()


@pytest.fixture
def worker_factory(names: Names, tmp_path) -> Iterator:
    started: list[WorkerProcess] = []

    def make(**kw) -> WorkerProcess:
        w = WorkerProcess(names, tmp_path, tag=f"w{len(started)}", **kw)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def read_topic(names: Names, topic: str, *, expect: int | None = None,
               idle: float = 10.0, total: float = 120.0) -> list[dict]:
    """Every JSON message of ``topic`` from the beginning, until ``expect`` messages are read
    or nothing arrived for ``idle`` seconds (after something arrived) or ``total`` passed."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": names.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list[dict] = []
    start = time.monotonic()
    last = start
    try:
        while time.monotonic() - start < total:
            msg = c.poll(0.3)
            if msg is None or msg.error():
                if out and time.monotonic() - last > idle:
                    break
                if not out and expect == 0 and time.monotonic() - start > idle:
                    break
                continue
            out.append(orjson.loads(msg.value()))
            last = time.monotonic()
            if expect is not None and expect and len(out) >= expect:
                break
    finally:
        c.close()
    return out
