"""Load the contract schemas and validate events and alerts against them.

Events arrive as bytes from Kafka or lines from a file. :func:`decode_event` turns them into a
plain ``dict`` holding only the fields the contract knows, or raises :class:`InvalidEvent` with a
machine-readable ``reason`` (used as a metric label and in dead letters) and a human ``detail``
that says what to fix. It never raises anything else, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson

__all__ = [
    "ALERT_SCHEMA",
    "EVENT_SCHEMA",
    "INVALID_REASONS",
    "MAX_EVENT_BYTES",
    "InvalidAlert",
    "InvalidEvent",
    "decode_event",
    "validate_alert",
    "validate_event",
]

#: Largest accepted event, in bytes; larger messages are dead-lettered as ``too_large``.
MAX_EVENT_BYTES = 1 << 20

#: Every reason :class:`InvalidEvent` can carry (the closed set of the ``reason`` metric label).
#: ``processing_error`` is not a contract violation: a valid event the detector failed on (a
#: bug), dead-lettered by the drivers so that one event cannot stop a partition.
INVALID_REASONS = (
    "too_large",
    "not_utf8",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "bad_format",
    "processing_error",
)


def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("schemas").joinpath(name).read_text("utf-8"))


EVENT_SCHEMA: dict[str, Any] = _load("query_event.v1.json")
ALERT_SCHEMA: dict[str, Any] = _load("alert.v1.json")


class InvalidEvent(ValueError):
    """An event that does not satisfy QueryEvent v1.

    Attributes
    ----------
    reason
        One of :data:`INVALID_REASONS`: a bounded label for metrics and the dead-letter record.
    detail
        What is wrong and with which field, for a person. Never contains prompt text.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidAlert(ValueError):
    """An alert that does not satisfy Alert v1 (a bug in moatwatch, never in the input)."""


# --- compiled field checkers -------------------------------------------------------------

Checker = Callable[[str, Any], Any]


def _is_number(v: Any) -> bool:
    t = type(v)
    return t is float or t is int


def _compile_field(name: str, spec: dict[str, Any]) -> Checker:
    """Build a checker for one property from its schema: returns the value or raises."""
    lo = spec.get("minimum")
    hi = spec.get("maximum")
    kind = spec.get("type")
    if "enum" in spec:
        allowed = frozenset(spec["enum"])
        shown = ", ".join(map(str, spec["enum"]))

        def check_enum(field: str, v: Any) -> Any:
            if type(v) is not str:
                raise InvalidEvent("wrong_type", f"{field} must be a string, one of: {shown}")
            if v not in allowed:
                raise InvalidEvent("out_of_range", f"{field} must be one of: {shown}")
            return v

        return check_enum
    if kind == "string":
        min_len = spec.get("minLength", 0)
        max_len = spec.get("maxLength")
        pattern = re.compile(spec["pattern"]) if "pattern" in spec else None

        def check_str(field: str, v: Any) -> Any:
            if type(v) is not str:
                raise InvalidEvent("wrong_type", f"{field} must be a string, got {_type_name(v)}")
            n = len(v)
            if n < min_len:
                raise InvalidEvent("out_of_range", f"{field} must not be empty")
            if max_len is not None and n > max_len:
                raise InvalidEvent("out_of_range", f"{field} is longer than {max_len} characters")
            if pattern is not None and pattern.fullmatch(v) is None:
                raise InvalidEvent("bad_format", f"{field} must match {spec['pattern']}")
            return v

        return check_str
    if kind == "integer":

        def check_int(field: str, v: Any) -> Any:
            if type(v) is not int:
                if type(v) is float and v.is_integer() and math.isfinite(v):
                    v = int(v)  # JSON Schema: 3.0 is an integer
                else:
                    raise InvalidEvent(
                        "wrong_type", f"{field} must be an integer, got {_type_name(v)}"
                    )
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise InvalidEvent("out_of_range", f"{field} must be in [{lo}, {hi}]")
            return v

        return check_int
    if kind == "number":

        def check_num(field: str, v: Any) -> Any:
            if not _is_number(v):
                raise InvalidEvent("wrong_type", f"{field} must be a number, got {_type_name(v)}")
            if not math.isfinite(v):
                raise InvalidEvent("out_of_range", f"{field} must be finite")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise InvalidEvent("out_of_range", f"{field} must be in [{lo}, {hi}]")
            return float(v)

        return check_num
    if kind == "boolean":

        def check_bool(field: str, v: Any) -> Any:
            if type(v) is not bool:
                raise InvalidEvent("wrong_type", f"{field} must be true or false, got {_type_name(v)}")
            return v

        return check_bool
    raise ValueError(f"schema property {name!r} has a type this validator does not compile: {spec}")


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if type(v) is bool:
        return "boolean"
    if type(v) is str:
        return "string"
    if type(v) is list:
        return "array"
    if type(v) is dict:
        return "object"
    if type(v) is float:
        return "number" if math.isfinite(v) else "non-finite number"
    if type(v) is int:
        return "integer"
    return type(v).__name__


