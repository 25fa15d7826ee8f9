"""DetectionCore: the contract the drivers rely on, and the behaviour on-call would notice."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import subprocess
import sys

import orjson
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib
from detection_streams import T0, ci_suite, harvester, human, mixed_stream  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from models import features as F  # noqa: E402
from models.engine import MODEL_VERSION, DetectionCore, DetectorConfig  # noqa: E402
from schemas import validate_alert  # noqa: E402


def run(core: DetectionCore, events, start_seq: int = 0, advance_every: float = 5.0):
    alerts = []
    next_adv = None
    for i, ev in enumerate(events):
        if next_adv is None:
            next_adv = ev["ts"] + advance_every
        elif ev["ts"] >= next_adv:
            alerts += core.advance(ev["ts"])
            next_adv = ev["ts"] + advance_every
        alerts += core.process(ev, start_seq + i)
    return alerts


def strip(alerts):
    return [orjson.dumps({k: v for k, v in a.items() if k != "detected_at"}) for a in alerts]


def direction_vector(**kw):
    """A direction vector in FEATURES order: the named features set, the others 0."""
    v = [0.0] * len(F.FEATURES)
    for n, x in kw.items():
        v[F.FEATURES.index(n)] = x
    return v


@pytest.fixture(scope="module")
def stream():
    return mixed_stream(seed=7, hours=2.0)


@pytest.fixture(scope="module")
def baseline_run(stream):
    core = DetectionCore()
    alerts = run(core, stream)
    alerts += core.advance(stream[-1]["ts"] + 10 * 3600)
    return core, alerts


# -- alerts ------------------------------------------------------------------------------------


def test_alerts_satisfy_the_contract(baseline_run):
    _, alerts = baseline_run
    assert alerts, "the synthetic harvester must be detected"
    for a in alerts:
        validate_alert(a)
        assert a["detected_at"] == 0.0
        assert a["model_version"] == MODEL_VERSION
        assert a["related_entities"] == [] and a["related_total"] == 0
        assert all(r["explanation"] for r in a["reasons"])


def test_harvester_and_drifter_fire_humans_and_ci_do_not(baseline_run):
    _, alerts = baseline_run
    firing = {a["entity"] for a in alerts if a["status"] == "firing"}
    assert "k_harvest" in firing
    assert "k_drift" in firing
    assert not any(k.startswith("k_human") for k in firing)
    assert "k_ci" not in firing


def test_drifter_fires_only_after_it_drifts(baseline_run, stream):
    _, alerts = baseline_run
    mid = T0 + 3600.0
    first = min(a["event_ts"] for a in alerts if a["entity"] == "k_drift" and a["status"] == "firing")
    assert first >= mid


def test_episode_dedup_one_id_and_one_resolve(baseline_run):
    _, alerts = baseline_run
    mine = [a for a in alerts if a["entity"] == "k_harvest"]
    ids = {a["alert_id"] for a in mine}
    assert len(ids) == 1, "firing, escalations and resolved of one episode share the id"
    sev_order = {"info": 1, "warning": 2, "critical": 3}
    firing = [a for a in mine if a["status"] == "firing"]
    # firing only on open and on escalation: strictly increasing severity
    assert [sev_order[a["severity"]] for a in firing] == sorted({sev_order[a["severity"]] for a in firing})
    assert [a["status"] for a in mine].count("resolved") == 1
    assert mine[-1]["status"] == "resolved"


def test_reasons_read_like_on_call_lines(baseline_run):
    _, alerts = baseline_run
    a = next(a for a in alerts if a["entity"] == "k_harvest" and a["status"] == "firing")
    text = " ".join(r["explanation"] for r in a["reasons"])
    assert "vs population" in text
    assert sum(r["contribution"] for r in a["reasons"]) <= 1.0 + 1e-6


def test_a_reason_the_key_shares_with_the_population_gives_way_to_one_that_stands_out(stream):
    core = DetectionCore()
    run(core, stream)
    ks = core.keys["k_harvest"]
    vec, _, contrib = core._direction(ks)
    before = core._reasons(ks, vec, contrib, 0)
    top = F.FEATURES.index(before[0][0])
    assert top not in (F.FEATURES.index("rate"), F.FEATURES.index("output_ratio"))
    pop = copy.deepcopy(core.population)
    core.population.means[top] = vec[top]  # the population now does what this key does
    try:
        after = core._reasons(ks, vec, contrib, 0)
    finally:
        core.population = pop
    names = [r[0] for r in after]
    assert before[0][0] not in names
    assert names[:3] == [r[0] for r in before[1:4]]  # the others move up, still by contribution
    assert all(o > b for n, o, b, _ in after if n not in ("fabricated_followups", "drift_score"))


# -- determinism and state transfer ------------------------------------------------------------


def test_split_export_import_gives_identical_alerts(stream, baseline_run):
    _, full = baseline_run
    for cut in random.Random(3).sample(range(100, len(stream) - 100), 3):
        a = DetectionCore()
        out = run(a, stream[:cut])
        blobs = {k: a.export_key(k) for k in sorted(a.keys)}
        shared = a.export_shared()
        b = DetectionCore()
        b.import_shared(shared)
        for k, blob in blobs.items():
            b.import_key(k, blob)
        # the driver's advance cadence continues from the restored event time
        out += run(b, stream[cut:], start_seq=cut)
        out += b.advance(stream[-1]["ts"] + 10 * 3600)
        assert strip(out) == strip(full), f"restored run differs (cut at {cut})"


def test_redelivered_events_change_nothing(stream, baseline_run):
    _, full = baseline_run
    core = DetectionCore()
    out = run(core, stream[:1500])
    before = {k: core.export_key(k) for k in core.keys}
    out += run(core, stream[1000:1500], start_seq=1000)  # redelivery after a crash
    assert {k: core.export_key(k) for k in core.keys} == before
    assert core.stats()["duplicates_total"] == 500
    out += run(core, stream[1500:], start_seq=1500)
    out += core.advance(stream[-1]["ts"] + 10 * 3600)
    assert strip(out) == strip(full)


def test_same_alerts_under_another_hash_seed():
    code = (  # noqa: UP031 - a %r template reads best for a subprocess snippet
        "import sys, orjson; sys.path[:0] = [%r, %r];"
        "from detection_streams import mixed_stream; from models.engine import DetectionCore;"
        "c = DetectionCore(); out = [];"
        "[out.extend(c.process(e, i)) for i, e in enumerate(mixed_stream(seed=11, hours=1.5))];"
        "out += c.advance(1e12); sys.stdout.buffer.write(orjson.dumps(out))"
    ) % (REPO, os.path.dirname(os.path.abspath(__file__)))
    outs = []
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 2


def test_alert_ids_deterministic_and_per_episode():
    from models.policy import alert_id

    assert alert_id("api_key", "k", "key_scrape", 1) == alert_id("api_key", "k", "key_scrape", 1)
    assert alert_id("api_key", "k", "key_scrape", 1) != alert_id("api_key", "k", "key_scrape", 2)


def test_second_episode_gets_a_new_id():
    rng = random.Random(5)
    ev = harvester(rng, "k", T0, T0 + 1800) + harvester(rng, "k", T0 + 4 * 3600, T0 + 4 * 3600 + 1800)
    core = DetectionCore()
    out = run(core, ev)
    out += core.advance(T0 + 10 * 3600)
    ids = [a["alert_id"] for a in out if a["status"] == "firing"]
    resolved = [a["alert_id"] for a in out if a["status"] == "resolved"]
    assert len(set(ids)) == 2 and len(resolved) == 2


# -- robustness --------------------------------------------------------------------------------


def test_input_dict_is_not_aliased_or_mutated(stream):
    core = DetectionCore()
    evs = copy.deepcopy(stream[:400])
    snapshot = copy.deepcopy(evs)
    run(core, evs)
    assert evs == snapshot
    snaps = core.drain_member_snapshots()
    assert snaps and all(s["groups"] is not None for s in snaps)
    evs[0]["api_key"] = "mutated"
    assert "mutated" not in core.keys


def test_missing_optional_fields_degrade_without_crashing():
    rng = random.Random(1)
    full = harvester(rng, "k", T0, T0 + 3600)
    required = ("event_id", "ts", "api_key", "prompt_tokens", "completion_tokens", "status")
    bare = [{k: e[k] for k in required} for e in full]
    core = DetectionCore()
    out = run(core, bare)
    for a in out:
        validate_alert(a)
    # and each optional field missing on its own
    for drop in ("topic", "cot_request", "prompt_simhash", "turn", "temperature", "logprobs"):
        core = DetectionCore()
        out = run(core, [{k: v for k, v in e.items() if k != drop} for e in full])
        assert any(a["status"] == "firing" for a in out), f"harvester lost without {drop}"


def test_missing_fields_are_not_suspicious():
    rng = random.Random(2)
    required = ("event_id", "ts", "api_key", "prompt_tokens", "completion_tokens", "status")
    evs = []
    for j in range(20):
        evs += [{k: e[k] for k in required} for e in human(rng, f"h{j}", T0, T0 + 4 * 3600, 20)]
    evs.sort(key=lambda e: e["ts"])
    assert [a for a in run(DetectionCore(), evs) if a["status"] == "firing"] == []


def test_weird_values_do_not_crash():
    core = DetectionCore()
    base = {"event_id": "e", "api_key": "k", "prompt_tokens": 0, "completion_tokens": 0, "status": 500}
    for i, ts in enumerate([T0, T0, T0 - 5000, T0 + 1e6, 0.0, T0 + 1e6 + 0.001]):
        core.process(dict(base, ts=ts, n=1000, temperature=100.0, turn=10**6, prompt_simhash="0" * 16), i)
    assert core.has_key("k")


# -- direction ---------------------------------------------------------------------------------


def test_going_quiet_or_growing_as_a_chat_app_does_not_fire():
    rng = random.Random(9)
    evs = []
    for j in range(10):
        evs += human(rng, f"h{j}", T0, T0 + 3 * 3600, per_hour=10)
    # a chat app that grows 20x in volume, still human-shaped
    evs += human(rng, "grow", T0, T0 + 3600, per_hour=20)
    evs += human(rng, "grow", T0 + 3600, T0 + 3 * 3600, per_hour=400)
    # a busy key that goes quiet
    evs += human(rng, "quiet", T0, T0 + 3600, per_hour=300)
    evs += human(rng, "quiet", T0 + 3600, T0 + 3 * 3600, per_hour=1)
    evs.sort(key=lambda e: (e["ts"], e["api_key"]))
    fired = {a["entity"] for a in run(DetectionCore(), evs) if a["status"] == "firing"}
    assert not fired


def test_ci_suite_repeats_are_not_harvesting():
    rng = random.Random(4)
    evs = ci_suite(rng, "ci", T0, T0 + 6 * 3600)
    assert [a for a in run(DetectionCore(), evs) if a["status"] == "firing"] == []


def test_direction_table_covers_every_feature():
    assert set(F.DIRECTION) == set(F.FEATURES)


# -- feedback ----------------------------------------------------------------------------------


class FakeFeedback:
    def __init__(self, verdicts):
        self.verdicts = verdicts
        self.calls = 0

    def verdict(self, entity_type, entity, ts):
        self.calls += 1
        v = self.verdicts.get(entity)
        if v is None:
            return None
        kind, since = v
        return kind if ts >= since else None


def test_allowlisted_key_is_suppressed(stream):
    fb = FakeFeedback({"k_harvest": ("allowlisted", 0.0)})
    out = run(DetectionCore(feedback=fb), stream)
    assert not [a for a in out if a["entity"] == "k_harvest"]
    assert fb.calls > 0


def test_false_positive_closes_quietly_and_raises_the_bar(stream, baseline_run):
    _, full = baseline_run
    first = min(a["event_ts"] for a in full if a["entity"] == "k_harvest")
    fb = FakeFeedback({"k_harvest": ("false_positive", first + 60.0)})
    core = DetectionCore(feedback=fb)
    out = run(core, stream)
    mine = [a for a in out if a["entity"] == "k_harvest"]
    assert mine and mine[0]["status"] == "firing"
    assert all(a["status"] != "resolved" for a in mine), "closed quietly"
    assert core.stats()["open_episodes"] == len({a["entity"] for a in out if a["entity"] != "k_harvest"} & set(core._open))
    later = [a for a in mine if a["event_ts"] > first + 60.0 and a["status"] == "firing"]
    for a in later:  # only a clearly higher score fires again
        assert a["score"] >= mine[0]["score"] + core.config.fp_penalty - 1e-9


def test_confirmed_key_fires_at_least_warning(stream):
    fb = FakeFeedback({"k_harvest": ("confirmed", 0.0)})
    out = run(DetectionCore(feedback=fb), stream)
    firing = [a for a in out if a["entity"] == "k_harvest" and a["status"] == "firing"]
    assert firing and all(a["severity"] in ("warning", "critical") for a in firing)


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"share_alpha": 0.0},
        {"warmup_events": -1},
        {"score_mix": (0.5, 0.5, 0.5)},
        {"threshold_floor": 0.9, "threshold_ceiling": 0.5},
        {"idle_ttl": float("nan")},
        {"dup_bits": 30, "template_bits": 20},
        {"prior_relief": 1.5},
        {"prior_relief": -0.1},
        {"hst_warm_windows": 0},
    ],
)
def test_config_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        DetectorConfig(**bad)


def test_config_is_frozen():
    cfg = DetectorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.warmup_events = 3  # type: ignore[misc]


# -- property: any valid event sequence ------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_event = st.fixed_dictionaries(
    {
        "event_id": st.just("e"),
        "ts": st.floats(min_value=0.0, max_value=32503680000.0, allow_nan=False),
        "api_key": st.sampled_from(["a", "b", "c"]),
        "prompt_tokens": st.integers(0, 100_000_000),
        "completion_tokens": st.integers(0, 100_000_000),
        "status": st.integers(100, 599),
    },
    optional={
        "turn": st.integers(1, 1_000_000),
        "n": st.integers(1, 1000),
        "temperature": st.floats(0.0, 100.0, allow_nan=False),
        "topic": st.sampled_from(["chat", "writing", "code", "math", "science", "reasoning", "other"]),
        "cot_request": st.booleans(),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 1000),
        "stream": st.booleans(),
        "prompt_simhash": st.integers(0, (1 << 64) - 1).map(lambda h: format(h, "016x")),
        "client_ip": st.sampled_from(["10.0.0.1", "2001:db8::1", "not-an-ip"]),
        "asn": st.integers(0, 4294967295),
    },
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_event, min_size=1, max_size=80), st.floats(0.0, 1e11, allow_nan=False))
def test_any_valid_events_never_crash_and_alerts_stay_valid(events, now):
    core = DetectionCore(DetectorConfig(warmup_events=1, warmup_seconds=0.0, eval_every_events=1))
    out = []
    for i, e in enumerate(events):
        out += core.process(e, i)
    out += core.advance(now)
    for a in out:
        validate_alert(a)
    for s in core.drain_member_snapshots():
        assert all(v == v for v in s["features"].values())
    for k in list(core.keys):
        DetectionCore().import_key(k, core.export_key(k))


def test_machine_like_arrival_relieves_unknown_content_but_content_stays_necessary():
    from models.features import FEATURES
    from models.policy import scrape_score

    def vec(**kw):
        v = [float("nan") if n in ("cot_share", "capability_share", "capability_breadth",
                                   "single_turn_share", "novelty", "template_share")
             else 0.0 for n in FEATURES]
        for n, x in kw.items():
            v[FEATURES.index(n)] = x
        return v

    bot = dict(timing_regularity=0.8, duty_cycle=1.0, rate=0.9, throttled_share=0.3)
    lean_harvester = vec(harvest_share=0.6, output_ratio=0.4, **bot)
    lean_batch = vec(harvest_share=0.0, output_ratio=0.0, **bot)
    mix = (0.45, 0.35, 0.2)
    off = scrape_score(lean_harvester, mix, 0.5, 0.0, 0.0)[0]
    on = scrape_score(lean_harvester, mix, 0.5, 0.0, 1.0)[0]
    assert on > off * 1.1
    assert scrape_score(lean_batch, mix, 0.5, 0.0, 1.0)[0] == 0.0
    # A key at human times that sweeps temperatures is relieved as well (key-0.17); one at
    # human times without extraction tells keeps the whole penalty.
    sweeper = vec(harvest_share=0.6, output_ratio=0.4, temperature_spread=0.6)
    person = vec(harvest_share=0.6, output_ratio=0.4)
    relieved = scrape_score(sweeper, mix, 0.5, 0.0, 1.0)[0] / scrape_score(sweeper, mix, 0.5, 0.0, 0.0)[0]
    assert relieved > 1.1
    assert scrape_score(person, mix, 0.5, 0.0, 1.0)[0] == pytest.approx(scrape_score(person, mix, 0.5, 0.0, 0.0)[0])
    assert scrape_score(vec(temperature_spread=1.0, sampling_share=1.0), mix, 0.5, 0.0, 1.0)[0] == 0.0


def test_whole_sampled_answers_are_an_extraction_tell_but_greedy_or_streamed_ones_are_not():
    from models.features import FEATURES
    from models.policy import scrape_score

    vec = direction_vector

    # A key that asks like a reasoning product: same content for all four below.
    content = dict(harvest_share=0.5, cot_share=0.5, capability_share=0.8, capability_breadth=0.3,
                   single_turn_share=0.7, output_ratio=0.25, novelty=0.9)
    mix, cw = (0.45, 0.35, 0.2), DetectorConfig().collect_weight
    whole_sampled = vec(**content, sampled_decoding=1.0, non_streaming_share=1.0)
    streamed = vec(**content, sampled_decoding=1.0, non_streaming_share=0.0)
    greedy_whole = vec(**content, sampled_decoding=0.0, non_streaming_share=1.0)
    no_stream_field = vec(**content, sampled_decoding=1.0, non_streaming_share=float("nan"))

    def score(v, w=cw):
        return scrape_score(v, mix, 0.5, 0.0, 1.0, w)

    s, contrib = score(whole_sampled)
    assert s > 1.25 * score(whole_sampled, 0.0)[0]
    assert max(range(len(FEATURES)), key=lambda i: contrib[i]) != FEATURES.index("sampling_share")
    assert contrib[FEATURES.index("non_streaming_share")] > 0.1 and abs(sum(contrib) - 1.0) < 1e-9
    # A product streams; an eval harness or batch job decodes greedily; a gateway without the
    # field tells nothing: none of them gains.
    for v in (streamed, greedy_whole, no_stream_field):
        assert score(v)[0] == pytest.approx(score(v, 0.0)[0])
    # Content stays necessary: whole sampled answers to ordinary chat score nothing.
    assert score(vec(sampled_decoding=1.0, non_streaming_share=1.0, novelty=1.0))[0] == 0.0


def test_extraction_tells_relieve_the_small_sample_shrinkage_but_not_the_content():
    from models.features import FEATURES, apply_event, direction_features
    from models.keymodel import KeyState

    def ev(i, sampling, long_answer=True):
        e = {"event_id": str(i), "ts": T0 + 120.0 * i, "api_key": "k", "status": 200,
             "prompt_tokens": 150, "completion_tokens": 1500 if long_answer else 60,
             "topic": "math" if long_answer else "chat", "turn": 1 if long_answer else 2}
        if sampling:
            e.update(logprobs=True, temperature=(0.1, 0.8, 0.3, 1.0, 0.5)[i % 5])
        else:
            e["temperature"] = 0.7
        return e

    prior = [0.05] * len(FEATURES)  # a population that rarely harvests
    h, s1 = FEATURES.index("harvest_share"), FEATURES.index("single_turn_share")
    plain, sampler, chatter = KeyState(), KeyState(), KeyState()
    for i in range(5):
        apply_event(plain, ev(i, False), 1 / 32, 0, 20, 96)
        apply_event(sampler, ev(i, True), 1 / 32, 0, 20, 96)
        apply_event(chatter, ev(i, True, long_answer=False), 1 / 32, 0, 20, 96)

    def vec(ks, relief):
        return direction_features(ks, 0.0, prior, 3.0, prior_relief=relief)

    # Five harvest-looking requests without sampling options stay shrunk (5 of 8 the key's own)
    # whatever the relief; with logprobs and a temperature sweep they count almost at face value.
    assert vec(plain, 1.0)[h] == vec(plain, 0.0)[h] == pytest.approx((5 * 1.0 + 3 * 0.05) / 8)
    assert vec(sampler, 0.0)[h] == pytest.approx(vec(plain, 0.0)[h])
    assert vec(sampler, 1.0)[h] > 0.9 and vec(sampler, 0.5)[h] < vec(sampler, 1.0)[h]
    # The relief brings the key's own shares forward; it does not make harvesting out of chat.
    chat = vec(chatter, 1.0)
    assert chat[h] < 0.05 and chat[s1] < 0.05


def test_short_window_raises_harvest_share_after_a_drift_but_never_lowers_it():
    from models.features import FEATURES, apply_event, direction_features
    from models.keymodel import KeyState

    def ev(i, harvest):
        return {"event_id": str(i), "ts": T0 + 10.0 * i, "api_key": "k", "status": 200,
                "prompt_tokens": 40, "completion_tokens": 900 if harvest else 30,
                "topic": "math" if harvest else "chat", "cot_request": harvest, "turn": 1 if harvest else 3}

    h = FEATURES.index("harvest_share")
    drifted, harvester = KeyState(), KeyState()
    for i in range(200):
        apply_event(drifted, ev(i, i >= 194), 1 / 32, 0, 20, 96)
        apply_event(harvester, ev(i, i < 194), 1 / 32, 0, 20, 96)
    slow = direction_features(drifted, 0.0)[h]
    fast = direction_features(drifted, 0.0, fast_weight=1.0, fast_z=1.5)[h]
    assert slow < 0.2 < 0.4 < fast  # six harvests after a long benign history show at once
    c, s1 = FEATURES.index("cot_share"), FEATURES.index("single_turn_share")
    both = direction_features(drifted, 0.0, fast_weight=1.0, fast_z=1.5, fast_shares=True)
    plain = direction_features(drifted, 0.0)
    assert both[c] > plain[c] + 0.2 and both[s1] > plain[s1] + 0.2
    # a harvester pausing for six chat requests keeps its long share (upward only)
    assert direction_features(harvester, 0.0, fast_weight=1.0)[h] == direction_features(harvester, 0.0)[h]


def test_a_sampled_long_answer_is_a_harvest_on_any_topic_a_plain_one_only_on_capabilities():
    from models.features import FEATURES, apply_event, direction_features
    from models.keymodel import KeyState

    def ev(i, topic, **kw):
        return {"event_id": str(i), "ts": T0 + 10.0 * i, "api_key": "k", "status": 200,
                "prompt_tokens": 60, "completion_tokens": 900, "topic": topic, **kw}

    h = FEATURES.index("harvest_share")

    def share(**kw):
        ks = KeyState()
        for i in range(64):
            apply_event(ks, ev(i, **kw), 1 / 32, 0, 20, 96)
        return direction_features(ks, 0.0)[h]

    assert share(topic="math") == pytest.approx(1.0)
    # long chat answers, one at a time: a chat or writing app, not a harvest
    assert share(topic="chat") == 0.0
    assert share(topic="writing", temperature=1.0) == 0.0
    # the same answers asked for as n samples or with logprobs harvest the distribution
    for kw in ({"n": 3, "completion_tokens": 2700}, {"logprobs": True}, {"top_logprobs": 5}):
        assert share(topic="chat", **kw) == pytest.approx(1.0), kw
    # n samples are compared one answer at a time: three short answers are not a harvest
    assert share(topic="chat", n=3, completion_tokens=120) == 0.0


def test_a_bare_request_is_one_shot_once_the_key_has_reported_turns():
    from models.features import FEATURES, apply_event, direction_features
    from models.keymodel import KeyState

    def ev(i, **kw):
        return {"event_id": str(i), "ts": T0 + 10.0 * i, "api_key": "k", "status": 200,
                "prompt_tokens": 400, "completion_tokens": 200, **kw}

    st = FEATURES.index("single_turn_share")
    # an app holding conversations (turns 1-4), then a script sending bare requests
    app = KeyState()
    for i in range(64):
        apply_event(app, ev(i, conversation_id=f"c{i // 4}", turn=i % 4 + 1), 1 / 32, 0, 20, 96)
    before = direction_features(app, 0.0)[st]
    for i in range(64, 96):
        apply_event(app, ev(i), 1 / 32, 0, 20, 96)
    assert before == pytest.approx(0.25, abs=0.05) and direction_features(app, 0.0)[st] > 0.6
    # a request inside a conversation whose turn the gateway left out stays unknown
    inside = KeyState()
    for i in range(8):
        apply_event(inside, ev(i, conversation_id="c", turn=i + 2), 1 / 32, 0, 20, 96)
    for i in range(8, 40):
        apply_event(inside, ev(i, conversation_id="c"), 1 / 32, 0, 20, 96)
    assert direction_features(inside, 0.0)[st] == 0.0
    # a gateway that never reports turns: unknown, never suspicious
    bare = KeyState()
    for i in range(40):
        apply_event(bare, ev(i), 1 / 32, 0, 20, 96)
    assert math.isnan(direction_features(bare, 0.0)[st])


def _evaluations(core, events):
    """Process ``events`` in order; yield ``(event, key state)`` after each that evaluated its key."""
    for i, e in enumerate(events):
        ks = core.keys.get(e["api_key"])
        before = ks.evals if ks is not None else 0
        core.process(e, i)
        ks = core.keys[e["api_key"]]
        if ks.evals > before:
            yield e, ks


def _product(rng, key, t0, t1, per_hour, **kw):
    """Capability questions with CoT and long answers at bursty human times: a reasoning
    product's traffic, or with ``kw`` (logprobs, no streaming) a harvester's."""
    out, t, i = [], t0, 0
    while t < t1:
        t += rng.expovariate(per_hour / 3600.0) * rng.choice((0.2, 1.8))
        out.append({"event_id": f"{key}-{i}", "ts": round(t, 3), "api_key": key, "status": 200,
                    "prompt_tokens": rng.randint(60, 300), "completion_tokens": rng.randint(900, 2500),
                    "turn": 1, "topic": ("code", "math", "science", "reasoning")[i % 4],
                    "cot_request": rng.random() < 0.6, "temperature": 0.7, "stream": True,
                    "prompt_simhash": format(rng.getrandbits(64), "016x"), **kw})
        i += 1
    return out


def test_a_new_keys_baseline_starts_from_its_own_warm_scores():
    """A key that behaves the same from its first request has no drift to show: its baseline
    averages its warm scores (not the shrunk score of its first two requests, decayed slowly),
    so the score it reaches as its small-sample shrinkage fades is not a rise above it."""
    rng = random.Random(5)
    ev = []
    for j in range(8):
        ev += human(rng, f"h{j}", T0, T0 + 2 * 3600.0, per_hour=20.0)
    ev += _product(rng, "k_product", T0, T0 + 2 * 3600.0, 20.0)
    ev.sort(key=lambda e: (e["ts"], e["api_key"]))
    core = DetectionCore()
    scores = [core._direction(ks)[1] for e, ks in _evaluations(core, ev) if e["api_key"] == "k_product"]
    ks = core.keys["k_product"]
    assert 20 <= ks.evals and scores[0] < scores[-1] - 0.05  # the score rose as shrinkage faded
    assert abs(ks.f[F.F_BASE] - sum(scores[-10:]) / 10) < 0.05  # the baseline followed it
    assert not any(a["detector"] == "key_drift" for a in run(DetectionCore(), ev))


def _boost_ratios(monkeypatch, cfg, events, keys=None, min_s_dir=0.05):
    """Replay ``events`` with every key a strong outlier to the population model (hst 0.9);
    return each key's last ``score / s_dir`` (the boost it got), for ``keys`` or all."""
    import models.engine as E

    core = DetectionCore(cfg)
    learn = core.population.score_then_learn
    monkeypatch.setattr(core.population, "score_then_learn", lambda v, h, ln: (learn(v, h, ln), 0.9)[1])
    last, got = {}, {}
    real = E.scrape_score

    def spy(*a):
        out = real(*a)
        last["s_dir"] = out[0]
        return out

    monkeypatch.setattr(E, "scrape_score", spy)
    for e, ks in _evaluations(core, events):
        if (keys is None or e["api_key"] in keys) and last["s_dir"] > min_s_dir:
            got.setdefault(e["api_key"], []).append(ks.f[F.F_SCORE] / last["s_dir"])
    monkeypatch.setattr(E, "scrape_score", real)
    return {k: v[-1] for k, v in got.items()}


