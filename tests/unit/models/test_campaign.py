"""CampaignDetector: groups of keys that jointly look like distillation, judged by members."""

from __future__ import annotations

import dataclasses
import hashlib
import sys

import orjson
import pytest

from models.campaign import (
    CampaignConfig,
    CampaignDetector,
    campaign_alert_id,
    member_suspicion,
)
from models.feedback import FeedbackBook
from schemas import validate_alert

T0 = 1_700_000_000.0

# A distiller key at ordinary volume: chain of thought, capability topics, one-shot, long outputs,
# but an engine score well below any per-key alarm.
SCRAPER = {
    "cot_share": 0.8,
    "capability_share": 0.85,
    "capability_breadth": 0.6,
    "single_turn_share": 0.95,
    "output_ratio": 0.7,
    "novelty": 0.95,
    "template_share": 0.3,
    "sampling_share": 0.0,
    "rate": 0.1,
}
# An ordinary chat user.
BENIGN = {
    "cot_share": 0.02,
    "capability_share": 0.15,
    "capability_breadth": 0.05,
    "single_turn_share": 0.3,
    "output_ratio": 0.2,
    "novelty": 0.9,
    "template_share": 0.0,
    "sampling_share": 0.0,
    "rate": 0.05,
}


def snap(key, ts, feats, groups, *, first_ts=None, score=0.25, events=20, simhashes=None):
    s = {
        "api_key": key,
        "ts": ts,
        "first_ts": ts - 300.0 if first_ts is None else first_ts,
        "events": events,
        "score": score,
        "features": dict(feats),
        "groups": groups,
    }
    if simhashes is not None:
        s["simhashes"] = [f"{h:016x}" for h in simhashes]
    return s


def _rnd(seed):
    """A deterministic pseudo-random 64-bit SimHash."""
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "big") or 1


# The campaign's shared templates: each key sends them with a few bits flipped (its own fill-ins).
TEMPLATES = [_rnd(f"template{i}") for i in range(6)]


def templated(key_i, r):
    """Simhashes of campaign key ``key_i`` in round ``r``: two shared templates, one own prompt."""
    a = TEMPLATES[(key_i + r) % len(TEMPLATES)] ^ (1 << (key_i % 64)) ^ (1 << ((3 * r + 7) % 64))
    b = TEMPLATES[(key_i + r + 2) % len(TEMPLATES)] ^ (1 << ((key_i + 11) % 64))
    return [a, b, _rnd(f"own{key_i}-{r}")]


def run(det, snaps, step=60.0):
    out = []
    for s in snaps:
        out += det.advance(s["ts"])
        out += det.observe(s)
    return out


def campaign_snaps(n_keys, group, *, start=T0, feats=SCRAPER, rounds=3, prefix="evil"):
    """n_keys keys in one group, each reporting a few times, staggered by a minute."""
    snaps = []
    for r in range(rounds):
        for i in range(n_keys):
            ts = start + r * 600.0 + i * 60.0
            snaps.append(snap(f"{prefix}{i}", ts, feats, dict(group), first_ts=start + i * 60.0))
    snaps.sort(key=lambda s: s["ts"])
    return snaps


def firing(alerts, etype=None):
    return [a for a in alerts if a["status"] == "firing" and (etype is None or a["entity_type"] == etype)]


# An honest evaluation harness: CoT and reasoning topics, one-shot, at volume, but it re-runs
# its own suite (few new prompts) and decodes greedily (temperature 0).
HARNESS = {
    "cot_share": 0.9,
    "capability_share": 0.9,
    "capability_breadth": 0.2,
    "single_turn_share": 1.0,
    "output_ratio": 0.4,
    "novelty": 0.05,
    "sampled_decoding": 0.0,
    "template_share": 0.9,
    "sampling_share": 0.0,
    "rate": 0.9,
}


def test_member_suspicion_is_gated_like_the_engine_score():
    # re-running prompts or decoding greedily is not collecting answers to learn from
    collecting = dict(HARNESS, novelty=1.0, sampled_decoding=1.0)
    assert member_suspicion(0.25, collecting) >= 0.75
    assert member_suspicion(0.25, dict(collecting, novelty=0.05)) < 0.5
    assert member_suspicion(0.25, dict(collecting, sampled_decoding=0.0)) < member_suspicion(0.25, collecting)
    assert member_suspicion(0.25, HARNESS) < 0.35
    # the engine's own score still counts in full, and a missing gate feature gates nothing
    assert member_suspicion(0.6, HARNESS) >= 0.6
    no_gate = {k: v for k, v in collecting.items() if k not in ("novelty", "sampled_decoding")}
    assert member_suspicion(0.25, no_gate) == member_suspicion(0.25, collecting)


def test_a_group_of_eval_harnesses_is_no_campaign():
    # one account running its benchmark suite from several keys: the tells of a harvest on
    # content alone, so without the gate the account would be a campaign
    def fired(feats):
        det = CampaignDetector(CampaignConfig(warmup=0.0))
        return firing(run(det, campaign_snaps(6, {"account": "acct-eval"}, feats=feats, prefix="eval")))

    assert fired(HARNESS) == []
    assert fired(dict(HARNESS, novelty=1.0, sampled_decoding=1.0))  # the same keys collecting answers


def test_config_validates_hyperparameters():
    with pytest.raises(ValueError, match="max_groups"):
        CampaignConfig(max_groups=0)
    with pytest.raises(ValueError, match="close_score"):
        CampaignConfig(open_score=0.3, close_score=0.5)
    with pytest.raises(ValueError, match="max_related"):
        CampaignConfig(max_related=101)
    with pytest.raises(ValueError, match="type_weights"):
        CampaignConfig(type_weights={"account": 1.0})
    with pytest.raises(ValueError, match="member_ttl"):
        CampaignConfig(member_ttl=float("nan"))
    cfg = CampaignConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.open_score = 0.1  # type: ignore[misc]