_EVENT_FIELDS: tuple[tuple[str, Checker], ...] = tuple(
    (name, _compile_field(name, spec)) for name, spec in EVENT_SCHEMA["properties"].items()
)
_EVENT_REQUIRED: tuple[str, ...] = tuple(EVENT_SCHEMA["required"])


def validate_event(obj: Any) -> dict[str, Any]:
    """Check a decoded JSON value against QueryEvent v1.

    Returns a new dict with the known fields only (unknown fields are ignored, as the contract
    says). Raises :class:`InvalidEvent` otherwise.

    Examples
    --------
    >>> e = validate_event({"event_id": "e1", "ts": 1.7e9, "api_key": "k1",
    ...                     "prompt_tokens": 10, "completion_tokens": 200, "status": 200,
    ...                     "extra": "ignored"})
    >>> sorted(e)
    ['api_key', 'completion_tokens', 'event_id', 'prompt_tokens', 'status', 'ts']
    >>> validate_event({"event_id": "e1"})
    Traceback (most recent call last):
    ...
    schemas.validation.InvalidEvent: missing_field: missing required field(s): ts, api_key, prompt_tokens, completion_tokens, status
    """
    if type(obj) is not dict:
        raise InvalidEvent("not_object", f"an event must be a JSON object, got {_type_name(obj)}")
    missing = [f for f in _EVENT_REQUIRED if f not in obj]
    if missing:
        raise InvalidEvent("missing_field", "missing required field(s): " + ", ".join(missing))
    out: dict[str, Any] = {}
    for name, check in _EVENT_FIELDS:
        if name in obj:
            out[name] = check(name, obj[name])
    return out