def test_population_outlier_boost_needs_evidence_beyond_content(monkeypatch):
    """A key the outlier model finds unusual is boosted only in proportion to its evidence
    outside content: a streaming product at human times gets no boost for asking unusual
    questions; the same content with logprobs and whole answers gets all of it."""
    rng = random.Random(3)
    t1 = T0 + 3 * 3600.0
    ev = []
    for j in range(8):
        ev += human(rng, f"h{j}", T0, t1, per_hour=20.0)
    ev += _product(rng, "k_product", T0, t1, 20.0)
    ev += _product(rng, "k_sampler", T0, t1, 20.0, logprobs=True, stream=False)
    ev.sort(key=lambda e: (e["ts"], e["api_key"]))

    def ratios(cfg):
        return _boost_ratios(monkeypatch, cfg, ev)

    full = 1.0 + 2 * 0.25 * (0.9 - 0.5)  # the boost without the support gate
    gated = ratios(DetectorConfig())
    ungated = ratios(DetectorConfig(population_support=0.0))
    assert ungated["k_product"] == pytest.approx(full) and ungated["k_sampler"] == pytest.approx(full)
    # no evidence beyond content: (almost) no boost; random SimHashes now and then fall within
    # the template distance of a recent prompt, a template share of a few percent
    assert gated["k_product"] - 1.0 < 0.1 * (full - 1.0)
    assert gated["k_sampler"] == pytest.approx(full)  # logprobs and whole answers: all of it