def test_member_suspicion_points_toward_scraping_only():
    assert member_suspicion(0.2, SCRAPER) > 0.5 > member_suspicion(0.2, BENIGN)
    assert member_suspicion(0.0, {}) == 0.0
    assert member_suspicion(float("nan"), {"cot_share": "x"}) == 0.0  # garbage degrades


def test_campaign_of_individually_quiet_keys_fires_with_valid_alert_naming_members():
    det = CampaignDetector(CampaignConfig(warmup=0.0))
    snaps = campaign_snaps(8, {"client_net": "198.51.100.0/24", "user_agent": "sdk/1"})
    alerts = run(det, snaps)
    fired = firing(alerts, "client_net")
    assert fired, "eight scraping-like keys behind one /24 must open a campaign"
    a = fired[0]
    validate_alert(a)
    assert a["detector"] == "campaign"
    assert a["entity"] == "198.51.100.0/24"
    assert a["alert_id"] == campaign_alert_id("client_net", "198.51.100.0/24", 1)
    assert set(a["related_entities"]) <= {f"evil{i}" for i in range(8)}
    # new keys of one tooling: the group opens at its second implicated key
    assert a["related_total"] >= len(a["related_entities"]) >= 2
    assert "look distillation-like" in a["reasons"][0]["explanation"]
    # each key's score stays below a per-key alarm: the evidence is joint
    assert all(s["score"] <= 0.3 for s in snaps)
    # and the episode names all eight as they arrive
    named = set().union(*(a["related_entities"] for a in fired))
    assert named == {f"evil{i}" for i in range(8)}


def test_long_lived_suspicious_neighbours_without_cross_key_evidence_are_not_a_campaign():
    # three old keys behind one small /24 (an eval harness and friends), each suspicious on its
    # own, no shared templates, no new keys, no short lifetimes: the per-key detector's business
    def snaps():
        out = []
        for r in range(4):
            for i in range(3):
                out.append(snap(f"old{i}", T0 + 3 * 3600 + r * 600.0 + i * 60.0, SCRAPER,
                                {"client_net": "192.0.2.0/24"}, first_ts=T0 + i))
        return [snap("warm", T0, BENIGN, {"asn": "1"})] + out

    assert firing(run(CampaignDetector(CampaignConfig(warmup=3600.0)), snaps())) == []
    # the same members as new keys are a burst: that is cross-key evidence
    fresh = [dict(s, first_ts=s["ts"] - 120.0) if s["api_key"] != "warm" else s for s in snaps()]
    assert firing(run(CampaignDetector(CampaignConfig(warmup=3600.0)), fresh), "client_net")
    # and the gate can be switched off
    off = CampaignDetector(CampaignConfig(warmup=3600.0, require_joint=False))
    assert firing(run(off, snaps()), "client_net")
    with pytest.raises(ValueError, match="require_joint"):
        CampaignConfig(require_joint=1)  # type: ignore[arg-type]


def test_huge_benign_group_does_not_fire_whatever_its_size():
    det = CampaignDetector(CampaignConfig(warmup=0.0, max_members_per_group=2000))
    snaps = []
    for i in range(1500):
        snaps.append(snap(f"user{i}", T0 + i * 2.0, BENIGN, {"client_net": "100.64.0.0/24", "asn": "64500"}))
    # a handful of heavy-ish reasoning users in the same carrier NAT are not a campaign either
    for i in range(12):
        snaps.append(snap(f"reasoner{i}", T0 + 3000 + i, SCRAPER, {"client_net": "100.64.0.0/24", "asn": "64500"}))
    alerts = run(det, snaps)
    assert firing(alerts) == []


def test_user_agent_groups_are_weak_evidence():
    cfg = CampaignConfig(warmup=0.0)
    det = CampaignDetector(cfg)
    # the same scraping members, grouped only by a common SDK user agent, with ordinary users
    snaps = campaign_snaps(6, {"user_agent": "openai-python/1.0"})
    for i in range(10):
        snaps.append(snap(f"u{i}", T0 + 1000 + i, BENIGN, {"user_agent": "openai-python/1.0"}))
    snaps.sort(key=lambda s: s["ts"])
    ua = firing(run(det, snaps), "user_agent")
    det2 = CampaignDetector(cfg)
    snaps2 = [dict(s, groups={"account": "acct-1"}) for s in snaps]
    acct = firing(run(det2, snaps2), "account")
    assert acct and not ua


def template_campaign(n_keys, *, start=T0, rounds=3, prefix="evil", feats=SCRAPER):
    """Keys with nothing in common but the prompt templates they fill in."""
    snaps = []
    for r in range(rounds):
        for i in range(n_keys):
            ts = start + r * 600.0 + i * 60.0
            snaps.append(snap(f"{prefix}{i}", ts, feats, {"asn": f"as{i}", "account": f"acct-{prefix}{i}"},
                              first_ts=start + i * 60.0, simhashes=templated(i, r)))
    snaps.sort(key=lambda s: s["ts"])
    return snaps


def test_template_family_across_keys_and_key_churn_are_named_in_reasons():
    det = CampaignDetector(CampaignConfig(warmup=600.0))
    warm = [snap("old", T0 + i * 100.0, BENIGN, {"asn": "1"}) for i in range(10)]
    keys = template_campaign(10, start=T0 + 1200.0)
    alerts = run(det, warm + keys)
    fired = firing(alerts, "template")
    assert fired and not firing(alerts, "asn") and not firing(alerts, "account")
    assert {k for a in fired for k in a["related_entities"]} == {f"evil{i}" for i in range(10)}
    text = " ".join(r["explanation"] for r in fired[-1]["reasons"])
    assert f"share template family {fired[-1]['entity']}" in text and fired[-1]["entity"].startswith("t:")
    assert "new in the last" in text
    assert "within 10 bits" in text


def test_rotated_keys_get_named_by_a_refire_of_the_same_episode():
    cfg = CampaignConfig(warmup=0.0, refire_interval=120.0)
    det = CampaignDetector(cfg)
    first = campaign_snaps(5, {"account": "acct-x"}, prefix="gen1-")
    later = campaign_snaps(5, {"account": "acct-x"}, start=T0 + 3000.0, prefix="gen2-")
    alerts = run(det, first + later)
    fired = firing(alerts, "account")
    assert len({a["alert_id"] for a in fired}) == 1, "one episode, one id"
    named_after = {k for a in fired if a["event_ts"] >= T0 + 3000.0 for k in a["related_entities"]}
    assert {f"gen2-{i}" for i in range(5)} <= named_after