def decode_event(raw: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Decode one message (bytes or a text line) into a valid QueryEvent v1 dict.

    Never raises anything but :class:`InvalidEvent`.

    Examples
    --------
    >>> decode_event(b'{"event_id":"e","ts":1,"api_key":"k","prompt_tokens":1,"completion_tokens":2,"status":200}')["api_key"]
    'k'
    >>> decode_event(b'{"ts": NaN}').reason
    Traceback (most recent call last):
    ...
    schemas.validation.InvalidEvent: invalid_json: not valid JSON (...)
    """
    try:
        if len(raw) > MAX_EVENT_BYTES:
            raise InvalidEvent(
                "too_large", f"event is {len(raw)} bytes, more than the {MAX_EVENT_BYTES} allowed"
            )
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            msg = str(exc)
            if "utf-8" in msg.lower() or "surrogate" in msg.lower():
                raise InvalidEvent("not_utf8", "event is not valid UTF-8") from None
            raise InvalidEvent("invalid_json", f"not valid JSON ({msg})") from None
        return validate_event(obj)
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent("invalid_json", "JSON nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the contract: bytes never crash the decoder
        raise InvalidEvent("invalid_json", f"undecodable input ({type(exc).__name__})") from None


# --- alerts ------------------------------------------------------------------------------

_SEVERITIES = frozenset(ALERT_SCHEMA["properties"]["severity"]["enum"])
_STATUSES = frozenset(ALERT_SCHEMA["properties"]["status"]["enum"])
_ENTITY_TYPES = frozenset(ALERT_SCHEMA["properties"]["entity_type"]["enum"])
_ALERT_ID = re.compile(ALERT_SCHEMA["properties"]["alert_id"]["pattern"])
_REASON_FIELDS = frozenset(ALERT_SCHEMA["properties"]["reasons"]["items"]["required"])


def validate_alert(alert: Any) -> dict[str, Any]:
    """Check an alert against Alert v1; return it unchanged or raise :class:`InvalidAlert`.

    Alerts are produced by moatwatch itself, so a failure here is a bug: the message names the
    field so it can be fixed.
    """
    def fail(msg: str) -> None:
        raise InvalidAlert(f"alert does not satisfy Alert v1: {msg}")

    if type(alert) is not dict:
        fail("not an object")
    required = ALERT_SCHEMA["required"]
    missing = [f for f in required if f not in alert]
    if missing:
        fail("missing " + ", ".join(missing))
    extra = set(alert) - set(ALERT_SCHEMA["properties"])
    if extra:
        fail("unexpected field(s) " + ", ".join(sorted(extra)))
    if type(alert["alert_id"]) is not str or not _ALERT_ID.fullmatch(alert["alert_id"]):
        fail("alert_id must be 32 lowercase hex characters")
    if alert["schema_version"] != 1 or type(alert["schema_version"]) is not int:
        fail("schema_version must be 1")
    if alert["entity_type"] not in _ENTITY_TYPES:
        fail(f"entity_type {alert['entity_type']!r} unknown")
    if type(alert["entity"]) is not str or not alert["entity"]:
        fail("entity must be a non-empty string")
    if alert["status"] not in _STATUSES:
        fail(f"status {alert['status']!r} unknown")
    if alert["severity"] not in _SEVERITIES:
        fail(f"severity {alert['severity']!r} unknown")
    for f in ("score", "event_ts", "detected_at"):
        if not _is_number(alert[f]) or not math.isfinite(alert[f]):
            fail(f"{f} must be a finite number")
    if not 0.0 <= alert["score"] <= 1.0:
        fail("score must be in [0, 1]")
    w = alert["window"]
    if type(w) is not dict or set(w) != {"first_ts", "last_ts", "events"}:
        fail("window must hold exactly first_ts, last_ts, events")
    if type(w["events"]) is not int or w["events"] < 0:
        fail("window.events must be an integer >= 0")
    if not (_is_number(w["first_ts"]) and _is_number(w["last_ts"])):
        fail("window first_ts/last_ts must be numbers")
    reasons = alert["reasons"]
    if type(reasons) is not list or not reasons:
        fail("reasons must be a non-empty list")
    for r in reasons:
        if type(r) is not dict or set(r) != _REASON_FIELDS:
            fail("each reason holds exactly " + ", ".join(sorted(_REASON_FIELDS)))
        if type(r["feature"]) is not str or type(r["explanation"]) is not str or not r["explanation"]:
            fail("reason feature/explanation must be strings")
        for f in ("observed", "baseline", "contribution"):
            if not _is_number(r[f]) or not math.isfinite(r[f]):
                fail(f"reason {f} must be a finite number")
        if not 0.0 <= r["contribution"] <= 1.0:
            fail("reason contribution must be in [0, 1]")
    for f in ("detector", "model_version"):
        if type(alert[f]) is not str or not alert[f]:
            fail(f"{f} must be a non-empty string")
    rel = alert["related_entities"]
    if type(rel) is not list or len(rel) > 100 or any(type(k) is not str for k in rel):
        fail("related_entities must be a list of at most 100 strings")
    if type(alert["related_total"]) is not int or alert["related_total"] < 0:
        fail("related_total must be an integer >= 0")
    return alert
