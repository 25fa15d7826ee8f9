"""Security on the wire: SASL/SCRAM to Kafka, prompt_text never leaves the worker, web locked down.

Issue 7 §5. A private broker (its own state folder and ports, the shared jar cache) is started
with ``local-kafka start --sasl``; the shared broker on 19092 is never touched.

* With the right credentials (SASL_PLAINTEXT, SCRAM-SHA-512) the worker processes events and
  emits the same per-key alerts as replay; with a wrong password ``moatwatch worker``,
  ``produce`` and ``alerts`` exit non-zero within seconds, naming the credential settings.
* Every event carries a ``prompt_text`` holding a unique marker (valid, mis-keyed and invalid
  events alike). The marker must appear nowhere: alerts, DLQ, the re-key and snapshot topics,
  both changelogs, the worker log, ``/metrics``.
* The web server listens on 127.0.0.1 only, and POST/PUT/DELETE without the token are refused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from streams.kafka_io import ensure_topics, produce_file

from .conftest import KAFKA, REPO, Names, WorkerProcess, read_topic
from .helpers import key_alert_ids, replay_alerts, simulate_file, wait_consumed

pytestmark = pytest.mark.kafka

PASSWORD = "moatwatch-secret-" + uuid.uuid4().hex[:6]


def _free_base() -> int:
    """A port P with P, P+1 (controller) and P+2 (SASL) all free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        ok = True
        for p in (base + 1, base + 2):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise AssertionError("no three consecutive free ports")


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory, bootstrap):
    home = tmp_path_factory.mktemp("kafka-sasl")
    env = dict(os.environ, MOATWATCH_KAFKA_HOME=str(home),
               MOATWATCH_KAFKA_PORT=str(_free_base()),
               MOATWATCH_KAFKA_LIBS=os.path.join(REPO, ".local", "kafka", "libs"),
               MOATWATCH_KAFKA_SASL_PASSWORD=PASSWORD, MOATWATCH_KAFKA_HEAP="384m")
    out = subprocess.run([KAFKA, "start", "--sasl"], env=env, capture_output=True, text=True,
                         timeout=150)
    if out.returncode != 0:
        pytest.fail(f"private SASL broker did not start:\n{out.stderr[-3000:]}", pytrace=False)
    lines = out.stdout.split("\n")
    plain = lines[0].strip()
    sasl = next(x.split()[1] for x in lines if x.startswith("sasl "))
    yield plain, sasl
    subprocess.run([KAFKA, "stop"], env=env, capture_output=True, timeout=60)


def sasl_env(password: str) -> dict[str, str]:
    return {"MOATWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "MOATWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
            "MOATWATCH_SASL_USERNAME": "moatwatch", "MOATWATCH_SASL_PASSWORD": password}


@pytest.mark.parametrize("command", [["worker"], ["produce", "EVENTS"],
                                     ["alerts", "--timeout", "60"]])
def test_wrong_password_fails_fast_naming_the_credentials(sasl_broker, tmp_path, command):
    _plain, sasl = sasl_broker
    names = Names(sasl)
    events = tmp_path / "one.jsonl"
    events.write_bytes(b'{"event_id":"e","ts":1767571200,"api_key":"k","prompt_tokens":1,'
                       b'"completion_tokens":1,"status":200}\n')
    argv = [str(events) if a == "EVENTS" else a for a in command]
    env = names.env(MOATWATCH_WEB_PORT="1", **sasl_env("not-the-password"))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "streams.cli", *argv], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert out.returncode != 0, f"moatwatch {command[0]} accepted a wrong password"
    assert took < 20, f"moatwatch {command[0]} took {took:.0f}s to notice a wrong password"
    err = out.stderr.splitlines()[-1]
    assert "MOATWATCH_SASL_PASSWORD" in err and "uthentication" in err, err
    assert "not-the-password" not in out.stderr + out.stdout