def test_outlier_boost_needs_long_answers(monkeypatch):
    """key-0.21: an outlier that takes none of the model's long answers is not boosted. A RAG
    job asking for logprobs on short replies to long capability prompts, without streaming, has
    every extraction tell a harvester has and is unusual; what it does not do is collect
    answers. The same requests with long answers (a harvester) keep the whole boost, and so
    does a distiller of a chat dataset (long answers, no capability topic: no harvest share,
    but its output ratio)."""
    rng = random.Random(11)
    t1 = T0 + 3 * 3600.0
    ev = []
    for j in range(8):
        ev += human(rng, f"h{j}", T0, t1, per_hour=20.0)
    rag = _product(rng, "k_rag", T0, t1, 20.0, logprobs=True, stream=False)
    for e in rag:  # long retrieved contexts, short answers
        e["prompt_tokens"], e["completion_tokens"] = rng.randint(2000, 6000), rng.randint(10, 80)
    chat = _product(rng, "k_chat", T0, t1, 20.0, stream=False)  # whole sampled answers
    for e in chat:
        e["topic"] = "writing"
    ev += rag + chat + _product(rng, "k_sampler", T0, t1, 20.0, logprobs=True, stream=False)
    ev.sort(key=lambda e: (e["ts"], e["api_key"]))

    def ratios(cfg):
        return _boost_ratios(monkeypatch, cfg, ev, ("k_rag", "k_chat", "k_sampler"), 0.02)

    full = 1.0 + 2 * 0.25 * (0.9 - 0.5)
    gated, off = ratios(DetectorConfig()), ratios(DetectorConfig(population_harvest=0.0))
    assert off["k_rag"] == pytest.approx(full)  # without the floor, its extraction tells carry it
    # replies about 1% of the prompts: about a tenth of the boost (linear below 10%)
    assert gated["k_rag"] - 1.0 < 0.15 * (full - 1.0)
    assert gated["k_sampler"] == pytest.approx(full) and gated["k_chat"] == pytest.approx(full)
    with pytest.raises(ValueError, match="population_harvest"):
        DetectorConfig(population_harvest=1.5)