def test_quiet_campaign_resolves_and_a_new_episode_gets_a_new_id():
    cfg = CampaignConfig(warmup=0.0, member_ttl=1800.0, quiet_resolve=600.0)
    det = CampaignDetector(cfg)
    alerts = run(det, campaign_snaps(5, {"asn": "64501"}))
    alerts += det.advance(T0 + 10_000.0)
    resolved = [a for a in alerts if a["status"] == "resolved"]
    assert len(resolved) == 1
    validate_alert(resolved[0])
    assert resolved[0]["alert_id"] == firing(alerts)[0]["alert_id"]
    alerts2 = run(det, campaign_snaps(5, {"asn": "64501"}, start=T0 + 20_000.0, prefix="b"))
    assert firing(alerts2)[0]["alert_id"] == campaign_alert_id("asn", "64501", 2)


def test_memory_is_bounded_with_eviction_counts():
    cfg = CampaignConfig(max_groups=50, max_members_per_group=10, max_keys=300)
    det = CampaignDetector(cfg)
    for i in range(1000):
        det.observe(snap(f"k{i}", T0 + i, BENIGN, {"client_net": f"10.0.{i % 200}.0/24", "asn": "7"}))
    st = det.stats()
    assert st["groups"] <= 50
    assert st["members"] <= 50 * 10
    assert st["evicted_total"] > 0
    assert len(det._keys) <= 300
    assert st["state_bytes"] > 0


def test_export_import_round_trip_continues_identically():
    cfg = CampaignConfig(warmup=0.0, hash_window=16)  # a small ring, so it wraps mid-run
    snaps = campaign_snaps(6, {"client_net": "192.0.2.0/24"}) + template_campaign(6, prefix="tmpl")
    snaps.sort(key=lambda s: (s["ts"], s["api_key"]))
    half = len(snaps) // 2
    a = CampaignDetector(cfg)
    out_a = run(a, snaps)
    b = CampaignDetector(cfg)
    out_b = run(b, snaps[:half])
    c = CampaignDetector(cfg)
    c.import_state(b.export_state())
    out_b += run(c, snaps[half:])
    assert out_a == out_b
    assert c.export_state() == a.export_state()
    with pytest.raises(ValueError, match="version"):
        c.import_state(orjson.dumps({"version": 0}))
    with pytest.raises(ValueError):
        c.import_state(b"not json")


def test_bad_snapshots_never_crash_and_input_is_not_mutated():
    det = CampaignDetector()
    for bad in (None, {}, {"api_key": ""}, {"api_key": "k", "ts": "x"}, {"api_key": "k", "ts": float("inf")},
                {"api_key": "k", "ts": 1.0, "features": [], "groups": "x"},
                {"api_key": "k", "ts": 1.0, "groups": {"asn": 64500, "template": "b0:1", "account": 3}}):
        assert det.observe(bad) == []  # type: ignore[arg-type]
    s = snap("k", T0, SCRAPER, {"template": ["b0:1"]})
    before = orjson.dumps(s)
    det.observe(s)
    assert orjson.dumps(s) == before


# --- analyst feedback --------------------------------------------------------------------


def fb(book, et, ent, verdict, ts=T0 - 1.0, until=None):
    book.apply({"entity_type": et, "entity": ent, "verdict": verdict, "ts": ts, "until": until})


def test_allowlisted_group_does_not_alert_until_the_allowlist_expires():
    book = FeedbackBook()
    fb(book, "client_net", "198.51.100.0/24", "allowlisted", until=T0 + 900.0)
    det = CampaignDetector(CampaignConfig(warmup=0.0), feedback=book)
    early = run(det, campaign_snaps(8, {"client_net": "198.51.100.0/24"}, rounds=1))
    assert firing(early) == []
    late = run(det, campaign_snaps(8, {"client_net": "198.51.100.0/24"}, start=T0 + 1000.0))
    assert firing(late), "the allowlist ended at its until"


def test_allowlisted_keys_are_not_implicated_nor_named():
    book = FeedbackBook()
    for i in range(6):
        fb(book, "api_key", f"evil{i}", "allowlisted")
    det = CampaignDetector(CampaignConfig(warmup=0.0), feedback=book)
    alerts = run(det, campaign_snaps(8, {"account": "acct-r"}))
    names = {k for a in firing(alerts) for k in a["related_entities"]}
    assert not names & {f"evil{i}" for i in range(6)}
    assert firing(alerts) == [], "two implicated keys out of eight are not a campaign"


def test_false_positive_closes_the_episode_and_raises_the_bar():
    book = FeedbackBook()
    det = CampaignDetector(CampaignConfig(warmup=0.0), feedback=book)
    alerts = run(det, campaign_snaps(8, {"asn": "64502"}))
    assert firing(alerts)
    fb(book, "asn", "64502", "false_positive", ts=T0 + 2000.0)
    more = run(det, campaign_snaps(8, {"asn": "64502"}, start=T0 + 2100.0, prefix="again"))
    closed = [a for a in more if a["status"] == "resolved"]
    assert len(closed) == 1 and "false positive" in closed[0]["reasons"][0]["explanation"]
    assert firing(more) == [], "the same evidence does not clear the raised bar"
    # the control: without the verdict, the same traffic keeps firing
    det2 = CampaignDetector(CampaignConfig(warmup=0.0))
    run(det2, campaign_snaps(8, {"asn": "64502"}))
    assert firing(run(det2, campaign_snaps(8, {"asn": "64502"}, start=T0 + 2100.0, prefix="again")))


