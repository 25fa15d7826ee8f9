"""infra/kafka/local-kafka against a real broker of its own.

Each test starts a separate broker (own state folder under tmp_path, own ports from
29092 up), so the shared broker on 19092 that other tests and workers use is never
touched. The jars come from the shared cache (MOATWATCH_KAFKA_LIBS, default
<repo>/.local/kafka/libs), so no network is needed once `local-kafka start` has run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "kafka" / "local-kafka"
SHARED_LIBS = Path(os.environ.get("MOATWATCH_KAFKA_LIBS") or REPO / ".local" / "kafka" / "libs")
SASL_PASSWORD = "right-" + uuid.uuid4().hex[:8]

pytestmark = pytest.mark.kafka


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_block(start: int) -> int:
    """First port >= start with port, port+1 (controller), port+2 (SASL) unused."""
    for base in range(start, start + 900, 10):
        if all(_free(base + i) for i in range(3)):
            return base
    raise AssertionError(f"no three free ports between {start} and {start + 900}")


def _running(pid: int) -> bool:
    """Alive and not a zombie (the broker's parent exited, so init reaps it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass
class LocalKafka:
    """One private broker: runs the script with its own state folder and ports."""

    home: Path
    port: int

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOATWATCH_KAFKA_")}
        env.update(
            MOATWATCH_KAFKA_HOME=str(self.home),
            MOATWATCH_KAFKA_PORT=str(self.port),
            MOATWATCH_KAFKA_LIBS=str(SHARED_LIBS),
            MOATWATCH_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
            MOATWATCH_KAFKA_START_TIMEOUT="60",
        )
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def pid(self) -> int:
        return int((self.home / "kafka.pid").read_text().split()[0])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalKafka]:
    kafka = LocalKafka(home=tmp_path / "kafka", port=_free_port_block(29092))
    try:
        yield kafka
    finally:
        kafka.run("stop")


def _round_trip(bootstrap: str, **security: str) -> None:
    topic = f"local-kafka-test-{uuid.uuid4().hex}"
    key, value = b"key-1", uuid.uuid4().bytes
    delivered: list[KafkaError | None] = []
    producer = Producer({"bootstrap.servers": bootstrap, **security})
    producer.produce(topic, value, key=key, on_delivery=lambda err, _msg: delivered.append(err))
    assert producer.flush(30) == 0, "message not delivered within 30 s"
    assert delivered == [None]

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            **security,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            assert (msg.key(), msg.value()) == (key, value)
            return
        raise AssertionError(f"nothing consumed from {topic} within 30 s")
    finally:
        consumer.close()


