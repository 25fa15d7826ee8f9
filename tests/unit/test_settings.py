from __future__ import annotations

import dataclasses

import pytest

from streams.settings import SettingsError, load_settings


def test_defaults_and_env():
    s = load_settings({})
    assert s.web_port == 6066 and s.web_host == "127.0.0.1"
    assert s.events_topic == "moatwatch.query-events"
    s = load_settings({"MOATWATCH_EVENTS_TOPIC": "in", "MOATWATCH_APP_ID": "x"})
    assert (s.events_topic, s.app_id) == ("in", "x")


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_settings({}).web_port = 1  # type: ignore[misc]


@pytest.mark.parametrize("env,needle", [
    ({"MOATWATCH_WEB_PORT": "99999"}, "MOATWATCH_WEB_PORT"),
    ({"MOATWATCH_BOOTSTRAP": "localhost"}, "host:port"),
    ({"MOATWATCH_SECURITY_PROTOCOL": "SASL_SSL"}, "MOATWATCH_SASL_USERNAME"),
    ({"MOATWATCH_SECURITY_PROTOCOL": "TLS"}, "use one of"),
    ({"MOATWATCH_EVENTS_TOPIC": "a b"}, "without spaces"),
])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(env)


def test_secrets_are_redacted_and_reach_confluent_config():
    s = load_settings({"MOATWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                       "MOATWATCH_SASL_USERNAME": "u", "MOATWATCH_SASL_PASSWORD": "p"})
    assert s.redacted()["sasl_password"] == "***"
    conf = s.confluent_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.password"] == "p"


def test_librdkafka_log_lines_reach_the_moatwatch_kafka_logger():
    # a real client against a loopback port nobody listens on: librdkafka logs the refused
    # connection, and it must arrive as a Python log record, not as a raw line on stderr
    import logging
    import socket
    import time

    from confluent_kafka import Producer

    from streams.settings import KAFKA_LOG

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    KAFKA_LOG.addHandler(keep)
    try:
        conf = load_settings({"MOATWATCH_BOOTSTRAP": f"127.0.0.1:{port}"}).confluent_config()
        assert conf["logger"] is KAFKA_LOG
        producer = Producer(conf)
        deadline = time.monotonic() + 20
        while not records and time.monotonic() < deadline:
            producer.poll(0.2)
    finally:
        KAFKA_LOG.removeHandler(keep)
    assert records, "no librdkafka log line reached moatwatch.kafka"
    assert records[0].name == "moatwatch.kafka"
    assert f"127.0.0.1:{port}" in records[0].getMessage()
