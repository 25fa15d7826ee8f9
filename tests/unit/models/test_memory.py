"""Bounded memory: <= 2 KiB resident per tracked key, idle keys evicted, bounded buffers."""

from __future__ import annotations

import tracemalloc

from models.engine import DetectionCore, DetectorConfig

T0 = 1_767_571_200.0


def _event(i: int, key: str, ts: float) -> dict:
    return {
        "event_id": f"e{i}",
        "ts": ts,
        "api_key": key,
        "prompt_tokens": 100 + i % 50,
        "completion_tokens": 300 + i % 700,
        "status": 200,
        "topic": ("code", "math", "chat")[i % 3],
        "cot_request": i % 2 == 0,
        "prompt_simhash": format((i * 0x9E3779B97F4A7C15) & ((1 << 64) - 1), "016x"),
        "turn": 1,
        "temperature": 0.7,
    }


def test_resident_bytes_per_key_at_10k_keys():
    core = DetectionCore()
    n = 10_000
    # warm every code path once so lazily built objects are not charged to the keys
    for i in range(50):
        core.process(_event(i, "warm", T0 + i), None)
    core.drain_member_snapshots()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for r in range(3):
        for j in range(n):
            core.process(_event(j + r, f"ak_{j:016x}", T0 + 100 + r * 40 + j * 0.001), None)
    core.drain_member_snapshots()
    core.clear_dirty()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_key = grown / n
    assert per_key <= 2048, f"{per_key:.0f} bytes per key"
    st = core.stats()
    assert st["tracked_keys"] == n + 1
    assert st["state_bytes"] / st["tracked_keys"] <= 2048


def test_idle_keys_are_evicted_and_counted():
    core = DetectionCore(DetectorConfig(idle_ttl=600.0))
    for j in range(1000):
        core.process(_event(j, f"k{j}", T0 + j * 0.01), j)
    core.advance(T0 + 60)
    assert core.stats()["tracked_keys"] == 1000
    core.advance(T0 + 3600)
    st = core.stats()
    assert st["tracked_keys"] == 0 and st["evicted_total"] == 1000


def test_memory_growth_is_bounded_for_one_busy_key():
    core = DetectionCore()
    for i in range(2000):
        core.process(_event(i, "busy", T0 + i), i)
    size = len(core.export_key("busy"))
    for i in range(2000, 20000):
        core.process(_event(i, "busy", T0 + i), i)
    core.drain_member_snapshots()
    assert len(core.export_key("busy")) <= max(size, 900)
    assert core.stats()["tracked_keys"] == 1


def test_max_keys_caps_a_flood_of_fresh_keys_inside_the_idle_ttl():
    from models.engine import DetectionCore, DetectorConfig

    core = DetectionCore(DetectorConfig(max_keys=1000))
    t = 1767571200.0
    for i in range(5000):
        t += 0.01   # 5000 keys in 50 s: far inside the 6 h idle TTL
        core.process({"event_id": str(i), "ts": t, "api_key": f"flood-{i}", "prompt_tokens": 5,
                      "completion_tokens": 5, "status": 200})
        if i % 100 == 99:
            core.advance(t)
            assert core.stats()["tracked_keys"] <= 1000
    assert core.stats()["evicted_total"] >= 4000
    # the newest keys are the ones kept
    assert core.has_key("flood-4999") and not core.has_key("flood-0")
