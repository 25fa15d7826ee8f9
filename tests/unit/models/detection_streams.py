"""Small synthetic QueryEvent v1 streams for the detection-core unit tests.

Deterministic (``random.Random(seed)``), a few thousand events, no simulator dependency: a
harvesting key, light human users, a multi-turn chat app, a CI suite, and an optional key
that drifts into harvesting half way.
"""

from __future__ import annotations

import random

T0 = 1_767_571_200.0
CAP = ("code", "math", "science", "reasoning")


def _simhash(rng: random.Random) -> str:
    return format(rng.getrandbits(64), "016x")


def harvester(rng: random.Random, key: str, t0: float, t1: float, gap: float = 3.0) -> list[dict]:
    out = []
    t = t0
    i = 0
    while t < t1:
        out.append(
            {
                "event_id": f"{key}-{i}",
                "ts": round(t, 3),
                "api_key": key,
                "prompt_tokens": rng.randint(40, 200),
                "completion_tokens": rng.randint(800, 2500),
                "status": 200,
                "turn": 1,
                "topic": CAP[rng.randrange(4)],
                "cot_request": rng.random() < 0.85,
                "prompt_simhash": _simhash(rng),
                "logprobs": rng.random() < 0.3,
                "temperature": rng.choice((0.2, 0.7, 1.0, 1.3)),
            }
        )
        t += gap * rng.uniform(0.9, 1.1)
        i += 1
    return out


def human(rng: random.Random, key: str, t0: float, t1: float, per_hour: float = 6.0) -> list[dict]:
    out = []
    t = t0 + rng.expovariate(per_hour / 3600.0)
    i = 0
    while t < t1:
        turn = 1 + (i % 3)
        out.append(
            {
                "event_id": f"{key}-{i}",
                "ts": round(t, 3),
                "api_key": key,
                "prompt_tokens": 200 * turn + rng.randint(0, 300),
                "completion_tokens": rng.randint(50, 500),
                "status": 200,
                "conversation_id": f"{key}-c{i // 3}",
                "turn": turn,
                "topic": rng.choice(("chat", "writing", "chat", "code", "other")),
                "cot_request": rng.random() < 0.03,
                "prompt_simhash": _simhash(rng),
                "temperature": 0.7,
            }
        )
        t += rng.expovariate(per_hour / 3600.0)
        i += 1
    return out


def ci_suite(rng: random.Random, key: str, t0: float, t1: float) -> list[dict]:
    items = [(_simhash(rng), rng.randint(100, 900), rng.choice(("code", "other"))) for _ in range(20)]
    out = []
    run = t0
    i = 0
    while run < t1:
        t = run
        for h, p, topic in items:
            out.append(
                {
                    "event_id": f"{key}-{i}",
                    "ts": round(t, 3),
                    "api_key": key,
                    "prompt_tokens": p,
                    "completion_tokens": rng.randint(20, 120),
                    "status": 200,
                    "topic": topic,
                    "cot_request": False,
                    "prompt_simhash": h,
                    "temperature": 0.0,
                }
            )
            t += 1.0
            i += 1
        run += 900.0
    return out


def mixed_stream(seed: int = 7, hours: float = 2.0, drifter: bool = True) -> list[dict]:
    """Events of several keys, sorted by time."""
    rng = random.Random(seed)
    t1 = T0 + hours * 3600.0
    ev: list[dict] = []
    ev += harvester(rng, "k_harvest", T0 + 600.0, t1)
    for j in range(12):
        ev += human(rng, f"k_human{j}", T0, t1)
    ev += ci_suite(rng, "k_ci", T0, t1)
    if drifter:
        mid = T0 + hours * 1800.0
        ev += [e for e in human(rng, "k_drift", T0, t1, per_hour=30.0) if e["ts"] < mid]
        ev += harvester(rng, "k_drift", mid, t1, gap=6.0)
    ev.sort(key=lambda e: (e["ts"], e["api_key"], e["event_id"]))
    return ev
