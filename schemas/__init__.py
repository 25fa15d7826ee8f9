"""The moatwatch contracts: QueryEvent v1 and Alert v1, and the one module that validates them.

The JSON Schema files beside this module are the source of truth; :mod:`schemas.validation`
compiles them into fast checkers at import time (no per-event schema walking), and the test
suite checks that the compiled checkers agree with a reference JSON Schema 2020-12 validator.
"""

from schemas.validation import (
    ALERT_SCHEMA,
    EVENT_SCHEMA,
    MAX_EVENT_BYTES,
    InvalidAlert,
    InvalidEvent,
    decode_event,
    validate_alert,
    validate_event,
)

__all__ = [
    "ALERT_SCHEMA",
    "EVENT_SCHEMA",
    "MAX_EVENT_BYTES",
    "InvalidAlert",
    "InvalidEvent",
    "decode_event",
    "validate_alert",
    "validate_event",
]