def test_short_ratio_window_needs_a_harvest_rise_a_benign_history_and_extraction():
    from models import features as Fm
    from models.features import FEATURES, apply_event, direction_features
    from models.keymodel import KeyState
    from models.policy import EXTRACTION

    def ev(i, harvest, logprobs):
        # a coding agent (huge contexts, short answers) that turns into a harvester
        return {"event_id": str(i), "ts": T0 + 10.0 * i, "api_key": "k", "status": 200,
                "prompt_tokens": 60 if harvest else 6000, "completion_tokens": 900 if harvest else 200,
                "topic": "math" if harvest else "code", "logprobs": logprobs, "temperature": 0.7}

    r = FEATURES.index("output_ratio")
    sampler, plain = KeyState(), KeyState()
    for i in range(200):
        apply_event(sampler, ev(i, i >= 194, True), 1 / 32, 0, 20, 96, 0.2)
        apply_event(plain, ev(i, i >= 194, False), 1 / 32, 0, 20, 96, 0.2)
    kw = dict(fast_weight=1.0, fast_alpha=0.2, fast_z=1.5)
    before = direction_features(sampler, 0.0, **kw)[r]
    raised = direction_features(sampler, 0.0, fast_ratio=True, **kw)[r]
    assert before == 0.0 and raised > 0.3  # six harvests: the recent answers are long
    # no extraction tell (no logprobs, one temperature): the long-run ratio stands
    assert direction_features(plain, 0.0, fast_ratio=True, **kw)[r] == direction_features(plain, 0.0, **kw)[r]
    # a key whose own history was already near the line gains nothing from its bursts
    assert direction_features(sampler, 0.0, fast_ratio=True, benign_base=False, **kw)[r] == before
    # the extraction weights are the score's
    assert Fm._EXTRACTION_W == tuple(w for _, w in EXTRACTION)