def test_confirmed_group_keeps_firing_at_warning_or_above_and_names_its_members():
    book = FeedbackBook()
    fb(book, "account", "acct-c", "confirmed")
    det = CampaignDetector(CampaignConfig(warmup=0.0), feedback=book)
    # members that look only mildly suspicious: no campaign on their own evidence
    mild = dict(BENIGN, cot_share=0.3)
    alerts = run(det, campaign_snaps(5, {"account": "acct-c"}, feats=mild))
    fired = firing(alerts)
    assert fired and all(a["severity"] in ("warning", "critical") for a in fired)
    assert {k for a in fired for k in a["related_entities"]} == {f"evil{i}" for i in range(5)}
    det2 = CampaignDetector(CampaignConfig(warmup=0.0))
    assert firing(run(det2, campaign_snaps(5, {"account": "acct-c"}, feats=mild))) == []


def test_confirmed_key_counts_as_implicated():
    book = FeedbackBook()
    cfg = CampaignConfig(warmup=0.0, min_implicated_alike=3)  # two implicated are never enough
    det = CampaignDetector(cfg, feedback=book)
    mild = dict(BENIGN, cot_share=0.3)
    snaps = campaign_snaps(2, {"client_net": "203.0.113.0/24"}) + campaign_snaps(
        1, {"client_net": "203.0.113.0/24"}, feats=mild, prefix="mild")
    snaps.sort(key=lambda s: s["ts"])
    assert firing(run(CampaignDetector(cfg), snaps)) == []
    fb(book, "api_key", "mild0", "confirmed")
    fired = firing(run(det, snaps))
    assert fired and "mild0" in fired[-1]["related_entities"]