def test_help_and_usage() -> None:
    helped = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    for word in ("start", "stop", "status", "--sasl", "MOATWATCH_KAFKA_PORT"):
        assert word in helped.stdout
    wrong = subprocess.run([str(SCRIPT), "restart"], capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stdout == "" and "Usage" in wrong.stderr


def test_start_status_round_trip_stop(broker: LocalKafka) -> None:
    address = f"127.0.0.1:{broker.port}"

    started = broker.run("start")
    assert started.returncode == 0, started.stderr
    assert started.stdout == address + "\n"  # progress goes to stderr only
    pid = broker.pid()

    status = broker.run("status")
    assert (status.returncode, status.stdout) == (0, address + "\n"), status.stderr

    began = time.monotonic()
    again = broker.run("start")
    assert (again.returncode, again.stdout) == (0, address + "\n"), again.stderr
    assert broker.pid() == pid, "a second start must not launch another broker"
    assert time.monotonic() - began < 5

    _round_trip(address)

    # SASL needs a restart; start --sasl says so instead of silently lacking it.
    no_sasl = broker.run("start", "--sasl")
    assert no_sasl.returncode != 0 and "without the SASL listener" in no_sasl.stderr

    # A second state folder on the same ports is refused with a clear reason.
    clash = broker.run("start", MOATWATCH_KAFKA_HOME=str(broker.home.parent / "other"))
    assert clash.returncode != 0 and clash.stdout == ""
    assert "taken by another process" in clash.stderr

    stopped = broker.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not _running(pid), f"broker pid {pid} survived stop"
    down = broker.run("status")
    assert down.returncode != 0 and down.stdout == ""
    assert "not running" in down.stderr
    assert broker.run("stop").returncode == 0  # idempotent

    # A stale pid file naming a live process that is not the broker (this very
    # test) must neither count as "up" nor be killed by stop or start.
    (broker.home / "kafka.pid").write_text(f"{os.getpid()}\n")
    assert broker.run("status").returncode != 0
    assert broker.run("stop").returncode == 0
    (broker.home / "kafka.pid").write_text(f"{os.getpid()}\n")
    restarted = broker.run("start")
    assert (restarted.returncode, restarted.stdout) == (0, address + "\n"), restarted.stderr
    assert broker.pid() != os.getpid()
    _round_trip(address)  # the data folder survived the restart; the broker still serves


def test_sasl_scram_listener(broker: LocalKafka) -> None:
    plain, sasl = f"127.0.0.1:{broker.port}", f"127.0.0.1:{broker.port + 2}"

    started = broker.run("start", "--sasl")
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == [plain, f"sasl {sasl}"]
    status = broker.run("status")
    assert status.returncode == 0 and status.stdout.splitlines() == [plain, f"sasl {sasl}"]

    scram = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "moatwatch",
    }
    _round_trip(sasl, **scram, **{"sasl.password": SASL_PASSWORD})
    _round_trip(plain)  # ordinary clients keep working beside SASL

    errors: list[KafkaError] = []
    delivered: list[KafkaError | None] = []
    producer = Producer(
        {
            "bootstrap.servers": sasl,
            **scram,
            "sasl.password": "wrong-password",
            "error_cb": errors.append,
            "message.timeout.ms": 20000,
        }
    )
    producer.produce(
        f"local-kafka-test-{uuid.uuid4().hex}",
        b"never",
        on_delivery=lambda err, _msg: delivered.append(err),
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not errors:
        producer.poll(0.2)
    assert errors, "a wrong SCRAM password produced no error within 15 s"
    assert errors[0].code() == KafkaError._AUTHENTICATION, errors[0]
    assert "SASL authentication error" in errors[0].str()
    assert delivered == []
    producer.purge()
    producer.flush(0)

    # A broker already running with SASL reports both listeners to a plain start.
    again = broker.run("start")
    assert again.returncode == 0 and again.stdout.splitlines() == [plain, f"sasl {sasl}"]


def test_a_cluster_id_starting_with_a_dash_formats_and_starts(broker: LocalKafka) -> None:
    """Kafka cluster ids are base64url, and one in 64 starts with "-": the format call must not
    let StorageTool's argument parser take it for an option (a CI run failed on exactly that)."""
    out = broker.run("start", MOATWATCH_KAFKA_CLUSTER_ID="-xzcioKKRiWJ8KMnRqq2EQ")
    assert out.returncode == 0, out.stderr
    meta = (broker.home / "data" / "meta.properties").read_text()
    assert "cluster.id=-xzcioKKRiWJ8KMnRqq2EQ" in meta
    _round_trip(out.stdout.strip())


def test_a_port_taken_at_bind_time_is_named_with_what_to_do(broker: LocalKafka) -> None:
    # Bound but not listening: the script's free-port check (a connect) finds it free, and
    # the broker's bind then fails, as when another process takes the port in between.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", broker.port))
        r = broker.run("start")
    assert r.returncode == 1
    assert r.stdout == ""
    err = r.stderr
    first = err.index("first error:")
    assert f"failed to bind to 127.0.0.1:{broker.port}: Address already in use" in err[first:]
    assert "set MOATWATCH_KAFKA_PORT" in err[first:]
    # the cause comes before the log's last lines, which are the shutdown that followed
    assert first < err.index("--- last lines of")