def test_change_point_sees_a_short_run_after_a_benign_history_not_a_reasoning_apps_streak():
    from models import features as Fm
    from models.features import FEATURES, apply_event, direction_features
    from models.keymodel import KeyState

    def ev(i, harvest):
        return {"event_id": str(i), "ts": T0 + 10.0 * i, "api_key": "k", "status": 200,
                "prompt_tokens": 40, "completion_tokens": 900 if harvest else 30,
                "topic": "math" if harvest else "chat", "cot_request": harvest, "turn": 1 if harvest else 3}

    h, c, s1 = (FEATURES.index(n) for n in ("harvest_share", "cot_share", "single_turn_share"))
    kw = dict(fast_weight=1.0, fast_alpha=0.2, fast_z=1.5, fast_shares=True)
    drifted, app = KeyState(), KeyState()
    for i in range(200):
        apply_event(drifted, ev(i, i >= 196), 1 / 32, 0, 20, 96, 0.2)  # benign, then 4 harvests
        apply_event(app, ev(i, i % 2 == 0 or i >= 192), 1 / 32, 0, 20, 96, 0.2)  # half, then 8 in a row
    window = direction_features(drifted, 0.0, **kw)
    changed = direction_features(drifted, 0.0, change_h=4.6, **kw)
    assert window[h] < 0.7 and changed[h] == 1.0  # four in a row after ~none: the share since the change
    assert changed[c] == 1.0 and changed[s1] == 1.0
    # a key at half that streaks 8 times is not a change: the statistic stays under h
    assert app.f[Fm.F_HCP] < 4.6
    assert direction_features(app, 0.0, change_h=4.6, **kw) == direction_features(app, 0.0, **kw)
    # the bar grows with the key's volume: four in a row are a change after 20 requests, not 2000
    young, old = KeyState(), KeyState()
    for i in range(24):
        apply_event(young, ev(i, i >= 20), 1 / 32, 0, 20, 96, 0.2)
    for i in range(2004):
        apply_event(old, ev(i, i >= 2000), 1 / 32, 0, 20, 96, 0.2)
    assert direction_features(young, 0.0, change_h=4.6)[h] == 1.0
    assert direction_features(old, 0.0, change_h=4.6) == direction_features(old, 0.0)
    # off by default, and one benign request after the run lowers the statistic by log 2
    assert direction_features(drifted, 0.0, **kw) == window
    g = drifted.f[Fm.F_HCP]
    apply_event(drifted, ev(200, False), 1 / 32, 0, 20, 96, 0.2)
    assert drifted.f[Fm.F_HCP] == pytest.approx(g - math.log(2.0))
    # a long benign run restarts it from zero
    for i in range(201, 230):
        apply_event(drifted, ev(i, False), 1 / 32, 0, 20, 96, 0.2)
    assert drifted.f[Fm.F_HCP] == 0.0 and drifted.f[Fm.F_HCP + 1] == 0.0


def test_short_window_spans_a_minute_for_a_busy_key():
    from models.features import FEATURES, apply_event, direction_features
    from models.keymodel import KeyState

    def ev(i, gap, harvest):
        return {"event_id": str(i), "ts": T0 + gap * i, "api_key": "k", "status": 200,
                "prompt_tokens": 200, "completion_tokens": 1024 if harvest else 60, "topic": "science"}

    h = FEATURES.index("harvest_share")
    kw = dict(fast_weight=1.0, fast_alpha=0.2, fast_z=1.5)

    def share(gap, n_streak, fast_seconds, n=600):
        ks = KeyState()
        for i in range(n):  # one harvest in ten, then a streak at the end
            apply_event(ks, ev(i, gap, i % 10 == 0 or i >= n - n_streak), 1 / 32, 0, 20, 96, 0.2, fast_seconds)
        return direction_features(ks, 0.0, **kw)[h]

    # a key sending every 4 s: five long answers in 20 s lift the count window, not the minute
    assert share(4.0, 5, 0.0) > 0.4
    assert share(4.0, 5, 60.0) < 0.25
    # the same key harvesting for two minutes has changed either way
    assert share(4.0, 30, 60.0) > 0.6
    # a key sending once a minute keeps its window of about five requests
    assert share(60.0, 5, 60.0) == share(60.0, 5, 0.0)


