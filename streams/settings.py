"""One frozen settings object, read the same way by every command.

Every value comes from a ``MOATWATCH_*`` environment variable with a sane default; a bad value
raises :class:`SettingsError` naming the variable and what it accepts, before anything starts.
``moatwatch <command> --help`` lists the variables (see :func:`describe`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["KAFKA_LOG", "Settings", "SettingsError", "describe", "load_detector_config",
           "load_settings"]

#: Where the confluent-kafka clients' (librdkafka's) log lines go.
KAFKA_LOG = logging.getLogger("moatwatch.kafka")


class SettingsError(ValueError):
    """A ``MOATWATCH_*`` variable has a value moatwatch cannot use."""


@dataclasses.dataclass(frozen=True)
class _Var:
    env: str
    field: str
    default: Any
    kind: type
    help: str
    choices: tuple[str, ...] = ()
    secret: bool = False


_VARS: tuple[_Var, ...] = (
    _Var("MOATWATCH_BOOTSTRAP", "bootstrap", "127.0.0.1:19092", str,
         "Kafka bootstrap servers, host:port[,host:port]"),
    _Var("MOATWATCH_APP_ID", "app_id", "moatwatch", str,
         "Faust app id: consumer group and prefix of internal (changelog/repartition) topics"),
    _Var("MOATWATCH_EVENTS_TOPIC", "events_topic", "moatwatch.query-events", str,
         "input topic of QueryEvent v1 JSON, keyed by api_key"),
    _Var("MOATWATCH_ALERTS_TOPIC", "alerts_topic", "moatwatch.alerts", str,
         "output topic of Alert v1 JSON, keyed by entity"),
    _Var("MOATWATCH_DLQ_TOPIC", "dlq_topic", "moatwatch.dlq", str,
         "dead-letter topic: invalid events with their reason and source offset"),
    _Var("MOATWATCH_FEEDBACK_TOPIC", "feedback_topic", "moatwatch.feedback", str,
         "analyst feedback topic (confirmed / false_positive / allowlisted)"),
    _Var("MOATWATCH_WEB_HOST", "web_host", "127.0.0.1", str,
         "address the worker's web server (/metrics, /healthz, /readyz) binds"),
    _Var("MOATWATCH_WEB_PORT", "web_port", 6066, int,
         "port of the worker's web server"),
    _Var("MOATWATCH_WEB_TOKEN", "web_token", "", str,
         "bearer token required by any write endpoint (none is exposed without it)", secret=True),
    _Var("MOATWATCH_PARTITIONS", "partitions", 4, int,
         "partitions to create the input topic with when moatwatch creates it"),
    _Var("MOATWATCH_BATCH_MAX", "batch_max", 500, int,
         "largest batch of events a worker takes at once"),
    _Var("MOATWATCH_BATCH_WITHIN", "batch_within", 0.05, float,
         "seconds a worker waits to fill a batch (bounds added latency)"),
    _Var("MOATWATCH_SESSION_TIMEOUT", "session_timeout", 30.0, float,
         "seconds without a heartbeat before the group drops a worker and gives its partitions "
         "to the others (failover time after a crash)"),
    _Var("MOATWATCH_DATA_DIR", "data_dir", ".local/worker", str,
         "folder for the worker's local data (Faust table state)"),
    _Var("MOATWATCH_LOG_LEVEL", "log_level", "info", str,
         "log level", choices=("debug", "info", "warning", "error")),
    _Var("MOATWATCH_SECURITY_PROTOCOL", "security_protocol", "PLAINTEXT", str,
         "Kafka security protocol",
         choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
    _Var("MOATWATCH_SASL_MECHANISM", "sasl_mechanism", "SCRAM-SHA-512", str,
         "SASL mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")),
    _Var("MOATWATCH_SASL_USERNAME", "sasl_username", "", str, "SASL username"),
    _Var("MOATWATCH_SASL_PASSWORD", "sasl_password", "", str, "SASL password", secret=True),
    _Var("MOATWATCH_SSL_CAFILE", "ssl_cafile", "", str, "CA bundle for TLS to Kafka"),
    _Var("MOATWATCH_SSL_CERTFILE", "ssl_certfile", "", str, "client certificate for TLS"),
    _Var("MOATWATCH_SSL_KEYFILE", "ssl_keyfile", "", str, "client key for TLS"),
    _Var("MOATWATCH_ALERTMANAGER_URL", "alertmanager_url", "http://127.0.0.1:9093", str,
         "Alertmanager base URL for the alert bridge"),
    _Var("MOATWATCH_FEEDBACK_FILE", "feedback_file", "", str,
         "analyst feedback JSONL file read at start (replay and worker)"),
    _Var("MOATWATCH_DETECTOR_CONFIG", "detector_config", "", str,
         "JSON file of detector hyperparameters to change, e.g. {\"fabricated_switch_floor\": 1.0} "
         "(models.engine.DetectorConfig fields; read at start by replay and worker)"),
)


def _field_defaults() -> dict[str, Any]:
    return {v.field: v.default for v in _VARS}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every tunable of moatwatch, frozen. Build it with :func:`load_settings`."""

    bootstrap: str
    app_id: str
    events_topic: str
    alerts_topic: str
    dlq_topic: str
    feedback_topic: str
    web_host: str
    web_port: int
    web_token: str
    partitions: int
    batch_max: int
    batch_within: float
    session_timeout: float
    data_dir: str
    log_level: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str
    ssl_cafile: str
    ssl_certfile: str
    ssl_keyfile: str
    alertmanager_url: str
    feedback_file: str
    detector_config: str

    def __post_init__(self) -> None:
        if not 1 <= self.web_port <= 65535:
            raise SettingsError(f"MOATWATCH_WEB_PORT={self.web_port}: use a port in 1..65535")
        if self.partitions < 1:
            raise SettingsError(f"MOATWATCH_PARTITIONS={self.partitions}: use 1 or more")
        if self.batch_max < 1:
            raise SettingsError(f"MOATWATCH_BATCH_MAX={self.batch_max}: use 1 or more")
        if not 0 < self.batch_within <= 5:
            raise SettingsError(
                f"MOATWATCH_BATCH_WITHIN={self.batch_within}: use seconds in (0, 5]"
            )
        if not 3 <= self.session_timeout <= 300:
            raise SettingsError(
                f"MOATWATCH_SESSION_TIMEOUT={self.session_timeout}: use seconds in [3, 300]"
            )
        if not self.bootstrap or any(":" not in s for s in self.bootstrap.split(",")):
            raise SettingsError(
                f"MOATWATCH_BOOTSTRAP={self.bootstrap!r}: use host:port[,host:port], "
                "e.g. 127.0.0.1:19092 (infra/kafka/local-kafka status prints it)"
            )
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise SettingsError(
                f"MOATWATCH_SECURITY_PROTOCOL={self.security_protocol} needs "
                "MOATWATCH_SASL_USERNAME and MOATWATCH_SASL_PASSWORD"
            )
        for name in ("events_topic", "alerts_topic", "dlq_topic", "feedback_topic", "app_id"):
            value = getattr(self, name)
            if not value or any(c.isspace() for c in value) or len(value) > 200:
                raise SettingsError(
                    f"MOATWATCH_{name.upper()}={value!r}: use a non-empty name without spaces"
                )

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced, safe to log."""
        out = dataclasses.asdict(self)
        for v in _VARS:
            if v.secret and out[v.field]:
                out[v.field] = "***"
        return out

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka client properties for this cluster (bootstrap + security).

        librdkafka's own log lines (a broker still loading, a retry) go to the Python logger
        ``moatwatch.kafka`` rather than straight to stderr, so they carry the worker's log
        format and a command can send them elsewhere (``moatwatch demo`` writes them to its
        folder)."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": KAFKA_LOG}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        if self.security_protocol.endswith("SSL"):
            if self.ssl_cafile:
                conf["ssl.ca.location"] = self.ssl_cafile
            if self.ssl_certfile:
                conf["ssl.certificate.location"] = self.ssl_certfile
            if self.ssl_keyfile:
                conf["ssl.key.location"] = self.ssl_keyfile
        return conf


def _parse(var: _Var, raw: str) -> Any:
    raw = raw.strip()
    if var.kind is int:
        try:
            value: Any = int(raw)
        except ValueError:
            raise SettingsError(f"{var.env}={raw!r}: expected an integer ({var.help})") from None
    elif var.kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{var.env}={raw!r}: expected a number ({var.help})") from None
    else:
        value = raw
    if var.choices:
        match = {c.lower(): c for c in var.choices}.get(str(value).lower())
        if match is None:
            raise SettingsError(f"{var.env}={raw!r}: use one of {', '.join(var.choices)}")
        value = match
    return value


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read :class:`Settings` from ``MOATWATCH_*`` variables (``os.environ`` by default).

    Examples
    --------
    >>> s = load_settings({"MOATWATCH_WEB_PORT": "7000"})
    >>> s.web_port, s.events_topic
    (7000, 'moatwatch.query-events')
    >>> load_settings({"MOATWATCH_WEB_PORT": "web"})
    Traceback (most recent call last):
    ...
    streams.settings.SettingsError: MOATWATCH_WEB_PORT='web': expected an integer (port of the worker's web server)
    """
    env = os.environ if environ is None else environ
    values = _field_defaults()
    for var in _VARS:
        if var.env in env and env[var.env] != "":
            values[var.field] = _parse(var, env[var.env])
    values.update(overrides)
    return Settings(**values)


