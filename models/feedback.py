"""Analyst verdicts on entities, held as data: confirmed, false positive, or allowlisted until a time.

A verdict is a plain record, validated by :func:`validate_feedback` and applied to a
:class:`FeedbackBook`. The detectors ask the book ``verdict(entity_type, entity, ts)`` in event
time, so replay (a feedback JSONL file) and live (the ``moatwatch.feedback`` topic) decide alike.
Allowlists are data, never code: there is no hard-coded list of entities anywhere.

Record shape::

    {"entity_type": "api_key" | "account" | "client_net" | "asn" | "template" | "user_agent",
     "entity": str, "verdict": "confirmed" | "false_positive" | "allowlisted",
     "until": float | null, "ts": float, "analyst": str | null, "note": str | null}

The latest record for an entity (largest ``ts``; on ties the one applied last) wins. An
``allowlisted`` verdict with ``until`` stops counting at ``until``; ``until: null`` allowlists
without end. ``confirmed`` and ``false_positive`` may carry ``until`` too, with the same meaning.
A record only takes effect from its own ``ts`` on, so replaying old traffic with a newer feedback
file does not rewrite history before the analyst spoke.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = [
    "ENTITY_TYPES",
    "FEEDBACK_STATE_VERSION",
    "VERDICTS",
    "FeedbackBook",
    "validate_feedback",
]

#: Entity types a verdict can name (the Alert v1 ``entity_type`` values).
ENTITY_TYPES = ("api_key", "account", "client_net", "asn", "template", "user_agent")
#: The verdicts an analyst can give.
VERDICTS = ("confirmed", "false_positive", "allowlisted")
#: Version of the bytes written by :meth:`FeedbackBook.export_state`.
FEEDBACK_STATE_VERSION = 1

_FIELDS = ("entity_type", "entity", "verdict", "until", "ts", "analyst", "note")
_MAX_TEXT = 4096


def _finite_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def validate_feedback(obj: Any) -> dict[str, Any]:
    """Check one feedback record and return a normalised copy, or raise ``ValueError``.

    The error says which field is wrong and what to write instead. Unknown fields are rejected,
    so a typo (``"untill"``) is not silently ignored.

    Examples
    --------
    >>> r = validate_feedback({"entity_type": "account", "entity": "acct-7",
    ...                        "verdict": "allowlisted", "until": 1.7e9, "ts": 1.6e9})
    >>> r["analyst"] is None and r["until"] == 1.7e9
    True
    >>> validate_feedback({"entity_type": "acount", "entity": "a", "verdict": "confirmed", "ts": 1})
    Traceback (most recent call last):
    ...
    ValueError: feedback entity_type 'acount' is unknown: use one of api_key, account, client_net, asn, template, user_agent
    """
    if type(obj) is not dict:
        raise ValueError("a feedback record must be a JSON object with entity_type, entity, verdict, ts")
    extra = sorted(set(obj) - set(_FIELDS))
    if extra:
        raise ValueError(
            f"feedback record has unknown field(s) {', '.join(extra)}: allowed are {', '.join(_FIELDS)}"
        )
    missing = [f for f in ("entity_type", "entity", "verdict", "ts") if f not in obj]
    if missing:
        raise ValueError(f"feedback record is missing {', '.join(missing)}")
    et = obj["entity_type"]
    if et not in ENTITY_TYPES:
        raise ValueError(f"feedback entity_type {et!r} is unknown: use one of {', '.join(ENTITY_TYPES)}")
    ent = obj["entity"]
    if type(ent) is not str or not ent or len(ent) > _MAX_TEXT:
        raise ValueError("feedback entity must be a non-empty string (the api_key id or group value)")
    verdict = obj["verdict"]
    if verdict not in VERDICTS:
        raise ValueError(f"feedback verdict {verdict!r} is unknown: use one of {', '.join(VERDICTS)}")
    ts = obj["ts"]
    if not _finite_number(ts) or type(ts) is bool:
        raise ValueError("feedback ts must be a finite number (Unix seconds when the verdict was given)")
    until = obj.get("until")
    if until is not None and (type(until) is bool or not _finite_number(until)):
        raise ValueError("feedback until must be null (no end) or a finite number (Unix seconds)")
    if until is not None and until < ts:
        raise ValueError(f"feedback until ({until}) is before ts ({ts}): the verdict would never hold")
    out: dict[str, Any] = {
        "entity_type": et,
        "entity": ent,
        "verdict": verdict,
        "until": None if until is None else float(until),
        "ts": float(ts),
    }
    for f in ("analyst", "note"):
        v = obj.get(f)
        if v is not None and (type(v) is not str or len(v) > _MAX_TEXT):
            raise ValueError(f"feedback {f} must be null or a string of at most {_MAX_TEXT} characters")
        out[f] = v
    return out


class FeedbackBook:
    """The latest analyst verdict per entity, asked in event time.

    Parameters
    ----------
    max_entries
        Upper bound on entities held. When exceeded, the entries whose verdict expired longest ago
        are dropped first, then the oldest records. Must be >= 1.

    Examples
    --------
    >>> book = FeedbackBook()
    >>> book.apply({"entity_type": "api_key", "entity": "k1", "verdict": "allowlisted",
    ...             "until": 200.0, "ts": 100.0})
    >>> book.verdict("api_key", "k1", 150.0)
    'allowlisted'
    >>> book.verdict("api_key", "k1", 250.0) is None   # the allowlist expired
    True
    >>> book.verdict("api_key", "k1", 50.0) is None    # before the analyst spoke
    True
    >>> book.apply({"entity_type": "api_key", "entity": "k1", "verdict": "confirmed", "ts": 300.0})
    >>> book.verdict("api_key", "k1", 400.0)
    'confirmed'
    """

    __slots__ = ("_entries", "_max_entries", "_applied")

    def __init__(self, max_entries: int = 1_000_000) -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, got {max_entries!r}")
        self._max_entries = max_entries
        # (entity_type, entity) -> record (latest wins)
        self._entries: dict[tuple[str, str], dict[str, Any]] = {}
        self._applied = 0

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, record: Any) -> None:
        """Validate ``record`` and make it the entity's verdict unless a newer one is held."""
        rec = validate_feedback(record)
        key = (rec["entity_type"], rec["entity"])
        old = self._entries.get(key)
        if old is not None and old["ts"] > rec["ts"]:
            return  # an older verdict arriving late never overrides a newer one
        self._entries[key] = rec
        self._applied += 1
        if len(self._entries) > self._max_entries:
            self._shrink()

    def _shrink(self) -> None:
        # Drop the entries that stop holding earliest (expired allowlists first), then by age.
        def end(rec: dict[str, Any]) -> tuple[float, float]:
            u = rec["until"]
            return (math.inf if u is None else u, rec["ts"])

        ordered = sorted(self._entries.items(), key=lambda kv: end(kv[1]))
        for k, _ in ordered[: len(self._entries) - self._max_entries]:
            del self._entries[k]

    def verdict(self, entity_type: str, entity: str, ts: float) -> str | None:
        """The verdict holding for the entity at event time ``ts``, or ``None``."""
        rec = self._entries.get((entity_type, entity))
        if rec is None or ts < rec["ts"]:
            return None
        u = rec["until"]
        if u is not None and ts >= u:
            return None
        return rec["verdict"]

    def record(self, entity_type: str, entity: str) -> dict[str, Any] | None:
        """The latest record held for the entity (a copy), whatever its time."""
        rec = self._entries.get((entity_type, entity))
        return None if rec is None else dict(rec)

    def load_jsonl(self, lines: Iterable[bytes | str]) -> int:
        """Apply one JSON record per line; blank lines and ``#`` comments are skipped.

        Returns the number of records applied. A bad line raises ``ValueError`` naming the line
        number, so a feedback file with a typo is fixed rather than half-applied silently.
        """
        n = 0
        for i, raw in enumerate(lines, 1):
            text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"feedback line {i}: not valid JSON ({exc})") from None
            try:
                self.apply(obj)
            except ValueError as exc:
                raise ValueError(f"feedback line {i}: {exc}") from None
            n += 1
        return n

    def export_state(self) -> bytes:
        """Serialise the book as versioned JSON (no pickle)."""
        return orjson.dumps(
            {
                "version": FEEDBACK_STATE_VERSION,
                "records": [self._entries[k] for k in sorted(self._entries)],
            }
        )

    def import_state(self, blob: bytes) -> None:
        """Replace the book's content with what :meth:`export_state` wrote; records are re-validated."""
        try:
            obj = orjson.loads(blob)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"feedback state is not valid JSON ({exc})") from None
        if type(obj) is not dict or obj.get("version") != FEEDBACK_STATE_VERSION:
            raise ValueError(
                f"feedback state version {obj.get('version') if type(obj) is dict else None!r} "
                f"is not {FEEDBACK_STATE_VERSION}: rebuild it from the feedback topic or file"
            )
        recs = obj.get("records")
        if type(recs) is not list:
            raise ValueError("feedback state has no records list")
        self._entries = {}
        for r in recs:
            self.apply(r)

    # the short names the brief uses
    export = export_state
    import_ = import_state
