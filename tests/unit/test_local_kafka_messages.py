"""infra/kafka/local-kafka: what a failed start says (pure helpers; the broker runs in integration)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BIND_FAILURE = """\
[2026-12-01 01:35:05,402] INFO [BrokerServer id=1] Waiting for the broker to be unfenced (kafka.server.BrokerServer)
[2026-12-01 01:35:05,471] ERROR Unable to start acceptor for PLAINTEXT (kafka.network.DataPlaneAcceptor)
org.apache.kafka.common.KafkaException: Socket server failed to bind to 127.0.0.1:39092: Address already in use.
\tat kafka.network.Acceptor.openServerSocket(SocketServer.scala:734)
Caused by: java.net.BindException: Address already in use
\tat java.base/sun.nio.ch.Net.bind0(Native Method)
[2026-12-01 01:35:05,474] ERROR [BrokerServer id=1] Received a fatal error while waiting for all of the SocketServer Acceptors to be started (kafka.server.BrokerServer)
[2026-12-01 01:35:05,827] INFO [controller-1-ThrottledChannelReaper-Request]: Shutdown completed (org.apache.kafka.server.quota.ClientQuotaManager$ThrottledChannelReaper)
"""


@pytest.fixture(scope="module")
def lk():
    path = os.path.join(REPO, "infra", "kafka", "local-kafka")
    loader = importlib.machinery.SourceFileLoader("local_kafka_script", path)
    spec = importlib.util.spec_from_loader("local_kafka_script", loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["local_kafka_script"] = mod
    loader.exec_module(mod)
    return mod


def test_a_failed_start_names_its_first_error_not_the_shutdown_after_it(lk):
    msg = lk.startup_failure(BIND_FAILURE)
    first, cause, hint = msg.splitlines()
    assert "ERROR Unable to start acceptor for PLAINTEXT" in first
    assert "failed to bind to 127.0.0.1:39092: Address already in use" in cause
    assert "MOATWATCH_KAFKA_PORT" in hint
    assert "Shutdown completed" not in msg
    # a start whose log holds no error has nothing to add; an error with no cause is kept alone
    assert lk.startup_failure(BIND_FAILURE.splitlines()[0]) is None
    only = "[t] ERROR Exiting Kafka due to fatal exception (kafka.Kafka$)\n[t] INFO bye"
    assert lk.startup_failure(only) == "[t] ERROR Exiting Kafka due to fatal exception (kafka.Kafka$)"


def test_ports_in_the_ephemeral_range_get_a_warning(lk):
    warning = lk.ephemeral_warning([39092, 39093], (32768, 60999))
    assert "39092, 39093" in warning and "below 32768" in warning
    assert lk.ephemeral_warning([19092, 19093, 19094], (32768, 60999)) is None
    assert lk.ephemeral_warning([39092], None) is None  # not Linux: nothing to say