def test_fast_window_config_is_validated():
    with pytest.raises(ValueError, match="fast_seconds"):
        DetectorConfig(fast_seconds=-1.0)
    with pytest.raises(ValueError, match="fast_alpha"):
        DetectorConfig(fast_alpha=0.01)
    with pytest.raises(ValueError, match="fast_weight"):
        DetectorConfig(fast_weight=2.0)


def test_snapshots_carry_the_keys_active_minutes():
    core = DetectionCore()
    # requests at minutes 0, 3, 6, ... of the last hour, then a snapshot
    evs = [{"event_id": f"e{i}", "ts": T0 + 180.0 * i + 5.0, "api_key": "k", "prompt_tokens": 40,
            "completion_tokens": 900, "status": 200, "topic": "math"} for i in range(20)]
    run(core, evs)
    snaps = core.drain_member_snapshots()
    assert snaps
    last = snaps[-1]
    act = last["activity"]
    minute = int(last["ts"] // 60)
    assert act["minute"] == minute
    mask = int(act["mask"], 16)
    active = {minute - i for i in range(64) if mask >> i & 1}
    sent = {int(e["ts"] // 60) for e in evs if e["ts"] <= last["ts"]}
    assert active == {m for m in sent if m > minute - 64}


def test_a_repeat_is_the_same_prompt_not_a_template_filled_with_new_data():
    """Same SimHash and same length is a repeat (a CI re-run); same SimHash with a new length
    is a template filled with new data, and counts as a template member, not a repeat."""
    from models.keymodel import KeyState

    def share_after(lengths):
        ks = KeyState()
        for i, pt in enumerate(lengths):
            ev = {"ts": T0 + i, "api_key": "k", "prompt_tokens": pt, "completion_tokens": 900,
                  "status": 200, "prompt_simhash": "9f3a01c2e4b5d6f7"}
            F.apply_event(ks, ev, 1 / 32, 0, 20, 96)
        obs = F.raw_observations(ks)
        return obs["repeat_share"], ks.f[F.F_TMPL_S] / ks.f[F.F_SIM_W]

    rerun, rerun_tmpl = share_after([120] * 40)
    filled, filled_tmpl = share_after([60 + 7 * i for i in range(40)])
    assert rerun > 0.9 and rerun_tmpl == 0.0
    assert filled < 0.1 and filled_tmpl > 0.9


def test_templated_prompts_are_an_extraction_tell_but_content_stays_necessary():
    from models.features import FEATURES
    from models.policy import scrape_score

    vec = direction_vector

    content = dict(harvest_share=0.5, cot_share=0.4, capability_share=0.8, capability_breadth=0.3,
                   single_turn_share=0.8, output_ratio=0.3, novelty=1.0, sampled_decoding=1.0)
    mix, tw = (0.45, 0.35, 0.2), DetectorConfig().template_weight
    assert tw > 0.0

    def score(v, w=tw):
        return scrape_score(v, mix, 0.5, 0.0, 1.0, 0.6, w)

    templated = vec(**content, template_share=0.4)
    free = vec(**content, template_share=0.0)
    s, contrib = score(templated)
    assert s > 1.1 * score(templated, 0.0)[0]
    assert score(free)[0] == pytest.approx(score(free, 0.0)[0])
    assert contrib[FEATURES.index("template_share")] > 0.05 and abs(sum(contrib) - 1.0) < 1e-9
    # A batch job or an agent fills templates too (more of its prompts than the harvester
    # above), but asks for short answers to long prompts: the tell multiplies content, so such
    # a key stays far under the threshold floor, and one without content scores nothing.
    batch = vec(capability_share=1.0, novelty=1.0, template_share=0.95, sampled_decoding=1.0)
    assert score(batch)[0] < 0.5 * DetectorConfig().threshold_floor
    assert score(vec(novelty=1.0, template_share=0.95, sampled_decoding=1.0))[0] == 0.0
    # An unknown share (no SimHash sent) neither accuses nor acquits.
    unknown = vec(**content, template_share=float("nan"))
    assert score(unknown)[0] == pytest.approx(score(free)[0])


def test_template_weight_is_validated():
    with pytest.raises(ValueError, match="template_weight"):
        DetectorConfig(template_weight=1.5)
    with pytest.raises(ValueError, match="template_z"):
        DetectorConfig(template_z=-1.0)


def test_a_young_keys_template_share_is_read_with_its_uncertainty():
    """key-0.24: ten template members in the first thirty requests (a product's system prompt
    shared by chance) are not yet a template; the same third of a thousand requests is."""
    from models.features import FEATURES, direction_features
    from models.keymodel import KeyState

    t = FEATURES.index("template_share")
    rnd = random.Random(7)

    def key(n):
        ks = KeyState()
        for i in range(n):
            templated = i % 3 == 0
            h = "9f3a01c2e4b5d6f7" if templated else f"{rnd.getrandbits(64):016x}"
            ev = {"ts": T0 + 60 * i, "api_key": "k", "prompt_tokens": 40 + i, "completion_tokens": 300,
                  "status": 200, "prompt_simhash": h}
            F.apply_event(ks, ev, 1 / 32, 0, 20, 96)
        return direction_features(ks, 0.0)[t], direction_features(ks, 0.0, template_z=1.0)[t]

    young_raw, young = key(30)
    old_raw, old = key(1000)
    assert 0.25 < young_raw < 0.45 and 0.25 < old_raw < 0.45
    assert young_raw - young > 0.08  # one standard error of 30 requests
    assert 0.0 < old_raw - old < 0.02
    assert DetectorConfig().template_z == 1.0


def test_outlier_support_counts_the_extraction_tells_the_score_counts():
    """key-0.13: whole sampled answers and templated prompts support an outlier boost as they
    raise the score; a busy streaming product with some regular timing and volume gets only
    part of the boost."""
    from models.policy import population_score

    cfg = DetectorConfig()
    w, sup, cw, tw = cfg.population_weight, cfg.population_support, cfg.collect_weight, cfg.template_weight
    full = 1.0 + 2 * w * (0.9 - 0.5)
    templated = direction_vector(template_share=0.4, novelty=1.0, sampled_decoding=1.0)
    collected = direction_vector(non_streaming_share=0.3, sampled_decoding=1.0)
    product = direction_vector(timing_regularity=0.17, rate=0.3, duty_cycle=1.0, sampled_decoding=1.0)
    for v in (templated, collected):
        assert population_score(0.3, 0.9, v, w, sup, cw, tw)[0] == pytest.approx(0.3 * full)
        # counted from logprobs / n>1 and temperature spread only (key-0.12), it got little
        assert population_score(0.3, 0.9, v, w, sup)[1] < 0.5
    s, scale = population_score(0.3, 0.9, product, w, sup, cw, tw)
    assert 0.0 < scale < 1.0 and 0.3 < s < 0.3 * full


def test_volume_alone_does_not_support_an_outlier_boost():
    """key-0.20: a busy reasoning product (many people behind one key: high volume, every
    minute active, streaming, no sampling options) is an outlier for what it asks; its volume
    is not evidence of how it collects, so it gets no boost. One tell of how requests arrive
    (regular timing) or of extraction (logprobs) still lets the boost through."""
    from models.policy import outlier_support, population_score

    cfg = DetectorConfig()
    w, sup, cw, tw = cfg.population_weight, cfg.population_support, cfg.collect_weight, cfg.template_weight
    busy = direction_vector(cot_share=0.5, harvest_share=0.6, capability_share=1.0, rate=0.3,
                            duty_cycle=0.8, non_streaming_share=0.0, sampled_decoding=1.0)
    assert outlier_support(busy, cw, tw) == 0.0
    assert population_score(0.3, 0.9, busy, w, sup, cw, tw) == (0.3, 0.0)
    for name in ("timing_regularity", "sampling_share"):
        v = list(busy)
        v[F.FEATURES.index(name)] = 0.8
        assert population_score(0.3, 0.9, v, w, sup, cw, tw)[0] > 0.3


def _conversations(key, fresh_followups, n=48, **kw):
    """A key asking capability questions in conversations of three turns. A real follow-up
    resends the conversation so far (its prompt grows by the last prompt and answer); with
    ``fresh_followups`` turns 2-3 are fresh short prompts labelled as follow-ups."""
    out, ctx = [], 0
    for i in range(n):
        turn = i % 3 + 1
        new = 80 + 7 * (i % 5)
        prompt = new if turn == 1 or fresh_followups else ctx + new
        answer = 900 + 11 * (i % 7)
        ctx = prompt + answer  # what the next real follow-up resends
        out.append({"event_id": f"{key}-{i}", "ts": T0 + 45.0 * i, "api_key": key, "status": 200,
                    "prompt_tokens": prompt, "completion_tokens": answer, "turn": turn,
                    "conversation_id": f"{key}-c{i // 3}", "topic": ("code", "math")[i // 3 % 2],
                    "cot_request": i % 4 == 0, "temperature": 0.7, "stream": True, **kw})
    return out


def test_fake_followups_are_counted_real_ones_and_unknown_conversations_are_not():
    from models.features import FEATURES, apply_event, direction_features, fabricated_share
    from models.keymodel import KeyState

    def run(events):
        ks = KeyState()
        for e in events:
            apply_event(ks, e, 1 / 32, 0, 20, 96)
        return ks

    real, fake = run(_conversations("r", False)), run(_conversations("f", True))
    assert fabricated_share(real) == 0.0
    assert fabricated_share(fake) > 0.75  # 32 cold follow-ups, shrunk by 3 pseudo-follow-ups
    # a fake follow-up is a one-shot request: it counts as single-turn
    st = FEATURES.index("single_turn_share")
    assert direction_features(fake, 0.0)[st] > 0.9 > 0.5 > direction_features(real, 0.0)[st]
    # turns of conversations the key has not sent lately (or the first turn) are not judged
    stray = run([dict(e, conversation_id=f"s{i}") for i, e in enumerate(_conversations("s", True))])
    assert fabricated_share(stray) == 0.0
    # a client that trims a long history keeps more than half of it
    trimmed = _conversations("t", False)
    for e in trimmed:
        if e["turn"] == 3:
            e["prompt_tokens"] = int(e["prompt_tokens"] * 0.7)
    assert fabricated_share(run(trimmed)) == 0.0


def test_followups_on_a_new_subject_count_as_fabricated_beyond_what_people_do():
    """key-0.25: a follow-up that resends its history but asks about a topic neither of its
    conversation's last two turns had is *switched*; beyond fabricated_switch_floor of a key's
    follow-ups, switches read as fabricated. A person who changes the subject now and then, or a
    classifier that mislabels one turn, stays under it."""
    from models.features import FEATURES, apply_event, direction_features, fabricated_share
    from models.keymodel import KeyState

    def run(events):
        ks = KeyState()
        for e in events:
            apply_event(ks, e, 1 / 32, 0, 20, 96)
        return ks

    cycle = ("code", "math", "science", "reasoning")
    # real follow-ups (history resent), each on another capability topic: a scripted sweep
    sweep = run([dict(e, topic=cycle[i % 4]) for i, e in enumerate(_conversations("w", False))])
    # the same conversations, the subject changed once in four conversations at turn 3
    people = run([dict(e, topic="math" if e["turn"] == 3 and i % 12 == 2 else "code")
                  for i, e in enumerate(_conversations("p", False))])
    # a coding session whose classifier calls every third turn "math": one stray label each
    stray = run([dict(e, topic="math" if i % 6 == 4 else "code")
                 for i, e in enumerate(_conversations("s", False))])
    assert fabricated_share(sweep) > 0.5
    assert fabricated_share(people) == 0.0 and fabricated_share(stray) == 0.0
    assert fabricated_share(sweep, switch_floor=1.0) == 0.0  # key-0.24: history resent is real
    # a switched turn is still a conversation turn: only the fabricated share reads it
    st = FEATURES.index("single_turn_share")
    assert direction_features(sweep, 0.0)[st] == direction_features(people, 0.0)[st]
    # turns without a topic are never switched
    bare = run([{k: v for k, v in e.items() if k != "topic"} for e in _conversations("b", False)])
    assert fabricated_share(bare) == 0.0


def test_fake_followups_raise_the_score_and_are_named_but_content_stays_necessary():
    def last_eval(events, **cfg):
        core = DetectionCore(DetectorConfig(**cfg))
        for i, e in enumerate(events):
            core.process(e, seq=i)
        ks = core.keys[events[0]["api_key"]]
        vec, s_dir, contrib = core._direction(ks)
        return core, ks, vec, s_dir, contrib

    _, _, _, real, _ = last_eval(_conversations("r", False))
    core, ks, vec, fake, contrib = last_eval(_conversations("f", True))
    _, _, _, fake_off, _ = last_eval(_conversations("f", True), fabricated_weight=0.0)
    assert fake > 1.5 * fake_off and fake_off > real
    reasons = core._reasons(ks, vec, contrib, 0)
    named = [r for r in reasons if r[0] == "fabricated_followups"]
    assert named and named[0][1] > 0.75 and 0.3 < named[0][3] < 0.5
    assert abs(sum(contrib) + named[0][3] - 1.0) < 1e-9
    from models.policy import explain
    assert "follow-up turns" in explain("fabricated_followups", named[0][1], named[0][2])
    # short answers to chat questions with fake follow-ups: no content, no score to multiply
    chat = [dict(e, topic="chat", completion_tokens=60, cot_request=False)
            for e in _conversations("c", True)]
    _, _, _, s_chat, _ = last_eval(chat)
    assert s_chat < 0.5 * DetectorConfig().threshold_floor


def test_fabricated_config_is_validated():
    with pytest.raises(ValueError, match="fabricated_weight"):
        DetectorConfig(fabricated_weight=-1.0)
    with pytest.raises(ValueError, match="fabricated_prior"):
        DetectorConfig(fabricated_prior=0.0)
    with pytest.raises(ValueError, match="fabricated_switch_floor"):
        DetectorConfig(fabricated_switch_floor=1.5)


class _ScriptedCore(DetectionCore):
    """A core whose direction score is scripted by the key's evaluation count."""

    def __init__(self, script, **kw):
        super().__init__(DetectorConfig(**kw))
        self._script = script

    def _direction(self, ks):
        return [0.0] * len(F.FEATURES), self._script(ks.evals), [0.0] * len(F.FEATURES)


def _steady_key(n: int, gap: float = 31.0) -> list[dict]:
    return [{"event_id": f"e{i}", "ts": T0 + gap * i, "api_key": "k", "prompt_tokens": 300,
             "completion_tokens": 200, "status": 200} for i in range(n)]


def test_a_key_that_changes_toward_harvesting_fires_key_drift_below_the_line():
    # 40 evaluations at 0.03, then 0.20: below the 0.35 floor, but a sevenfold rise over where
    # the key stood before Page-Hinkley saw the change. Opens at the 3rd such evaluation.
    def script(evals):
        return 0.03 if evals <= 40 else 0.20

    out = run(_ScriptedCore(script), _steady_key(80))
    firing = [a for a in out if a["status"] == "firing"]
    assert firing and firing[0]["detector"] == "key_drift"
    assert firing[0]["score"] < 0.35
    assert 41 + 2 <= firing[0]["window"]["events"] <= 41 + 6, firing[0]["window"]
    assert any(r["feature"] == "drift_score" for r in firing[0]["reasons"])
    # the same rise without enough history to have a baseline of its own is not a change,
    # and neither is the same level held from the start, or a rise that stays under the floor
    assert not [a for a in run(_ScriptedCore(lambda e: 0.03 if e <= 10 else 0.20), _steady_key(60))
                if a["status"] == "firing"]
    assert not [a for a in run(_ScriptedCore(lambda e: 0.20), _steady_key(80)) if a["status"] == "firing"]
    assert not [a for a in run(_ScriptedCore(lambda e: 0.03 if e <= 40 else 0.12), _steady_key(80))
                if a["status"] == "firing"]
    # an analyst's false_positive verdict raises the bar for the change path too
    fb = FakeFeedback({"k": ("false_positive", 0.0)})
    core = _ScriptedCore(script)
    core.feedback = fb
    assert not [a for a in run(core, _steady_key(80)) if a["status"] == "firing"]


def test_a_change_in_content_alone_must_be_larger_by_the_margin():
    """The change path asks a content-only key for the same margin as the line (key-0.23): a
    reasoning product's questions wander with its users. One tell of how a key takes the
    answers (here logprobs / n > 1) and the plain rise is enough."""
    def script(evals):
        return 0.03 if evals <= 40 else 0.16  # a rise of 0.13: over 0.1, under 0.1 + 0.04

    class VecCore(_ScriptedCore):
        def __init__(self, vec, **kw):
            super().__init__(script, **kw)
            self._vec = vec

        def _direction(self, ks):
            return list(self._vec), self._script(ks.evals), [0.0] * len(F.FEATURES)

    def drift_alerts(vec, **kw):
        return [a for a in run(VecCore(vec, **kw), _steady_key(80))
                if a["status"] == "firing" and a["detector"] == "key_drift"]

    content = direction_vector(harvest_share=0.6, cot_share=0.5, capability_share=0.9)
    assert not drift_alerts(content)
    assert drift_alerts(content, content_only_margin=0.0)
    assert drift_alerts(direction_vector(harvest_share=0.6, cot_share=0.5, capability_share=0.9,
                                         sampling_share=0.5))


def test_a_score_that_doubles_and_stays_there_fires_key_drift_once():
    """A drifter that keeps most of its old traffic doubles its score and stays under the
    change path's rise (key-0.26): the mean since Page-Hinkley's trip, held over
    ``sustain_evals`` evaluations and ``sustain_seconds``, is the change."""
    def firing(script, n, **kw):
        kw.setdefault("content_only_margin", 0.0)  # the margin has its own case below
        return [a for a in run(_ScriptedCore(script, **kw), _steady_key(n)) if a["status"] == "firing"]

    def doubled(evals):
        return 0.05 if evals <= 40 else 0.14  # a rise of 0.09: under the change path's 0.1

    assert not firing(doubled, 80)  # the level has not stood long enough yet
    out = firing(doubled, 300)
    assert len(out) == 1 and out[0]["detector"] == "key_drift", out  # one alert per change
    # Page-Hinkley trips some evaluations after the rise; then 40 evaluations (31 s apart) and
    # 20 minutes of them
    assert 41 + 40 <= out[0]["window"]["events"] <= 41 + 40 + 20, out[0]["window"]
    level = [r for r in out[0]["reasons"] if r["feature"] == "drift_level"]
    assert level and 0.13 <= level[0]["observed"] <= 0.14 and 0.05 <= level[0]["baseline"] < 0.07, level
    assert "since it changed" in level[0]["explanation"]
    assert not firing(doubled, 300, sustain_evals=0)  # switched off
    # each condition on its own: x1.5 is not a doubling, 0.09 is under the floor, and a rise
    # that falls back leaves a mean near where the key stood (each fires with the bar moved)
    ratio = (lambda e: 0.12 if e <= 40 else 0.20)
    assert not firing(ratio, 300) and firing(ratio, 300, sustain_ratio=1.4)
    floor = (lambda e: 0.02 if e <= 40 else 0.09)
    assert not firing(floor, 300) and firing(floor, 300, sustain_floor=0.08)
    back = (lambda e: 0.14 if 40 < e <= 52 else 0.05)
    assert not firing(back, 300) and firing(back, 300, sustain_evals=5, sustain_seconds=0.0)
    # a key whose only evidence is content must rise by the content-only margin too (key-0.23)
    assert not firing(doubled, 300, content_only_margin=0.04)
    # an analyst's false_positive verdict raises the bar for this reading too
    core = _ScriptedCore(doubled, content_only_margin=0.0)
    core.feedback = FakeFeedback({"k": ("false_positive", 0.0)})
    assert not [a for a in run(core, _steady_key(300)) if a["status"] == "firing"]


def test_sustained_change_config_is_validated():
    for bad in ({"sustain_evals": -1}, {"sustain_evals": 2.5}, {"sustain_ratio": 0.5},
                {"sustain_rise": 1.5}, {"sustain_floor": -0.1}, {"sustain_seconds": float("inf")}):
        with pytest.raises(ValueError, match="sustain_"):
            DetectorConfig(**bad)


def test_content_alone_must_clear_the_line_by_a_margin(monkeypatch):
    """A reasoning product's users ask what a harvester asks (capability topics, CoT, long
    answers): a key whose only evidence is content opens an episode only ``content_only_margin``
    above the line. One tell of how it takes the answers (sampling options, whole sampled
    answers, regular timing...) and the line itself is enough (key-0.22)."""
    import models.engine as E

    cfg = DetectorConfig()
    thr, m = cfg.threshold_floor, cfg.content_only_margin
    assert m > 0.0
    content = dict(harvest_share=0.7, cot_share=0.7, capability_share=0.9, output_ratio=0.5,
                   novelty=1.0, sampled_decoding=1.0)

    def fires(vec, score, config=cfg):
        core = DetectionCore(config)
        monkeypatch.setattr(core, "_direction", lambda ks: (vec, score, [1.0 / len(vec)] * len(vec)))
        monkeypatch.setattr(E, "population_score", lambda s, *a, **kw: (s, 1.0))
        events = [{"event_id": f"e{i}", "ts": T0 + 10.0 * i, "api_key": "k", "status": 200,
                   "prompt_tokens": 100, "completion_tokens": 1500} for i in range(40)]
        return any(a["status"] == "firing" for a in run(core, events))

    plain = direction_vector(**content)
    assert not fires(plain, thr + m / 2)                                      # content alone, just over
    assert fires(plain, thr + m + 0.01)                                        # content alone, clearly over
    assert fires(direction_vector(**content, sampling_share=0.5), thr + m / 2)  # plus logprobs / n > 1
    assert fires(direction_vector(**content, non_streaming_share=1.0), thr + m / 2)  # whole sampled answers
    assert fires(plain, thr + m / 2, dataclasses.replace(cfg, content_only_margin=0.0))  # off
    with pytest.raises(ValueError, match="content_only_margin"):
        DetectorConfig(content_only_margin=0.6)