def describe() -> str:
    """The environment variables, their defaults and meaning, for ``--help`` epilogs."""
    lines = ["environment (read by every command):"]
    for v in _VARS:
        default = "(empty)" if v.default == "" else v.default
        lines.append(f"  {v.env:<32} {v.help} [default: {default}]")
    return "\n".join(lines)


def load_detector_config(path: str) -> Any:
    """The detector hyperparameters in the JSON file at ``path``, or None for an empty path.

    The file holds one JSON object whose names are :class:`models.engine.DetectorConfig`
    fields; the ones it leaves out keep their defaults. It is parsed as JSON only (never
    unpickled). A missing file, bad JSON, an unknown name (with the closest known one) or a
    value the detector cannot use raises :class:`SettingsError` saying what to fix.

    Examples
    --------
    >>> load_detector_config("") is None
    True
    """
    if not path:
        return None
    import difflib

    import orjson

    from models.engine import DetectorConfig

    where = f"detector config {path!r} (MOATWATCH_DETECTOR_CONFIG or --detector-config)"
    try:
        with open(path, "rb") as fh:
            doc = orjson.loads(fh.read())
    except OSError as exc:
        raise SettingsError(f"cannot read the {where}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise SettingsError(f"{where} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{where}: expected one JSON object of DetectorConfig fields, "
                            f'e.g. {{"fabricated_switch_floor": 1.0}}, got {type(doc).__name__}')
    defaults = DetectorConfig()
    names = [f.name for f in dataclasses.fields(DetectorConfig)]
    values: dict[str, Any] = {}
    for name, value in doc.items():
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise SettingsError(f"{where}: {name!r} is not a detector setting{hint}; "
                                f"the settings are the fields of models.engine.DetectorConfig")
        values[name] = _config_value(where, name, value, getattr(defaults, name))
    try:
        return DetectorConfig(**values)
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None


def _config_value(where: str, name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the field's default, or SettingsError."""
    def bad(kind: str) -> SettingsError:
        return SettingsError(f"{where}: {name} must be {kind}, got {value!r}")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if not number(value):
            raise bad("a number")
        return float(value)
    if isinstance(default, tuple):
        if not (isinstance(value, list) and len(value) == len(default)
                and all(number(v) for v in value)):
            raise bad(f"a list of {len(default)} numbers")
        return tuple(float(v) for v in value)
    raise bad(f"like {default!r}")  # pragma: no cover - every field is one of the above
