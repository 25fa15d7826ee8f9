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
