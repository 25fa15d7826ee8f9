"""Render docs/schemas.md from the schema files (``python -m schemas.docs [--check]``).

The documentation is generated, so it cannot drift from the contract; a test runs ``--check``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from schemas.validation import ALERT_SCHEMA, EVENT_SCHEMA

HEADER = """# Contracts

Generated from `schemas/query_event.v1.json` and `schemas/alert.v1.json` by
`python -m schemas.docs` (a test fails when this file is stale). Both are JSON Schema 2020-12;
`schemas/validation.py` compiles them into the validator both drivers use.

"""

EXAMPLE_EVENT = """```json
{"event_id": "req_8f2c", "ts": 1767571200.25, "api_key": "ak_5a8b3611add6f07d",
 "account_id": "acct_19", "client_ip": "203.0.113.7", "asn": 64500,
 "user_agent": "openai-python/1.52.0", "model": "frontier-1", "endpoint": "/v1/chat/completions",
 "prompt_tokens": 212, "completion_tokens": 1804, "status": 200, "max_tokens": 4096,
 "conversation_id": "c_77", "turn": 1, "prompt_simhash": "9f3a01c2e4b5d6f7", "topic": "math",
 "cot_request": true, "logprobs": false, "n": 1, "temperature": 0.7, "stream": false}
```
"""

EXAMPLE_ALERT = """```json
{"alert_id": "d20e6c427cc8cce47d04e3765b2684a0", "schema_version": 1,
 "entity_type": "api_key", "entity": "ak_5a8b3611add6f07d", "status": "firing",
 "severity": "warning", "score": 0.83, "event_ts": 1767574693.5, "detected_at": 1767574693.9,
 "window": {"first_ts": 1767573232.7, "last_ts": 1767574693.5, "events": 77},
 "reasons": [{"feature": "cot_share", "observed": 0.66, "baseline": 0.08, "contribution": 0.31,
              "explanation": "cot_request share 0.66 vs population 0.08"}],
 "detector": "key_population", "model_version": "key-0.26",
 "related_entities": [], "related_total": 0}
```
"""


def _type(spec: dict[str, Any]) -> str:
    if "enum" in spec:
        return "one of " + ", ".join(f"`{v}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{spec['const']}`"
    t = spec.get("type", "any")
    bits = [t]
    if "minimum" in spec or "maximum" in spec:
        bits.append(f"[{spec.get('minimum', '')}..{spec.get('maximum', '')}]")
    if "minLength" in spec and spec["minLength"]:
        bits.append("non-empty")
    if "pattern" in spec:
        bits.append(f"pattern `{spec['pattern']}`")
    if t == "array" and "maxItems" in spec:
        bits.append(f"at most {spec['maxItems']}")
    return " ".join(bits)


def _table(schema: dict[str, Any], prefix: str = "") -> list[str]:
    rows = []
    required = set(schema.get("required", []))
    for name, spec in schema["properties"].items():
        desc = spec.get("description", "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {'yes' if name in required else 'no'} | {_type(spec)} | {desc} |")
        if spec.get("type") == "object" and "properties" in spec:
            rows.extend(_table(spec, prefix=f"{prefix}{name}."))
        if spec.get("type") == "array" and isinstance(spec.get("items"), dict) and "properties" in spec["items"]:
            rows.extend(_table(spec["items"], prefix=f"{prefix}{name}[]."))
    return rows


def render() -> str:
    out = [HEADER]
    for schema, example, extra in (
        (EVENT_SCHEMA, EXAMPLE_EVENT,
         "Invalid events (bad JSON, non-UTF-8, wrong types, NaN/Infinity, negative counts, an "
         "empty `api_key`, arrays instead of objects, more than 1 MiB) are dead-lettered with one "
         "of the reasons `too_large`, `not_utf8`, `invalid_json`, `not_object`, `missing_field`, "
         "`wrong_type`, `out_of_range`, `bad_format` (and `processing_error` for a valid event the "
         "detector failed on, a bug: one event never stops a partition), the original bytes (base64, at most 64 KiB, "
         "`prompt_text` redacted to a SHA-256) and the source topic/partition/offset or file line."),
        (ALERT_SCHEMA, EXAMPLE_ALERT,
         "`alert_id` is `blake2b(entity_type|entity|detector|episode number)`: the firing, "
         "escalation and resolved messages of one episode share it, and replay, live and a "
         "restarted worker give the same id to the same episode. Alerts are keyed by `entity` on "
         "the alerts topic."),
    ):
        out.append(f"## {schema['title']}\n\n{schema['description']}\n\n")
        out.append("| field | required | type | meaning |\n|---|---|---|---|\n")
        out.append("\n".join(_table(schema)) + "\n\n")
        out.append(extra + "\n\nExample:\n\n" + example + "\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "docs", "schemas.md")
    text = render()
    if "--check" in argv:
        try:
            current = open(path, encoding="utf-8").read()
        except OSError:
            current = ""
        if current != text:
            print(f"{path} is stale: run `python -m schemas.docs`", file=sys.stderr)
            return 1
        return 0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