def test_models_campaign_imports_no_streaming_stack():
    import subprocess

    code = (
        "import sys, models.campaign, models.feedback;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('faust','confluent_kafka','prometheus_client','streams')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_template_families_link_through_implicated_keys_confirmed_by_hamming_distance():
    det = CampaignDetector(CampaignConfig(warmup=0.0))
    snaps = template_campaign(6)
    # a light user who once sends a popular prompt the campaign also uses joins the family as a
    # member, but is neither implicated nor named, and links nothing
    snaps.append(snap("chat", T0 + 900.0, dict(BENIGN, cot_share=0.3), {"asn": "as-chat"},
                      simhashes=[TEMPLATES[0] ^ 0b101, _rnd("chat-own")]))
    # a key whose prompts collide with the campaign's on a 16-bit LSH band but differ in the rest
    # of the 64 bits (a chance band collision) is no match at all
    band_only = [(t & 0xFFFF) | (_rnd(f"far{j}") & ~0xFFFF) for j, t in enumerate(TEMPLATES)]
    snaps.append(snap("lookalike", T0 + 950.0, SCRAPER, {"asn": "as-look"}, simhashes=band_only[:4]))
    snaps.sort(key=lambda s: s["ts"])
    alerts = run(det, snaps)
    fired = firing(alerts, "template")
    assert fired
    # families that grew apart merge once a key links them: the younger episode resolves
    final = fired[-1]["entity"]
    for e in {a["entity"] for a in fired} - {final}:
        (end,) = [a for a in alerts if a["entity"] == e and a["status"] == "resolved"]
        assert f"joined family {final}" in end["reasons"][0]["explanation"]
    assert set(fired[-1]["related_entities"]) == {f"evil{i}" for i in range(6)}
    assert det._keys["chat"].fam is None, "a benign key never links families"
    assert det._keys["lookalike"].fam is None and det._keys["lookalike"].xmatch == 0


def test_two_new_clearly_implicated_keys_sharing_templates_open_a_family_early():
    warm = [snap("old", T0 + i * 100.0, BENIGN, {"asn": "1"}) for i in range(10)]
    start = T0 + 2 * 3600.0

    def fired(cfg, feats=SCRAPER, first_ts=None):
        snaps = template_campaign(2, start=start, feats=feats)
        if first_ts is not None:
            snaps = [dict(s, first_ts=first_ts) for s in snaps]
        return firing(run(CampaignDetector(cfg), warm + snaps), "template")

    cfg = CampaignConfig(warmup=600.0)
    (a, *_) = fired(cfg)
    assert set(a["related_entities"]) == {"evil0", "evil1"}
    # one new key (a rotation) beside an older one is enough, unless every key must be new
    snaps = template_campaign(2, start=start)
    rotated = [dict(s, first_ts=T0) if s["api_key"] == "evil0" else s for s in snaps]
    assert firing(run(CampaignDetector(cfg), warm + rotated), "template")
    assert firing(run(CampaignDetector(CampaignConfig(warmup=600.0, burst_all_new=True)), warm + rotated),
                  "template") == []
    # not when the pair is old, only mildly suspicious, or the burst rule is off
    assert fired(cfg, first_ts=T0) == []
    mild = dict(SCRAPER, cot_share=0.25, capability_share=0.55, output_ratio=0.2)
    assert 0.5 <= member_suspicion(0.25, mild) < cfg.new_suspicion
    assert fired(cfg, feats=mild) == []
    assert fired(CampaignConfig(warmup=600.0, min_implicated_new=3)) == []


def test_keys_routinely_sending_a_firing_familys_templates_are_named_not_occasional_sharers():
    det = CampaignDetector(CampaignConfig(warmup=0.0))
    covered = dict(SCRAPER, cot_share=0.25, capability_share=0.5, single_turn_share=0.75, output_ratio=0.3,
                   novelty=0.9, rate=0.9)
    assert member_suspicion(0.1, covered) < 0.5
    snaps = template_campaign(6)
    for r in range(3):  # the same tooling, more cover traffic: below the member threshold
        snaps.append(snap("cover", T0 + r * 600.0 + 400.0, covered, {"asn": "as-c"}, score=0.1,
                          simhashes=templated(9, r)))
        # a light user with the same mild suspicion who sent one popular template once
        snaps.append(snap("light", T0 + r * 600.0 + 410.0, covered, {"asn": "as-l"}, score=0.1,
                          simhashes=[_rnd(f"light{r}-{j}") for j in range(3)]
                          + ([TEMPLATES[1] ^ 0b11] if r == 1 else [])))
    snaps.sort(key=lambda s: s["ts"])
    named = {k for a in firing(run(det, snaps), "template") for k in a["related_entities"]}
    assert "cover" in named
    assert "light" not in named


def test_a_routine_sharer_of_a_familys_prompts_is_named_only_if_it_harvests():
    # the campaign's cover traffic sends popular prompts that ordinary users send too: a light
    # user matches them as often as a cover-heavy campaign key matches the templates, but its
    # answers are short (it never harvests)
    covered = dict(SCRAPER, cot_share=0.25, capability_share=0.5, single_turn_share=0.75, output_ratio=0.3,
                   novelty=0.9, rate=0.9)

    def named(light_harvest):
        det = CampaignDetector(CampaignConfig(warmup=0.0))
        snaps = template_campaign(6)
        for r in range(3):
            snaps.append(snap("cover", T0 + r * 600.0 + 400.0, dict(covered, harvest_share=0.4), {"asn": "as-c"},
                              score=0.1, simhashes=templated(9, r)))
            snaps.append(snap("light", T0 + r * 600.0 + 410.0, dict(covered, harvest_share=light_harvest),
                              {"asn": "as-l"}, score=0.1, simhashes=templated(10, r)))
        snaps.sort(key=lambda s: s["ts"])
        return {k for a in firing(run(det, snaps), "template") for k in a["related_entities"]}

    assert "cover" in named(0.01) and "light" not in named(0.01)
    assert {"cover", "light"} <= named(0.3)  # the same prompts and it harvests: a campaign key


def test_members_with_the_campaign_profile_are_named_by_association_not_honest_neighbours():
    det = CampaignDetector(CampaignConfig(warmup=0.0))
    covered = dict(SCRAPER, cot_share=0.25, capability_share=0.5, single_turn_share=0.75, output_ratio=0.5)
    agent = {"cot_share": 0.05, "capability_share": 0.7, "capability_breadth": 0.1,
             "single_turn_share": 0.0, "output_ratio": 0.0, "novelty": 0.3, "template_share": 0.6,
             "sampling_share": 0.0, "rate": 0.6}
    assert member_suspicion(0.25, covered) < 0.5
    group = {"client_net": "203.0.113.0/24"}
    snaps = campaign_snaps(6, group)
    snaps += campaign_snaps(2, group, feats=covered, prefix="cover")
    snaps += campaign_snaps(1, group, feats=agent, prefix="agent")
    snaps.sort(key=lambda s: s["ts"])
    named = {k for a in firing(run(det, snaps)) for k in a["related_entities"]}
    assert {"cover0", "cover1"} <= named
    assert "agent0" not in named


def test_a_look_alike_that_never_harvests_is_not_named_by_association():
    # a coding agent behind the campaign's /24: capability topics, one-shot-ish, and a profile
    # near the campaign's on the features both leave at zero, but its answers are short next to
    # its huge contexts: it never takes the model's answers, so it is not the campaign's tooling
    covered = dict(SCRAPER, cot_share=0.25, capability_share=0.5, single_turn_share=0.75, output_ratio=0.5)
    group = {"client_net": "203.0.113.0/24"}

    def named(harvest, events):
        det = CampaignDetector(CampaignConfig(warmup=0.0))
        snaps = campaign_snaps(6, group)
        near = campaign_snaps(1, group, feats=dict(covered, harvest_share=harvest), prefix="near")
        snaps += [dict(s, events=events) for s in near]
        snaps.sort(key=lambda s: s["ts"])
        return {k for a in firing(run(det, snaps)) for k in a["related_entities"]}

    assert "near0" in named(0.3, 200)  # cover-heavy, but it harvests: the same tooling
    assert "near0" not in named(0.003, 200)  # 200 requests, next to no harvest
    assert {f"evil{i}" for i in range(6)} <= named(0.003, 200)
    # a campaign key's first requests prove nothing yet: a low share over 5 of them is
    # the prior, and it is still named by association
    assert "near0" in named(0.01, 5)


def test_broad_groups_name_only_members_with_the_campaigns_profile():
    det = CampaignDetector(CampaignConfig(warmup=0.0))
    # an honest eval harness in the cloud ASN the campaign also uses: implicated-looking on its
    # own (CoT, reasoning topics) but different tooling (greedy, periodic, templated re-runs)
    # (one whose suite grows: 60% new prompts, so the novelty gate leaves it implicated)
    harness = {"cot_share": 0.9, "capability_share": 0.9, "capability_breadth": 0.2,
               "single_turn_share": 1.0, "output_ratio": 0.4, "novelty": 0.6, "template_share": 0.9,
               "sampling_share": 0.0, "rate": 0.9}
    assert member_suspicion(0.25, harness) >= 0.5
    snaps = campaign_snaps(6, {"asn": "64510"}) + campaign_snaps(1, {"asn": "64510"}, feats=harness,
                                                                 prefix="harness")
    snaps.sort(key=lambda s: s["ts"])
    fired = firing(run(det, snaps), "asn")
    assert fired
    named = {k for a in fired for k in a["related_entities"]}
    assert "harness0" not in named and {f"evil{i}" for i in range(6)} <= named
    # on the campaign's own /24 (a narrow group) it is named only when narrow groups name every
    # implicated member (narrow_core off); by default they too name their core tooling
    narrow = [dict(s, groups={"client_net": "198.51.100.0/24"}) for s in snaps]
    for core, expect in ((True, False), (False, True)):
        det2 = CampaignDetector(CampaignConfig(warmup=0.0, narrow_core=core))
        assert ("harness0" in {k for a in firing(run(det2, narrow)) for k in a["related_entities"]}) is expect


def test_a_broad_group_counts_only_its_coherent_core():
    # two campaign keys and two honest eval harnesses in one cloud ASN: four implicated keys but
    # two toolings, not four coordinated keys (harnesses whose suites grow, 60% new prompts,
    # so the novelty gate leaves them implicated)
    harness = {"cot_share": 0.9, "capability_share": 0.9, "capability_breadth": 0.2,
               "single_turn_share": 1.0, "output_ratio": 0.4, "novelty": 0.6, "template_share": 0.9,
               "sampling_share": 0.0, "rate": 0.9}
    snaps = campaign_snaps(2, {"asn": "64510"}) + campaign_snaps(2, {"asn": "64510"}, feats=harness,
                                                                 prefix="harness")
    snaps.sort(key=lambda s: s["ts"])
    assert firing(run(CampaignDetector(CampaignConfig(warmup=0.0)), snaps), "asn") == []
    assert firing(run(CampaignDetector(CampaignConfig(warmup=0.0, broad_core=False)), snaps), "asn")
    # one tooling, four keys: the core is all of them
    same = campaign_snaps(4, {"asn": "64510"})
    assert firing(run(CampaignDetector(CampaignConfig(warmup=0.0)), same), "asn")


def test_only_implicated_keys_that_end_count_as_short_lived():
    det = CampaignDetector(CampaignConfig(warmup=0.0))
    net = {"client_net": "192.0.2.0/24"}
    snaps = [snap(f"user{i}", T0 + i * 10.0, BENIGN, net, first_ts=T0) for i in range(4)]
    snaps += [snap("evil", T0 + 60.0, SCRAPER, net, first_ts=T0)]
    run(det, snaps)
    det.advance(T0 + 2 * 3600.0)  # all ended after a short life
    g = det._groups[("client_net", "192.0.2.0/24")]
    assert len(g.lifetimes) == 1  # the implicated one; the users' short sessions are no churn
    det_all = CampaignDetector(CampaignConfig(warmup=0.0, lifetimes_all=True))
    run(det_all, snaps)
    det_all.advance(T0 + 2 * 3600.0)
    assert len(det_all._groups[("client_net", "192.0.2.0/24")].lifetimes) == 5


def _paused_jobs(cycles=5):
    """Three old batch keys behind one /24 (eval harnesses between runs): each sends a
    10-minute burst once an hour, staggered by 20 min, and is silent (ended) in between."""
    out = [snap("warm", T0, BENIGN, {"asn": "1"})]
    for c in range(cycles):
        for i in range(3):
            for j in range(3):
                ts = T0 + 5400.0 + c * 3600.0 + i * 1200.0 + j * 300.0
                out.append(snap(f"job{i}", ts, SCRAPER, {"client_net": "192.0.2.0/24"},
                                first_ts=T0 + 1800.0))
    out.sort(key=lambda s: s["ts"])
    return out


def test_a_paused_key_that_comes_back_was_not_rotated():
    det = CampaignDetector(CampaignConfig(warmup=3600.0))
    # batch jobs that pause and resume are not rotation: no short-lifetime churn, no campaign
    assert firing(run(det, _paused_jobs())) == []
    g = det._groups[("client_net", "192.0.2.0/24")]
    assert len({m for m, _ in g.lifetimes}) == len(g.lifetimes) <= 2  # one entry per key at most
    # a key that ends and stays away keeps its entry (last bursts end at T0 + 6.3 h)
    det.advance(T0 + 7.2 * 3600.0)
    assert sorted(m for m, _ in g.lifetimes) == ["job0", "job1", "job2"]
    # and withdraws it when it comes back
    det.observe(snap("job1", T0 + 7.2 * 3600.0 + 60.0, SCRAPER, {"client_net": "192.0.2.0/24"},
                     first_ts=T0 + 1800.0))
    assert sorted(m for m, _ in g.lifetimes) == ["job0", "job2"]


def test_state_version_2_with_bare_lifetimes_still_imports():
    det = CampaignDetector(CampaignConfig(warmup=3600.0))
    run(det, _paused_jobs(cycles=1))
    det.advance(T0 + 4 * 3600.0)
    obj = orjson.loads(det.export_state())
    assert any(g[2]["life"] for g in obj["groups"])
    obj["version"] = 2
    for g in obj["groups"]:
        g[2]["life"] = [t for _, t in g[2]["life"]]
    back = CampaignDetector(CampaignConfig(warmup=3600.0))
    back.import_state(orjson.dumps(obj))
    assert all(m == "" for g in back._groups.values() for m, _ in g.lifetimes)
    with pytest.raises(ValueError, match="version"):
        back.import_state(orjson.dumps(dict(obj, version=1)))


def test_keys_that_never_harvest_are_not_implicated():
    # eval harnesses / RAG batches: chain of thought, capability topics, one-shot, but their
    # answers are short next to their prompts, so almost no request is a harvest
    batch = dict(SCRAPER, harvest_share=0.02)
    net = {"client_net": "198.51.100.0/24"}
    assert firing(run(CampaignDetector(CampaignConfig(warmup=0.0)), campaign_snaps(6, net, feats=batch))) == []
    harvesting = dict(SCRAPER, harvest_share=0.4)
    assert firing(run(CampaignDetector(CampaignConfig(warmup=0.0)), campaign_snaps(6, net, feats=harvesting)))
    # a snapshot without the feature is judged as before (degrade, never block)
    assert firing(run(CampaignDetector(CampaignConfig(warmup=0.0)), campaign_snaps(6, net)))
    # and the floor can be switched off
    off = CampaignDetector(CampaignConfig(warmup=0.0, member_harvest=0.0))
    assert firing(run(off, campaign_snaps(6, net, feats=batch)))


def _finished_jobs(with_replacement, replacement_feats=SCRAPER):
    """Six implicated keys behind one /24, none new after warm-up; three of them finish after
    half an hour and never come back. Optionally a new implicated key arrives afterwards."""
    net = {"client_net": "192.0.2.0/24"}
    out = [snap("warm", T0, BENIGN, {"asn": "1"})]
    for i in range(3):
        for j in range(4):
            out.append(snap(f"done{i}", T0 + 700.0 + i * 10.0 + j * 600.0, SCRAPER, net, first_ts=T0 + 60.0))
    for r in range(40):
        for i in range(3):
            out.append(snap(f"old{i}", T0 + 700.0 + i * 10.0 + r * 600.0, SCRAPER, net, first_ts=T0 + 60.0))
    if with_replacement:
        out += [snap("fresh", T0 + 6000.0 + r * 600.0, replacement_feats, net, first_ts=T0 + 5900.0)
                for r in range(6)]
    out.sort(key=lambda s: s["ts"])
    return out


def test_short_lifetimes_count_only_while_new_keys_replace_them():
    det = CampaignDetector(CampaignConfig(warmup=600.0))
    assert firing(run(det, _finished_jobs(False))) == []
    g = det._groups[("client_net", "192.0.2.0/24")]
    assert len(g.lifetimes) == 3  # they ended after short lives, but nothing replaced them
    # the same group with a new implicated key arriving is rotation
    assert firing(run(CampaignDetector(CampaignConfig(warmup=600.0)), _finished_jobs(True)), "client_net")
    # so is a replacement not implicated yet (a fresh key has few requests): suspicious enough
    # to be named by association, below the member threshold
    young = dict(SCRAPER, cot_share=0.15, output_ratio=0.1, single_turn_share=0.6)
    assert 0.2 <= member_suspicion(0.25, young) < 0.5
    det = CampaignDetector(CampaignConfig(warmup=600.0))
    assert firing(run(det, _finished_jobs(True, young)), "client_net")


def test_state_bytes_count_the_lifetime_entries():
    det = CampaignDetector(CampaignConfig(warmup=600.0))
    run(det, _finished_jobs(False))
    g = det._groups[("client_net", "192.0.2.0/24")]
    before = det.stats()["state_bytes"]
    g.lifetimes = []
    assert before - det.stats()["state_bytes"] == 3 * 100


def test_a_pair_running_one_tooling_with_key_churn_opens_a_narrow_group():
    # two implicated keys behind one /48, one of them new after warm-up (a rotation), both with
    # the same behaviour profile: the first keys of an infrastructure campaign, before a third
    warm = [snap("old", T0 + i * 100.0, BENIGN, {"asn": "1"}) for i in range(10)]
    start = T0 + 2 * 3600.0
    other = dict(SCRAPER, template_share=0.95, sampling_share=0.9, temperature_spread=1.0,
                 timing_regularity=0.9, duty_cycle=0.9, rate=0.8, capability_breadth=0.0)

    def fired(cfg, feats=(SCRAPER, SCRAPER), first=(start - 7200.0, start), etype="client_net"):
        snaps = []
        for r in range(4):
            for i in range(2):
                ts = start + r * 300.0 + i * 30.0
                snaps.append(snap(f"evil{i}", ts, feats[i], {etype: "2001:db8:1::/48"}, first_ts=first[i]))
        return firing(run(CampaignDetector(cfg), warm + snaps), etype)

    cfg = CampaignConfig(warmup=600.0)
    assert cfg.min_implicated_alike == 2
    (a, *_) = fired(cfg)
    # the group opens on both; it names the new key, the rotation. The old key only resembles
    # it (an honest reasoning app behind the same /48 would too): the per-key detector's to name
    assert a["related_entities"] == ["evil1"]
    (a, *_) = fired(CampaignConfig(warmup=600.0, name_linked=False))
    assert set(a["related_entities"]) == {"evil0", "evil1"}
    # not two different toolings, not without churn (both keys old), not when switched off,
    # not in a template family (its pairs open by the burst rule), not in a broad group
    assert fired(cfg, feats=(SCRAPER, other)) == []
    assert fired(cfg, first=(start - 7200.0, start - 7000.0)) == []
    assert fired(CampaignConfig(warmup=600.0, min_implicated_alike=3)) == []
    assert fired(cfg, etype="template") == []
    assert fired(cfg, etype="asn") == []


def _activity(minutes, now_min):
    """A snapshot's activity field for requests in ``minutes`` (epoch minutes) as of ``now_min``."""
    mask = 0
    for m in minutes:
        if 0 <= now_min - m < 64:
            mask |= 1 << (now_min - m)
    return {"minute": now_min, "mask": f"{mask:016x}"}


def test_keys_in_step_with_an_implicated_key_are_a_campaign_and_are_named():
    # an orchestrator dispatches a round every 4 minutes to every key it holds behind one /24:
    # two implicated keys of different tooling and one quiet key (mostly cover traffic), all
    # sending in the same minutes. Independent users of the /24 send when they like.
    warm = [snap("old", T0 + i * 100.0, BENIGN, {"asn": "1"}) for i in range(10)]
    start = T0 + 3 * 3600.0
    m0 = int(start // 60)
    other = dict(SCRAPER, template_share=0.95, sampling_share=0.9, temperature_spread=1.0,
                 timing_regularity=0.9, duty_cycle=0.9, rate=0.8, capability_breadth=0.0)
    quiet = dict(BENIGN, cot_share=0.1)

    def fired(cfg, sched=None, feats=(SCRAPER, other, quiet), etype="client_net"):
        rounds = [m0 + 4 * i for i in range(20)]
        sched = sched or (rounds, rounds, rounds)
        snaps = []
        for r in range(6):
            now_min = m0 + 40 + 5 * r
            for i, f in enumerate(feats):
                ts = now_min * 60.0 + 10.0 + i
                s = snap(f"k{i}", ts, f, {etype: "198.51.100.0/24"}, first_ts=start - 3600.0,
                         score=0.05 if f is quiet else 0.25)
                s["activity"] = _activity([m for m in sched[i] if m <= now_min], now_min)
                snaps.append(s)
        return firing(run(CampaignDetector(cfg), warm + snaps), etype)

    cfg = CampaignConfig(warmup=600.0)
    assert member_suspicion(0.05, quiet) < cfg.assoc_floor  # not even a candidate by profile
    alerts = fired(cfg)
    assert alerts, "two implicated keys in step (and a third) must open the /24"
    named = set().union(*(a["related_entities"] for a in alerts))
    assert named == {"k0", "k1", "k2"}  # the quiet key is named by its timing
    sync = [r for r in alerts[0]["reasons"] if r["feature"] == "synchronised_timing"]
    assert sync and "in step" in sync[0]["explanation"]
    # the same keys sending independently: old keys of different tooling, no cross-key evidence
    import random

    rng = random.Random(7)
    indep = tuple(sorted(rng.sample(range(m0, m0 + 70), 16)) for _ in range(3))
    assert fired(cfg, sched=indep) == []
    # busy in the same burst (every minute of the last 12) is not being in step
    burst = [m0 + 58 + i for i in range(13)] + [m0 + 20]
    assert fired(cfg, sched=(burst, burst, burst)) == []
    # switched off, or in a broad group, synchrony counts for nothing
    assert fired(CampaignConfig(warmup=600.0, sync_p=0.0)) == []
    assert fired(cfg, etype="asn") == []


def test_activity_masks_survive_export_and_import_and_bad_ones_are_ignored():
    det = CampaignDetector()
    s = snap("k", T0, SCRAPER, {"client_net": "198.51.100.0/24"})
    s["activity"] = {"minute": int(T0 // 60), "mask": "8000000000000011"}
    det.observe(s)
    for bad in ({"minute": -1, "mask": "11"}, {"minute": 5, "mask": "zz"}, {"minute": "5", "mask": "1"},
                {"mask": "1"}, [1, 2], "x", {"minute": 5, "mask": "1" * 17}):
        det.observe(dict(snap("k", T0 + 1, SCRAPER, {"client_net": "198.51.100.0/24"}), activity=bad))
    again = CampaignDetector()
    again.import_state(det.export_state())
    k = again._keys["k"]
    assert (k.amin, k.amask) == (int(T0 // 60), 0x8000000000000011)


def test_a_narrow_group_names_the_implicated_keys_of_its_core_tooling_not_an_honest_neighbour():
    # three rotating campaign keys and, behind the same /24, an honest eval harness that looks
    # implicated on its own (CoT, capability topics, one-shot) but runs other tooling
    harness = dict(SCRAPER, output_ratio=0.1, capability_breadth=0.0, template_share=0.9,
                   novelty=0.6, timing_regularity=0.9, duty_cycle=0.9, rate=0.9, sampling_share=0.0)
    net = {"client_net": "198.51.100.0/24"}
    snaps = campaign_snaps(3, net) + campaign_snaps(1, net, feats=harness, prefix="harness")
    snaps.sort(key=lambda s: s["ts"])

    def named(cfg):
        alerts = firing(run(CampaignDetector(cfg), snaps), "client_net")
        return set().union(*(a["related_entities"] for a in alerts))

    assert named(CampaignConfig(warmup=0.0)) == {"evil0", "evil1", "evil2"}
    assert "harness0" in named(CampaignConfig(warmup=0.0, narrow_core=False))


@pytest.mark.parametrize("etype", ["client_net", "asn"])
def test_a_long_lived_look_alike_counts_for_the_group_but_only_linked_keys_are_named(etype):
    # after warm-up, three new campaign keys rotate in behind one network; an honest reasoning
    # app that has used the same network all along has the same behaviour profile
    group = {"client_net": "203.0.113.0/24", "asn": "64500"}[etype]
    warm = [snap(f"user{i}", T0 + i * 60.0, BENIGN, {etype: group}, first_ts=T0) for i in range(12)]
    start = T0 + 2 * 3600.0
    snaps = []
    for r in range(4):
        ts = start + r * 300.0
        snaps.append(snap("app", ts, SCRAPER, {etype: group}, first_ts=T0))
        for i in range(3):
            snaps.append(snap(f"evil{i}", ts + 20.0 * (i + 1), SCRAPER, {etype: group}, first_ts=start))

    def named(cfg):
        alerts = firing(run(CampaignDetector(cfg), warm + snaps), etype)
        assert alerts, "the group of four implicated keys, three of them new, must open"
        return set().union(*(a["related_entities"] for a in alerts))

    assert named(CampaignConfig(warmup=600.0)) == {"evil0", "evil1", "evil2"}
    assert named(CampaignConfig(warmup=600.0, name_linked=False)) == {"app", "evil0", "evil1", "evil2"}


def test_a_rotations_new_look_alike_keys_count_as_implicated_in_a_network_group():
    # behind one /24, after warm-up: one new key implicated on its own and two new keys of the
    # same tooling that still hide in their cover traffic (suspicion 0.45 each): a rotation
    warm = [snap("old", T0 + i * 100.0, BENIGN, {"asn": "1"}) for i in range(10)]
    start = T0 + 2 * 3600.0
    loud = dict(SCRAPER, harvest_share=0.6)
    mild = dict(SCRAPER, cot_share=0.3, capability_share=0.55, output_ratio=0.4,
                single_turn_share=0.7, harvest_share=0.3)

    def fired(cfg, feats=(loud, mild, mild), first=(start, start, start)):
        snaps = []
        for r in range(4):
            for i in range(3):
                ts = start + r * 300.0 + i * 30.0
                snaps.append(snap(f"k{i}", ts, feats[i], {"client_net": "198.51.100.0/24"},
                                  first_ts=first[i], score=0.2))
        return firing(run(CampaignDetector(cfg), warm + snaps), "client_net")

    on = CampaignConfig(warmup=600.0, rotation_floor=0.4)
    got = fired(on)
    # it opens on the first look-alike (two of one tooling, with churn: the pair rule) and
    # names the second at a re-fire of the same episode
    assert {m for a in got for m in a["related_entities"]} == {"k0", "k1", "k2"}
    assert len({a["alert_id"] for a in got}) == 1
    for a in got:
        validate_alert(a)
    # off, the lone implicated key is the per-key detector's business
    assert fired(CampaignConfig(warmup=600.0, rotation_floor=1.0)) == []
    # not look-alikes of long standing (honest neighbours), not an old implicated key, not
    # below the floor, not members that never harvest
    assert fired(on, first=(start, start - 7200.0, start - 7200.0)) == []
    assert fired(on, first=(start - 7200.0, start, start)) == []
    assert fired(CampaignConfig(warmup=600.0, rotation_floor=0.46)) == []
    never = dict(mild, harvest_share=0.0)
    assert fired(on, feats=(loud, never, never)) == []