def raw_messages(bootstrap: str, topic: str, idle: float = 3.0) -> list[bytes]:
    """Every key and value of ``topic`` as bytes (plain listener of the private broker)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list[bytes] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle:
            msg = c.poll(0.3)
            if msg is None or msg.error():
                continue
            out.append((msg.key() or b"") + b"|" + (msg.value() or b""))
            last = time.monotonic()
    finally:
        c.close()
    return out


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                found.add(addr)
    return found


def test_sasl_worker_processes_events_and_prompt_text_never_leaves(sasl_broker, tmp_path):
    plain, sasl = sasl_broker
    marker = f"PROMPTMARK{uuid.uuid4().hex}"
    sim, _ = simulate_file(tmp_path, hours=3.0, seed=21, scale=0.3)
    lines = []
    for i, line in enumerate(sim.read_bytes().splitlines()):
        ev = orjson.loads(line)
        ev["prompt_text"] = f"{marker} please explain step by step, item {i}"
        lines.append(orjson.dumps(ev))
    events = tmp_path / "with-prompts.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    expected = key_alert_ids(replay_alerts(events, tmp_path, partitions=2))
    assert expected

    names = Names(sasl, partitions=2)
    token = uuid.uuid4().hex
    settings = names.settings(**{k.removeprefix("MOATWATCH_").lower(): v
                                 for k, v in sasl_env(PASSWORD).items()})
    ensure_topics(settings, {names.events: 2, names.alerts: 2, names.dlq: 1})
    worker = WorkerProcess(names, tmp_path, extra_env={**sasl_env(PASSWORD),
                                                       "MOATWATCH_WEB_TOKEN": token,
                                                       "MOATWATCH_LOG_LEVEL": "debug"})
    worker.start()
    try:
        worker.wait_ready()
        sent = produce_file(settings, str(events), progress=False)["events"]
        # mis-keyed (goes through the re-key topic) and invalid events, with prompt text too
        p = Producer({**settings.confluent_config(), "partitioner": "murmur2_random"})
        extra = 0
        for i in range(20):
            ev = orjson.loads(lines[i])
            ev["ts"] = orjson.loads(lines[-1])["ts"] + 1 + i
            p.produce(names.events, key=b"wrong-key", value=orjson.dumps(ev))
            p.produce(names.events, value=orjson.dumps({**ev, "prompt_tokens": -1}))
            p.produce(names.events, value=b'{"prompt_text":"' + marker.encode() + b'", broken')
            extra += 3
        assert p.flush(30) == 0
        wait_consumed(worker, sent + extra)
        # the 20 re-keyed events come around once more through the re-key topic
        time.sleep(3)
        # read back through the private broker's plain listener
        live = read_topic(Names(plain, run=names.run), names.alerts, idle=6.0, total=90.0)
        assert key_alert_ids(live) >= expected, "the SASL worker must alert like replay"

        # web: loopback only; no write method without the token
        addrs = listening_addresses(worker.web_port)
        assert addrs and all(a in ("0100007F", "0000000000000000FFFF00000100007F") for a in addrs), \
            f"web server listens on {addrs}, not only 127.0.0.1"
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                req = urllib.request.Request(worker.url("/metrics"), method=method,
                                             headers=headers, data=b"x")
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(req, timeout=5)
                assert err.value.code in (401, 403), (method, headers, err.value.code)
        with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as r:
            metrics_text = r.read()
    finally:
        worker.stop()

    needle = marker.encode()
    assert needle not in metrics_text, "prompt text in /metrics"
    assert marker not in worker.log(), "prompt text in the worker log"
    dlq = raw_messages(plain, names.dlq)
    assert len(dlq) >= 40, f"{len(dlq)} dead letters, expected the 40 invalid events"
    topics = [names.alerts, names.dlq, f"{names.app_id}-events-rekeyed",
              f"{names.app_id}-member-snapshots", f"{names.app_id}-key-state-changelog",
              f"{names.app_id}-partition-state-changelog"]
    for topic in topics:
        msgs = raw_messages(plain, topic)
        assert msgs or topic == names.dlq, f"{topic} is empty: the check would prove nothing"
        leaks = [m[:200] for m in msgs if needle in m]
        assert not leaks, f"prompt text leaked into {topic}: {leaks[:2]}"
