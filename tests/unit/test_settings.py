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


def test_detector_config_file_sets_only_what_it_names(tmp_path):
    from models.engine import DetectorConfig
    from streams.settings import load_detector_config

    assert load_detector_config("") is None
    f = tmp_path / "d.json"
    f.write_bytes(b'{"fabricated_switch_floor": 1, "score_mix": [0.5, 0.3, 0.2], "confirm_evals": 2}')
    cfg = load_detector_config(str(f))
    want = DetectorConfig(fabricated_switch_floor=1.0, score_mix=(0.5, 0.3, 0.2), confirm_evals=2)
    assert cfg == want and cfg.warmup_events == DetectorConfig().warmup_events
    assert isinstance(cfg.fabricated_switch_floor, float)
    with pytest.raises(SettingsError, match="cannot read the detector config .*No such file"):
        load_detector_config(str(tmp_path / "missing.json"))
    f.write_bytes(b'{"score_mix": [1, 2]}')
    with pytest.raises(SettingsError, match="score_mix must be a list of 3 numbers"):
        load_detector_config(str(f))
    f.write_bytes(b'{"pickle_ok": true}')  # no close name: no guess
    with pytest.raises(SettingsError, match="'pickle_ok' is not a detector setting;"):
        load_detector_config(str(f))


def test_the_worker_builds_its_cores_with_the_detector_settings(tmp_path):
    """What MOATWATCH_DETECTOR_CONFIG gives `moatwatch worker` reaches every partition's core."""
    from models.engine import DetectorConfig
    from streams.app import Worker
    from streams.settings import load_detector_config

    f = tmp_path / "d.json"
    f.write_bytes(b'{"fabricated_switch_floor": 1.0}')
    settings = load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / "data"),
                              "MOATWATCH_DETECTOR_CONFIG": str(f)})
    w = Worker(settings, 2, config=load_detector_config(settings.detector_config))
    assert [w.detector.core(p).config.fabricated_switch_floor for p in (0, 1)] == [1.0, 1.0]
    plain = Worker(load_settings({"MOATWATCH_DATA_DIR": str(tmp_path / "data2")}), 1)
    assert plain.detector.core(0).config == DetectorConfig()
