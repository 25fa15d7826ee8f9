"""Campaign detection: groups of API keys that jointly look like distillation.

Large distillation campaigns spread their traffic over many keys and accounts, each at ordinary
volume, and rotate the keys every hour or two, so no single key crosses a per-key threshold. The
per-key engine (:mod:`models.engine`) emits *member snapshots*, at most one per key evaluation;
:class:`CampaignDetector` re-keys them by every grouping attribute the snapshot carries (account,
client network prefix, ASN, prompt-template family, user agent) and judges each group by what its
members *do*, never by its size:

* how many members, and what share of them (a one-sided Wilson lower bound, so two keys out of
  three is not "67 %"), look distillation-like on their own features, even weakly;
* evidence that only exists across keys: the same template families used by different keys,
  reasoning domains swept jointly (one key does math, another code), bursts of new keys, short
  key lifetimes (rotation);
* analyst verdicts from a :class:`~models.feedback.FeedbackBook`, for the group and for each key.

A carrier NAT with thousands of ordinary users has a tiny implicated share, so it does not fire
however many keys it holds; user-agent groups (SDK defaults are shared by everyone) are weak
evidence and need a higher score. State is bounded: at most ``max_groups`` groups (least recently
seen evicted), ``max_members_per_group`` members per group and ``max_keys`` key summaries, with
eviction counters in :meth:`CampaignDetector.stats`.

The detector is a pure state machine in event time: :meth:`CampaignDetector.observe` for each
snapshot, :meth:`CampaignDetector.advance` for housekeeping (expiry, resolving quiet episodes).
Both return Alert v1 dicts with ``detected_at = 0.0`` for the driver to stamp.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

from models.feedback import FeedbackBook
from models.policy import collection_gate

__all__ = [
    "CAMPAIGN_MODEL_VERSION",
    "CAMPAIGN_STATE_VERSION",
    "GROUP_TYPES",
    "CampaignConfig",
    "CampaignDetector",
    "campaign_alert_id",
    "member_suspicion",
]

#: ``model_version`` stamped on campaign alerts.
CAMPAIGN_MODEL_VERSION = "campaign-11"
#: Version of the bytes written by :meth:`CampaignDetector.export_state`.
CAMPAIGN_STATE_VERSION = 3
#: Older state versions :meth:`CampaignDetector.import_state` still reads.
_READABLE_STATE_VERSIONS = (2, 3)
#: Grouping attributes, in the order groups are evaluated (the Alert v1 ``entity_type``).
GROUP_TYPES = ("account", "client_net", "asn", "template", "user_agent")

_HIGH_VALUE_DOMAINS = ("reasoning", "code", "math", "science")


def campaign_alert_id(entity_type: str, entity: str, episode_seq: int) -> str:
    """Deterministic id of one campaign episode (32 hex characters).

    Examples
    --------
    >>> campaign_alert_id("template", "b2:9f3a", 1) == campaign_alert_id("template", "b2:9f3a", 1)
    True
    >>> len(campaign_alert_id("asn", "64500", 3))
    32
    """
    return hashlib.blake2b(
        f"{entity_type}|{entity}|campaign|{episode_seq}".encode(), digest_size=16
    ).hexdigest()


# --- member features ---------------------------------------------------------------------
#
# The engine's feature names may evolve; each indicator lists the names it accepts, first found
# wins. A missing feature is simply left out of the mean (degrade, never crash).

_FEATURE_ALIASES: dict[str, tuple[str, ...]] = {
    "cot": ("cot_share", "cot_request_share"),
    "single_turn": ("single_turn_share",),
    "template": ("template_share", "template_rate", "near_dup_rate"),
    "sampling": ("sampling_share", "logprobs_share"),
    "output": ("output_ratio",),  # already 0..1 in the engine's direction features
    "ratio": ("completion_prompt_ratio",),  # plain completion/prompt ratio
    "breadth": ("capability_breadth", "topic_coverage"),
    "high_value": ("capability_share", "high_value_share"),
    "harvest": ("harvest_share",),  # the engine's share of requests that harvest (0..1)
    "novelty": ("novelty",),  # share of never-seen prompts (0..1)
    "sampled": ("sampled_decoding",),  # share of requests sampled at temperature > 0 (0..1)
}
_DOMAIN_ALIASES: dict[str, tuple[str, ...]] = {
    d: (f"{d}_share", f"topic_{d}_share", f"share_{d}", f"topic_{d}") for d in _HIGH_VALUE_DOMAINS
}


#: Behaviour profile compared between members (the engine's direction features, each 0..1).
PROFILE_FEATURES = (
    "cot_share",
    "capability_share",
    "capability_breadth",
    "single_turn_share",
    "output_ratio",
    "novelty",
    "template_share",
    "sampling_share",
    "temperature_spread",
    "timing_regularity",
    "duty_cycle",
    "rate",
)


def _profile(features: Mapping[str, Any]) -> tuple[float, ...]:
    """The member's profile vector; NaN marks a missing feature (skipped in distances)."""
    out = []
    for n in PROFILE_FEATURES:
        v = _finite(features.get(n))
        out.append(math.nan if v is None else _clip01(v))
    return tuple(out)


def _distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Mean absolute difference over the features both profiles have (inf when none)."""
    tot = 0.0
    n = 0
    for x, y in zip(a, b, strict=False):  # a key restored from old state may be shorter
        if x == x and y == y:  # not NaN
            tot += abs(x - y)
            n += 1
    return tot / n if n else math.inf


def _finite(v: Any) -> float | None:
    if type(v) in (int, float) and math.isfinite(v):
        return float(v)
    return None


def _pick(features: Mapping[str, Any], names: tuple[str, ...]) -> float | None:
    for n in names:
        v = _finite(features.get(n))
        if v is not None:
            return v
    return None


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def domain_shares(features: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """Shares of the four high-value domains (reasoning, code, math, science); 0 when missing."""
    out = []
    for d in _HIGH_VALUE_DOMAINS:
        v = _pick(features, _DOMAIN_ALIASES[d])
        out.append(_clip01(v) if v is not None else 0.0)
    return (out[0], out[1], out[2], out[3])


def member_suspicion(score: float, features: Mapping[str, Any]) -> float:
    """How distillation-like one key looks on its own, 0..1, in the scraping direction only.

    A blend of the engine's per-key score and the mean of the directional indicators present:
    chain-of-thought share, high-value domain share, single-turn share, templated prompts,
    logprobs / n > 1 sampling, long completions for short prompts. Every indicator only raises
    suspicion when it moves toward scraping; a missing one is left out. The blend is then gated
    as the engine gates its score: by ``0.3 + 0.7 * novelty`` (a key re-running its own prompts
    collects nothing new) and ``0.5 + 0.5 * sampled_decoding`` (greedy decoding, the eval
    harness's and CI suite's way, is one answer per prompt, not its distribution); a missing
    gate feature leaves the blend as it is.

    Examples
    --------
    >>> member_suspicion(0.1, {})
    0.1
    >>> member_suspicion(0.2, {"cot_share": 0.9, "single_turn_share": 1.0, "reasoning_share": 0.5,
    ...                        "math_share": 0.4}) > member_suspicion(0.2, {"cot_share": 0.0})
    True
    """
    s = _clip01(_finite(score) or 0.0)
    core: list[float] = []  # the tells every harvest shows
    cot = _pick(features, _FEATURE_ALIASES["cot"])
    if cot is not None:
        core.append(_clip01(cot / 0.6))
    hv = _pick(features, _FEATURE_ALIASES["high_value"])
    if hv is None and any(_pick(features, _DOMAIN_ALIASES[d]) is not None for d in _HIGH_VALUE_DOMAINS):
        hv = sum(domain_shares(features))
    if hv is not None:
        core.append(_clip01((hv - 0.3) / 0.5))
    st = _pick(features, _FEATURE_ALIASES["single_turn"])
    if st is not None:
        core.append(_clip01((st - 0.5) / 0.45))
    out = _pick(features, _FEATURE_ALIASES["output"])
    if out is None:
        ratio = _pick(features, _FEATURE_ALIASES["ratio"])
        if ratio is not None:
            # completions 8x longer than prompts (log2 ratio 3) count as fully suspicious
            out = math.log2(max(ratio, 1e-6)) / 3.0
    if out is not None:
        core.append(_clip01(out))
    # tells that only add: many harvesters never template or sample, and their absence is
    # no evidence of innocence (averaging a 0 in would hide them)
    bonus = 0.0
    tm = _pick(features, _FEATURE_ALIASES["template"])
    if tm is not None:
        bonus = max(bonus, _clip01(tm / 0.5))
    sp = _pick(features, _FEATURE_ALIASES["sampling"])
    if sp is not None:
        bonus = max(bonus, _clip01(sp / 0.3))
    if not core:
        return s
    f = _clip01(sum(core) / len(core) + 0.25 * bonus * (sum(core) / len(core)))
    # the engine's own gate: a key that re-runs its prompts or decodes greedily (eval
    # harnesses, CI suites) is not collecting new answers to learn from
    nov = _pick(features, _FEATURE_ALIASES["novelty"])
    sam = _pick(features, _FEATURE_ALIASES["sampled"])
    f *= collection_gate(math.nan if nov is None else _clip01(nov), math.nan if sam is None else _clip01(sam))
    # the engine score can only add: a key it already half-suspects is more implicated
    return _clip01(max(s, 0.75 * f + 0.25 * s))


# --- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignConfig:
    """Hyperparameters of :class:`CampaignDetector`, validated at construction.

    Parameters
    ----------
    max_groups
        Groups held at once over all types; the least recently seen is evicted beyond it.
    max_members_per_group
        Member keys remembered per group (least recently seen evicted); ``related_total`` still
        counts every member seen while the group lives.
    max_keys
        Per-key summaries held (least recently seen evicted).
    member_ttl
        Seconds of event time after its last snapshot that a key stays a group member.
    idle_gap
        Seconds without a snapshot after which a key counts as ended (for lifetimes).
    eval_interval
        Minimum event-time seconds between two evaluations of the same group.
    housekeeping_interval
        Minimum event-time seconds between two expiry sweeps in :meth:`CampaignDetector.advance`.
    member_threshold
        Member suspicion at or above which a key counts as implicated.
    min_implicated
        Implicated members a group needs before it can open an episode.
    min_share
        Lower confidence bound of the implicated share a group needs (judging by members,
        not by size).
    open_score, close_score
        Group score to open an episode, and below which it counts as quiet (hysteresis).
    quiet_resolve
        Event-time seconds an episode must stay quiet before it resolves.
    refire_interval
        Minimum event-time seconds between two firing updates of one episode.
    new_key_window
        A member first seen within this many seconds counts as new.
    warmup
        Seconds after the detector's first snapshot before "new key" evidence counts (at start
        every key looks new).
    short_lifetime
        Keys that ended after living less than this many seconds count as short-lived. Short
        lives are rotation only while new keys arrive that are implicated or at least
        ``assoc_floor`` suspicious (keys that end *and are replaced*); a key that sends again
        after a pause withdraws its lifetime.
    type_weights
        Multiplier of the group score per grouping type (user agents are weak evidence).
    fp_raise
        How much a false-positive verdict raises the open score of that entity.
    max_related
        Member keys named per alert (Alert v1 allows at most 100).
    max_family_keys
        Largest template family (keys linked through confirmed prompt matches between
        implicated keys); a merge that would exceed it is refused, so one common prompt cannot
        chain everything together.
    match_bits
        Two prompts of different keys are the same template when their 64-bit SimHashes differ
        in at most this many bits. Chance agreement of unrelated 64-bit hashes within 10 bits is
        about 1e-8 per pair, so a match is shared content, never a band collision.
    hash_window
        Recent prompt SimHashes held for cross-key matching (a ring; CPU per snapshot and memory
        grow with it, about 20 bytes each). Only keys at or above ``assoc_floor`` are indexed.
    link_threshold
        Member suspicion at or above which a key's cross-key prompt matches link template
        families (and count as evidence for its partners). Linking only forms the group: the
        group still needs ``min_implicated`` members at ``member_threshold`` to fire.
    template_min_matches, template_min_share
        A member below ``member_threshold`` is named by a firing template family when its
        prompts matched implicated keys' prompts at least ``template_min_matches`` times and in
        at least ``template_min_share`` of its indexed prompts, and it harvests (its
        ``harvest_share``, when reported, is at least ``member_harvest``): it routinely sends the
        campaign's templates, where a light user only now and then sends a popular prompt (one
        the campaign's cover traffic may send too) and gets short answers.
    lifetimes_all
        Count the lifetimes of every ended member toward key churn; by default only members
        implicated when they ended count (an ordinary user's short session is no rotation).
    broad_core
        A broad group (ASN, user agent) counts only its *core*: implicated members within
        ``assoc_distance`` of the medoid profile, so unrelated suspicious customers of one
        cloud ASN do not add up to a campaign.
    narrow_core
        An account or network group with three or more implicated members names only those of
        its core tooling (within ``assoc_distance`` of the medoid, as ``broad_core`` counts a
        broad group's), those in step with another member, and confirmed ones: an honest eval
        harness behind the same /24 as a campaign looks implicated on its own but is not named.
        The group is still judged on all its implicated members.
    name_linked
        An account, network or broad group (not a template family, whose members are linked by
        their prompts) names only implicated members with evidence of coordination: in step
        with another member, sharing a template family with another implicated key, new (first
        seen within ``new_key_window``, after warm-up), or confirmed. A long-lived key that only
        resembles the campaign's profile (an honest reasoning app behind the campaign's /24 or
        in its cloud ASN) still counts toward the group's judgement but is the per-key
        detector's to name.
    rotation_floor
        In an account or network group with a *new* implicated key (first seen within
        ``new_key_window``, after warm-up), other new members at or above this suspicion that
        harvest and run the implicated keys' tooling (within ``assoc_distance`` of their
        centroid profile) count as implicated: a rotation's fresh keys, each still hiding in
        its cover traffic, behind one network. 1.0 switches it off.
    require_joint
        After warm-up, a group opens only with evidence that exists across keys: implicated keys
        sharing a template family, or key churn (new keys, short lifetimes). Share and
        suspicion alone describe independent suspicious keys, which the per-key detector judges.
    min_implicated_new, new_suspicion
        A narrow group may open with only ``min_implicated_new`` implicated keys when one of
        them is new (first seen within ``new_key_window``, after warm-up; all of them with
        ``burst_all_new``), they share a template family and each has member suspicion at least
        ``new_suspicion``: a campaign's first keys, or its first rotation, before a third one
        has matched. ``min_implicated_new`` >= ``min_implicated`` switches it off.
    burst_all_new
        The burst rule above asks for every implicated key to be new, not just one.
    min_implicated_alike
        An account or network group (not a template family, not a broad group) may open with
        only this many implicated keys when all of them run one tooling (each within
        ``assoc_distance`` of the medoid profile) and churn or shared templates are actually
        seen (before warm-up their absence does not count for these): an infrastructure
        campaign's first rotation, two keys at a time. ``>= min_implicated`` switches it off.
        Implicated keys that send in synchronised minutes (below) count as one tooling too.
    sync_p, sync_min_minutes, sync_min_overlap
        Synchronised timing in an account or network group. Each snapshot carries the key's
        active minutes of the last hour (a 64-bit mask). Two members are synchronised when they
        were active in the same minutes more often than chance allows: the one-sided
        hypergeometric p-value of their shared active minutes, over the >= ``sync_min_minutes``
        minutes both were alive, is at most ``sync_p``, with at least ``sync_min_overlap``
        shared minutes. An orchestrator that dispatches rounds to its keys shows this; keys of
        independent users do not (two keys active in every minute share no information and
        never pass). A member synchronised with an implicated key is named by association
        whatever its own suspicion, and synchronised implicated keys are cross-key evidence.
        ``sync_p`` 0 switches it off.
    member_harvest
        A key counts as implicated only if at least this share of its requests are harvests
        (the engine's ``harvest_share``: a capability topic answered at >= 2.5x the prompt's
        length), when the snapshot reports it. Distillation needs the model's answers; eval
        harnesses (one-token log-likelihood items), RAG batches (long prompts, short answers)
        and coding agents look scraping-like on chain of thought, capability topics and one-shot
        requests, but almost never harvest. Below it a key can still be named by association,
        unless it has sent enough requests to be confident it harvests less than this (the
        one-sided 95% Wilson upper bound of its share under the floor; campaign-10).
    assoc_floor, assoc_distance
        While a group fires, a member below ``member_threshold`` is still named when its
        suspicion is at least ``assoc_floor`` and its behaviour profile lies within
        ``assoc_distance`` (mean absolute difference per direction feature) of the implicated
        members' centroid: the same tooling, with more cover traffic. Not a member whose
        requests show it almost never harvests (see ``member_harvest``): a coding agent of long
        standing behind the campaign's /24 can sit within the distance on the features both
        leave at zero.
    """

    max_groups: int = 50_000
    max_members_per_group: int = 512
    max_keys: int = 200_000
    member_ttl: float = 7200.0
    idle_gap: float = 1800.0
    eval_interval: float = 30.0
    housekeeping_interval: float = 60.0
    member_threshold: float = 0.5
    min_implicated: int = 3
    min_share: float = 0.25
    open_score: float = 0.55
    close_score: float = 0.4
    quiet_resolve: float = 1800.0
    refire_interval: float = 300.0
    new_key_window: float = 3600.0
    warmup: float = 3600.0
    short_lifetime: float = 3 * 3600.0
    type_weights: Mapping[str, float] = field(
        default_factory=lambda: {
            "account": 1.0,
            "client_net": 1.0,
            "asn": 0.9,
            "template": 1.0,
            "user_agent": 0.6,
        }
    )
    fp_raise: float = 0.2
    max_related: int = 100
    max_family_keys: int = 512
    match_bits: int = 10
    hash_window: int = 8192
    template_min_matches: int = 2
    link_threshold: float = 0.5
    template_min_share: float = 0.2
    assoc_floor: float = 0.2
    assoc_distance: float = 0.2
    require_joint: bool = True
    lifetimes_all: bool = False
    broad_core: bool = True
    min_implicated_new: int = 2
    new_suspicion: float = 0.55
    min_implicated_alike: int = 2
    sync_p: float = 1e-6
    narrow_core: bool = True
    burst_all_new: bool = False
    sync_min_minutes: int = 20
    sync_min_overlap: int = 4
    member_harvest: float = 0.1
    name_linked: bool = True
    rotation_floor: float = 0.4

    def __post_init__(self) -> None:
        for name in ("max_groups", "max_members_per_group", "max_keys", "min_implicated", "max_related",
                     "max_family_keys", "hash_window", "template_min_matches", "min_implicated_new",
                     "min_implicated_alike", "sync_min_minutes", "sync_min_overlap"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if type(self.match_bits) is not int or not 0 <= self.match_bits <= 24:
            raise ValueError(f"match_bits must be an integer in [0, 24], got {self.match_bits!r}")
        for name in ("require_joint", "lifetimes_all", "broad_core", "narrow_core", "burst_all_new",
                     "name_linked"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.max_related > 100:
            raise ValueError(f"max_related must be <= 100 (Alert v1 bound), got {self.max_related}")
        for name in (
            "member_ttl",
            "idle_gap",
            "eval_interval",
            "housekeeping_interval",
            "quiet_resolve",
            "refire_interval",
            "new_key_window",
            "warmup",
            "short_lifetime",
        ):
            v = getattr(self, name)
            if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {v!r}")
        for name in ("member_threshold", "min_share", "open_score", "close_score", "fp_raise",
                     "assoc_floor", "assoc_distance", "template_min_share", "link_threshold",
                     "new_suspicion", "member_harvest", "sync_p", "rotation_floor"):
            v = getattr(self, name)
            if type(v) not in (int, float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.close_score > self.open_score:
            raise ValueError(
                f"close_score ({self.close_score}) must not exceed open_score ({self.open_score})"
            )
        unknown = set(self.type_weights) - set(GROUP_TYPES)
        missing = set(GROUP_TYPES) - set(self.type_weights)
        if unknown or missing:
            raise ValueError(
                f"type_weights must name exactly {', '.join(GROUP_TYPES)} "
                f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})"
            )
        for k, w in self.type_weights.items():
            if type(w) not in (int, float) or not 0.0 <= w <= 1.0:
                raise ValueError(f"type_weights[{k!r}] must be in [0, 1], got {w!r}")
        # frozen, and a private copy: a caller mutating its dict later changes nothing here
        object.__setattr__(self, "type_weights", dict(self.type_weights))


# --- state -------------------------------------------------------------------------------


class _Key:
    """What the detector remembers of one api_key (one copy, shared by all its groups)."""

    __slots__ = (
        "first_ts", "last_ts", "events", "score", "susp", "cot", "breadth", "doms", "fam", "xmatch",
        "nhash", "partners", "ended", "vec", "harv", "amin", "amask",
    )

    def __init__(self, first_ts: float, last_ts: float) -> None:
        self.first_ts = first_ts
        self.last_ts = last_ts
        self.events = 0
        self.score = 0.0
        self.susp = 0.0
        self.cot: float | None = None
        self.breadth: float | None = None
        self.doms: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
        self.fam: str | None = None  # template family id (resolve with CampaignDetector._find)
        self.xmatch = 0  # matches (<= match_bits) between this key's prompts and implicated keys'
        self.nhash = 0  # distinct prompt SimHashes this key has had indexed
        # recent keys whose prompts matched this key's, with the matched SimHash: linked once
        # both are implicated, even if one of them was not yet when the prompts matched
        self.partners: tuple[tuple[str, int], ...] = ()
        self.ended = False
        self.vec: tuple[float, ...] = ()
        self.harv: float | None = None  # share of the key's requests that harvest, if reported
        self.amin = -1  # minute (epoch // 60) of the activity mask's bit 0; -1 = not reported
        self.amask = 0  # active minutes of the last hour, bit i = minute amin - i

    def to_list(self) -> list[Any]:
        return [
            self.first_ts,
            self.last_ts,
            self.events,
            self.score,
            self.susp,
            self.cot,
            self.breadth,
            list(self.doms),
            self.fam,
            self.xmatch,
            self.nhash,
            [[p, f"{h:016x}"] for p, h in self.partners],
            self.ended,
            list(self.vec),
            self.harv,
            [self.amin, f"{self.amask:016x}"],
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> _Key:
        k = cls(float(v[0]), float(v[1]))
        k.events = int(v[2])
        k.score = float(v[3])
        k.susp = float(v[4])
        k.cot = None if v[5] is None else float(v[5])
        k.breadth = None if v[6] is None else float(v[6])
        d = [float(x) for x in v[7]]
        k.doms = (d[0], d[1], d[2], d[3])
        k.fam = None if v[8] is None else str(v[8])
        k.xmatch = int(v[9])
        k.nhash = int(v[10])
        k.partners = tuple((str(p), int(h, 16)) for p, h in v[11])
        k.ended = bool(v[12])
        # NaN (a missing feature) is written as null by orjson
        k.vec = tuple(math.nan if x is None else float(x) for x in v[13])
        k.harv = None if len(v) < 15 or v[14] is None else float(v[14])  # absent in version 2
        if len(v) > 15:  # absent before campaign-4 (same state version: an optional field)
            k.amin, k.amask = int(v[15][0]), int(v[15][1], 16) & _MASK64
        return k


class _Group:
    """One grouping value: its members (key -> last seen) and its episode."""

    __slots__ = (
        "members",
        "seen_total",
        "last_ts",
        "last_eval",
        "lifetimes",
        "open",
        "seq",
        "opened_ts",
        "last_fire",
        "severity",
        "score",
        "quiet_since",
        "named",
        "bar",
        "covered_by",
    )

    def __init__(self) -> None:
        self.members: OrderedDict[str, float] = OrderedDict()
        self.seen_total = 0
        self.last_ts = -math.inf
        self.last_eval = -math.inf
        # ended implicated members as (key, lifetime), one entry per key, bounded; an entry is
        # withdrawn when its key comes back (a paused job was not rotated out)
        self.lifetimes: list[tuple[str, float]] = []
        self.open = False
        self.seq = 0
        self.opened_ts = 0.0
        self.last_fire = -math.inf
        self.severity = "info"
        self.score = 0.0
        self.quiet_since: float | None = None
        self.named: set[str] = set()
        self.bar = 0.0  # extra open score demanded after a false-positive verdict
        self.covered_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "m": [[k, t] for k, t in self.members.items()],
            "n": self.seen_total,
            "lt": self.last_ts if math.isfinite(self.last_ts) else None,
            "le": self.last_eval if math.isfinite(self.last_eval) else None,
            "life": [[k, t] for k, t in self.lifetimes],
            "open": self.open,
            "seq": self.seq,
            "ots": self.opened_ts,
            "lf": self.last_fire if math.isfinite(self.last_fire) else None,
            "sev": self.severity,
            "sc": self.score,
            "qs": self.quiet_since,
            "named": sorted(self.named),
            "bar": self.bar,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Group:
        g = cls()
        g.members = OrderedDict((str(k), float(t)) for k, t in d["m"])
        g.seen_total = int(d["n"])
        g.last_ts = -math.inf if d["lt"] is None else float(d["lt"])
        g.last_eval = -math.inf if d["le"] is None else float(d["le"])
        # version 2 wrote bare lifetimes without their key
        g.lifetimes = [("", float(x)) if type(x) in (int, float) else (str(x[0]), float(x[1]))
                       for x in d["life"]]
        g.open = bool(d["open"])
        g.seq = int(d["seq"])
        g.opened_ts = float(d["ots"])
        g.last_fire = -math.inf if d["lf"] is None else float(d["lf"])
        g.severity = str(d["sev"])
        g.score = float(d["sc"])
        g.quiet_since = None if d["qs"] is None else float(d["qs"])
        g.named = set(map(str, d["named"]))
        g.bar = float(d["bar"])
        return g


#: Grouping types shared by many unrelated customers (a cloud ASN, an SDK's default user agent).
_BROAD = ("asn", "user_agent")
#: Narrow groups joined by infrastructure, not by prompts (rotation_floor applies to them).
_NARROW_NET = ("account", "client_net")
#: Groups whose members are compared for synchronised timing: one customer's own accounts and
#: networks. A template family is already linked by content; broad groups hold unrelated
#: customers, where chance coincidences grow with the member count.
_TIMING = ("account", "client_net")
_MASK64 = (1 << 64) - 1
_SEV_RANK = {"info": 0, "warning": 1, "critical": 2}
_MAX_LIFETIMES = 32
_MAX_NAMED = 4096
_BYTES_PER_KEY = 360
_BYTES_PER_MEMBER = 120
_BYTES_PER_GROUP = 600
_BYTES_PER_FAMILY = 200
_BYTES_PER_LIFETIME = 100  # (api_key, lifetime) of an ended implicated member, <= 32 per group


def _activity(v: Any) -> tuple[int, int] | None:
    """``(minute, mask)`` from a snapshot's ``activity`` (``{"minute": int, "mask": "16 hex"}``),
    or None when it is missing or malformed."""
    if not isinstance(v, Mapping):
        return None
    m, h = v.get("minute"), v.get("mask")
    if type(m) is not int or m < 0 or type(h) is not str or not 0 < len(h) <= 16:
        return None
    try:
        return m, int(h, 16)
    except ValueError:
        return None


def _hyper_tail(n: int, a: int, b: int, c: int) -> float:
    """P(X >= c) for X ~ Hypergeometric(population n, a marked, b drawn): the chance that two
    keys, active in ``a`` and ``b`` of the same ``n`` minutes independently, share ``c`` or more.

    >>> _hyper_tail(60, 15, 15, 15) < 1e-12   # every active minute shared
    True
    >>> round(_hyper_tail(60, 15, 15, 4), 2)  # about the 3.75 expected by chance
    0.56
    >>> _hyper_tail(60, 60, 15, 15)  # one key active every minute: sharing says nothing
    1.0
    """
    total = math.comb(n, b)
    tail = 0
    for k in range(c, min(a, b) + 1):
        tail += math.comb(a, k) * math.comb(n - a, b - k)
    return tail / total


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval ``(lower, upper)`` of a proportion observed as ``p`` over ``n``."""
    p = min(1.0, max(0.0, p))
    z2 = z * z
    den = 1.0 + z2 / n
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / den), min(1.0, (centre + spread) / den)


def _wilson_lower(k: int, n: int, z: float = 1.645) -> float:
    """One-sided lower confidence bound of a proportion k/n."""
    return _wilson(k / n, n, z)[0] if n > 0 else 0.0


def _wilson_upper(p: float, n: int, z: float = 1.645) -> float:
    """One-sided upper confidence bound of a proportion observed as ``p`` over ``n`` trials."""
    return _wilson(p, n, z)[1] if n > 0 else 1.0


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return 0.0
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _simhashes(v: Any) -> list[int]:
    """The snapshot's prompt SimHashes as ints (at most 8; bad entries skipped)."""
    out: list[int] = []
    if not isinstance(v, (list, tuple)):
        return out
    for x in v[:8]:
        if type(x) is str and len(x) == 16:
            try:
                h = int(x, 16)
            except ValueError:
                continue
            if h and h not in out:
                out.append(h)
    return out


_MAX_PARTNERS = 8


def _remember(partners: tuple[tuple[str, int], ...], key: str, h: int) -> tuple[tuple[str, int], ...]:
    """Add (key, hash) as the most recent partner; at most _MAX_PARTNERS, oldest dropped."""
    kept = tuple(x for x in partners if x[0] != key)
    return (kept + ((key, h),))[-_MAX_PARTNERS:]


def _key_tag(key: str) -> int:
    """A stable 32-bit tag of an api_key (not ``hash()``, which changes per process)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


def _group_values(groups: Any) -> list[tuple[str, str]]:
    """(type, value) pairs of a snapshot's ``groups``; bad or missing values are skipped."""
    out: list[tuple[str, str]] = []
    if type(groups) is not dict:
        return out
    for t in GROUP_TYPES:
        v = groups.get(t)
        if v is None:
            continue
        if t == "template":
            continue  # template families come from the snapshot's simhashes (_link_templates)
        if type(v) is int and type(v) is not bool:
            v = str(v)
        if type(v) is str and v:
            out.append((t, v))
    return out


class CampaignDetector:
    """Group-level distillation detection over per-key member snapshots.

    Parameters
    ----------
    config
        A :class:`CampaignConfig`; defaults when ``None``.
    feedback
        A :class:`~models.feedback.FeedbackBook` asked for verdicts on groups and member keys;
        an empty book when ``None``. The caller may keep applying records to it while the
        detector runs.

    Examples
    --------
    >>> det = CampaignDetector(CampaignConfig(warmup=0.0))
    >>> out = []
    >>> for i in range(6):
    ...     out += det.observe({"api_key": f"k{i}", "ts": 1000.0 + 60 * i, "first_ts": 990.0 + 60 * i,
    ...                         "events": 30, "score": 0.3,
    ...                         "features": {"cot_share": 0.9, "reasoning_share": 0.5,
    ...                                      "math_share": 0.3, "single_turn_share": 1.0},
    ...                         "groups": {"client_net": "203.0.113.0/24"}})
    >>> [(a["entity_type"], a["status"], a["related_total"]) for a in out][:1]
    [('client_net', 'firing', 2)]
    >>> det.stats()["open_episodes"]
    1
    """

    def __init__(self, config: CampaignConfig | None = None, *, feedback: FeedbackBook | None = None) -> None:
        if config is None:
            config = CampaignConfig()
        if not isinstance(config, CampaignConfig):
            raise TypeError(f"config must be a CampaignConfig, got {type(config).__name__}")
        self.config = config
        self.feedback = feedback if feedback is not None else FeedbackBook()
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self._groups: OrderedDict[tuple[str, str], _Group] = OrderedDict()
        # episode counters survive group eviction so an evicted-and-returning group never
        # reuses an alert_id (bounded: only groups that ever opened an episode are kept)
        self._seqs: dict[tuple[str, str], int] = {}
        # template families: union-find over family ids, sizes in keys
        self._band_parent: OrderedDict[str, str] = OrderedDict()
        self._family_size: dict[str, int] = {}
        # recent prompt SimHashes of suspicious-enough keys, a ring of hash_window entries
        w = config.hash_window
        self._hh = np.zeros(w, dtype=np.uint64)
        self._htag = np.zeros(w, dtype=np.uint32)
        self._hts = np.full(w, -np.inf)
        self._hmatched = np.zeros(w, dtype=bool)  # the entry matched an implicated key's prompt
        self._hkey: list[str | None] = [None] * w
        self._hpos = 0
        self._start_ts: float | None = None
        self._now = -math.inf
        self._last_sweep = -math.inf
        self._evicted = 0
        self._snapshots = 0

    # --- public API --------------------------------------------------------------------

    def observe(self, snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Take one member snapshot; return the campaign alerts it causes (maybe none)."""
        if not isinstance(snapshot, Mapping):
            return []
        key = snapshot.get("api_key")
        ts = _finite(snapshot.get("ts"))
        if type(key) is not str or not key or ts is None:
            return []
        cfg = self.config
        self._snapshots += 1
        if self._start_ts is None:
            self._start_ts = ts
        if ts > self._now:
            self._now = ts
        first_ts = _finite(snapshot.get("first_ts"))
        if first_ts is None or first_ts > ts:
            first_ts = ts
        features = snapshot.get("features")
        if not isinstance(features, Mapping):
            features = {}
        score = _clip01(_finite(snapshot.get("score")) or 0.0)

        k = self._keys.get(key)
        if k is None:
            k = _Key(first_ts, ts)
            self._keys[key] = k
            if len(self._keys) > cfg.max_keys:
                self._keys.popitem(last=False)
                self._evicted += 1
        else:
            self._keys.move_to_end(key)
            k.first_ts = min(k.first_ts, first_ts)
        k.last_ts = max(k.last_ts, ts)
        # a key that had ended (or was forgotten after member_ttl) and sends again was paused,
        # not rotated out: its lifetime entries are withdrawn below
        resumed = k.ended or k.events == 0
        k.ended = False
        ev = snapshot.get("events")
        if type(ev) is int and ev >= 0:
            k.events = max(k.events, ev)
        else:
            k.events += 1
        k.score = score
        k.susp = member_suspicion(score, features)
        k.cot = _pick(features, _FEATURE_ALIASES["cot"])
        k.breadth = _pick(features, _FEATURE_ALIASES["breadth"])
        k.doms = domain_shares(features)
        k.vec = _profile(features)
        harv = _pick(features, _FEATURE_ALIASES["harvest"])
        k.harv = None if harv is None else _clip01(harv)
        act = _activity(snapshot.get("activity"))
        if act is not None and act[0] >= k.amin:
            k.amin, k.amask = act[0], act[1] & _MASK64
        gvals = _group_values(snapshot.get("groups"))

        alerts: list[dict[str, Any]] = []
        extra: dict[tuple[str, str], list[str]] = {}
        hashes = _simhashes(snapshot.get("simhashes"))
        if hashes:
            for root, partners in self._link_templates(key, k, hashes, ts, alerts):
                gvals.append(("template", root))
                extra[("template", root)] = partners
        for gk in gvals:
            g = self._groups.get(gk)
            if g is None:
                g = _Group()
                self._groups[gk] = g
                if len(self._groups) > cfg.max_groups:
                    self._evict_group()
            else:
                self._groups.move_to_end(gk)
            if key in g.members:
                g.members.move_to_end(key)
            else:
                g.seen_total += 1
                if len(g.members) >= cfg.max_members_per_group:
                    g.members.popitem(last=False)
                    self._evicted += 1
            g.members[key] = ts
            if resumed and g.lifetimes:
                # the key paused (a batch job between runs) and came back: it did not end
                g.lifetimes = [x for x in g.lifetimes if x[0] != key]
            for p in extra.get(gk, ()):
                # a partner just linked into the family is a member from its last snapshot on
                pk = self._keys.get(p)
                if pk is not None and p not in g.members and ts - pk.last_ts <= cfg.member_ttl:
                    g.seen_total += 1
                    if len(g.members) >= cfg.max_members_per_group:
                        g.members.popitem(last=False)
                        self._evicted += 1
                    g.members[p] = pk.last_ts
            g.last_ts = max(g.last_ts, ts)
            if ts - g.last_eval >= cfg.eval_interval:
                g.last_eval = ts
                alerts.extend(self._evaluate(gk, g, ts))
        return alerts

    def advance(self, now_ts: float) -> list[dict[str, Any]]:
        """Event-time housekeeping: expire members and groups, resolve quiet episodes."""
        now = _finite(now_ts)
        if now is None:
            return []
        if now > self._now:
            self._now = now
        now = self._now
        cfg = self.config
        if now - self._last_sweep < cfg.housekeeping_interval:
            return []
        self._last_sweep = now
        alerts: list[dict[str, Any]] = []
        # keys: mark ended (for lifetimes) and drop long-gone ones
        ended_keys: list[str] = []
        for key, k in self._keys.items():  # LRU order: oldest first
            if now - k.last_ts < cfg.idle_gap:
                break
            if not k.ended:
                k.ended = True
                ended_keys.append(key)
        if ended_keys:
            ended = set(ended_keys)
            for g in self._groups.values():
                if not g.members:
                    continue
                for m in g.members:
                    if m in ended:
                        kk = self._keys[m]
                        if kk.susp < cfg.member_threshold and not cfg.lifetimes_all:
                            # an ordinary user's short session is no rotation: only implicated
                            # keys that end count toward the group's key churn
                            continue
                        g.lifetimes = [x for x in g.lifetimes if x[0] != m]
                        g.lifetimes.append((m, kk.last_ts - kk.first_ts))
                        if len(g.lifetimes) > _MAX_LIFETIMES:
                            del g.lifetimes[0]
        while self._keys:
            key, k = next(iter(self._keys.items()))
            if now - k.last_ts <= cfg.member_ttl:
                break
            self._keys.popitem(last=False)
        # groups: drop expired members, re-evaluate open episodes, drop empty idle groups
        dead: list[tuple[str, str]] = []
        for gk, g in self._groups.items():
            while g.members:
                m, t = next(iter(g.members.items()))
                if now - t <= cfg.member_ttl:
                    break
                g.members.popitem(last=False)
            if g.open:
                alerts.extend(self._evaluate(gk, g, now))
            if not g.members and not g.open:
                dead.append(gk)
        for gk in dead:
            del self._groups[gk]
        return alerts

    def stats(self) -> dict[str, int]:
        """Counts for metrics: groups, members, open episodes, evictions, approximate bytes."""
        members = sum(len(g.members) for g in self._groups.values())
        open_eps = sum(1 for g in self._groups.values() if g.open)
        return {
            "groups": len(self._groups),
            "members": members,
            "open_episodes": open_eps,
            "evicted_total": self._evicted,
            "template_families": len(self._band_parent),
            "template_hashes": sum(1 for x in self._hkey if x is not None),
            "state_bytes": len(self._keys) * _BYTES_PER_KEY
            + members * _BYTES_PER_MEMBER
            + len(self._groups) * _BYTES_PER_GROUP
            + len(self._band_parent) * _BYTES_PER_FAMILY
            + sum(len(g.lifetimes) for g in self._groups.values()) * _BYTES_PER_LIFETIME
            # the hash ring is allocated up front: hash, tag, ts arrays and a key reference each
            + self._hh.nbytes + self._htag.nbytes + self._hts.nbytes + self._hmatched.nbytes
            + 8 * len(self._hkey),
        }

    def export_state(self) -> bytes:
        """Serialise the whole detector state as versioned JSON (no pickle)."""
        return orjson.dumps(
            {
                "version": CAMPAIGN_STATE_VERSION,
                "model_version": CAMPAIGN_MODEL_VERSION,
                "config": asdict(self.config),
                "start_ts": self._start_ts,
                "now": self._now if math.isfinite(self._now) else None,
                "last_sweep": self._last_sweep if math.isfinite(self._last_sweep) else None,
                "evicted": self._evicted,
                "snapshots": self._snapshots,
                "keys": [[key, k.to_list()] for key, k in self._keys.items()],
                "groups": [[t, v, g.to_dict()] for (t, v), g in self._groups.items()],
                "seqs": [[t, v, s] for (t, v), s in self._seqs.items()],
                "bands": [[b, p, self._family_size.get(b, 0)] for b, p in self._band_parent.items()],
                "hashes": self._hash_entries(),
            }
        )

    def import_state(self, blob: bytes) -> None:
        """Restore what :meth:`export_state` wrote. Raises ``ValueError`` on a foreign or bad blob."""
        try:
            obj = orjson.loads(blob)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"campaign state is not valid JSON ({exc})") from None
        if type(obj) is not dict or obj.get("version") not in _READABLE_STATE_VERSIONS:
            raise ValueError(
                f"campaign state version is not one of {_READABLE_STATE_VERSIONS}: "
                "discard it and let the detector rebuild from traffic"
            )
        try:
            keys = OrderedDict((str(key), _Key.from_list(v)) for key, v in obj["keys"])
            groups = OrderedDict(
                ((str(t), str(v)), _Group.from_dict(d)) for t, v, d in obj["groups"]
            )
            seqs = {(str(t), str(v)): int(s) for t, v, s in obj["seqs"]}
            band_parent = OrderedDict((str(b), str(p)) for b, p, _ in obj["bands"])
            family_size = {str(b): int(n) for b, _, n in obj["bands"] if n}
            start = obj["start_ts"]
            now = obj["now"]
            sweep = obj["last_sweep"]
            evicted = int(obj["evicted"])
            snaps = int(obj["snapshots"])
            hashes = [(int(h, 16), str(k), float(t), bool(m)) for h, k, t, m in obj["hashes"]]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"campaign state is malformed ({type(exc).__name__}: {exc})") from None
        for (t, _v) in groups:
            if t not in GROUP_TYPES:
                raise ValueError(f"campaign state names an unknown group type {t!r}")
        self._keys = keys
        self._groups = groups
        self._seqs = seqs
        self._band_parent = band_parent
        self._family_size = family_size
        self._start_ts = None if start is None else float(start)
        self._now = -math.inf if now is None else float(now)
        self._last_sweep = -math.inf if sweep is None else float(sweep)
        self._evicted = evicted
        self._snapshots = snaps
        w = self.config.hash_window
        self._hh[:] = 0
        self._hmatched[:] = False
        self._htag[:] = 0
        self._hts[:] = -np.inf
        self._hkey = [None] * w
        self._hpos = 0
        for h, key, t, m in hashes[-w:]:
            self._push_hash(h, _key_tag(key), key, t, m)

    def _hash_entries(self) -> list[list[Any]]:
        """The hash ring oldest first, as [16 hex, api_key, ts] (layout-independent)."""
        w = len(self._hkey)
        out: list[list[Any]] = []
        for i in range(w):
            j = (self._hpos + i) % w
            key = self._hkey[j]
            if key is not None:
                out.append([f"{int(self._hh[j]):016x}", key, float(self._hts[j]), bool(self._hmatched[j])])
        return out

    # --- internals ---------------------------------------------------------------------

    def _evict_group(self) -> None:
        # Prefer evicting the least recently seen group without an open episode: an open
        # episode evicted silently would never send its resolved alert.
        for gk, g in self._groups.items():
            if not g.open:
                del self._groups[gk]
                self._evicted += 1
                return
        self._groups.popitem(last=False)
        self._evicted += 1

    # --- template families (union-find over LSH band ids) --------------------------------

    def _find(self, band: str) -> str:
        parent = self._band_parent
        root = band
        hops = 0
        while True:
            p = parent.get(root)
            if p is None or p == root or hops > 64:
                break
            root = p
            hops += 1
        # path compression
        b = band
        while b != root:
            p = parent.get(b)
            if p is None or p == b:
                break
            parent[b] = root
            b = p
        return root

    def _linker(self, key: str, k: _Key, ts: float) -> bool:
        """Whether a key may link template families: implicated, or confirmed by an analyst."""
        v = self.feedback.verdict("api_key", key, ts)
        if v == "confirmed":
            return True
        if v in ("allowlisted", "false_positive"):
            return False
        return k.susp >= self.config.link_threshold

    def _push_hash(self, h: int, tag: int, key: str, ts: float, matched: bool = False) -> None:
        i = self._hpos
        self._hmatched[i] = matched
        self._hh[i] = h
        self._htag[i] = tag
        self._hts[i] = ts
        self._hkey[i] = key
        self._hpos = (i + 1) % len(self._hkey)

    def _new_family(self, fid: str) -> str:
        parent = self._band_parent
        if fid in parent:
            return self._find(fid)
        parent[fid] = fid
        self._family_size[fid] = 0
        if len(parent) > 4 * self.config.max_groups:
            old, _ = parent.popitem(last=False)
            self._family_size.pop(old, None)
        return fid

    def _link_templates(
        self, key: str, k: _Key, hashes: list[int], ts: float, alerts: list[dict[str, Any]]
    ) -> list[tuple[str, list[str]]]:
        """Match the snapshot's new prompt SimHashes against other keys' recent ones.

        A match (Hamming distance <= ``match_bits`` on all 64 bits) between two *linker* keys
        (implicated or confirmed) puts both into one template family; a non-linker that matches
        a family's key joins that family's group as a plain member (it lowers the implicated
        share unless it is suspicious itself). Returns ``(family root, partners to add)`` for
        every family this snapshot touches.
        """
        cfg = self.config
        if k.susp >= cfg.assoc_floor or self._linker(key, k, ts):
            hs = np.array(hashes, dtype=np.uint64)
            tag = _key_tag(key)
            d = np.bitwise_count(self._hh[None, :] ^ hs[:, None])
            own = self._htag == tag
            live = self._hts >= ts - cfg.member_ttl
            old = ((d == 0) & (own & live)[None, :]).any(axis=1)
            match = (d <= cfg.match_bits) & (live & ~own)[None, :] & ~old[:, None]
            k.nhash += int((~old).sum())
            cols = np.nonzero(match.any(axis=0))[0].tolist()
            # oldest entry first, then key: independent of where the ring happens to wrap
            entries = sorted((float(self._hts[j]), self._hkey[j] or "", int(self._hh[j]), j) for j in cols)
            me_links = self._linker(key, k, ts)
            partners: dict[str, int] = {}
            linked_cols: list[int] = []
            for _t, p, h, j in entries:
                pk = self._keys.get(p)
                if pk is None or p == key:
                    continue
                partners.setdefault(p, h)
                # only matches with implicated keys count as evidence (light users share popular
                # prompts with each other all the time); each prompt counts once
                if self._linker(p, pk, ts):
                    linked_cols.append(j)
                if me_links and not self._hmatched[j]:
                    self._hmatched[j] = True
                    pk.xmatch += 1
            rows = match[:, linked_cols].any(axis=1) if linked_cols else np.zeros(len(hs), dtype=bool)
            for h, is_old, hit in zip(hs.tolist(), old.tolist(), rows.tolist(), strict=True):
                if not is_old:
                    self._push_hash(int(h), tag, key, ts, hit)
                    k.xmatch += int(hit)
            for p, h in partners.items():
                pk = self._keys[p]
                k.partners = _remember(k.partners, p, h)
                pk.partners = _remember(pk.partners, key, h)
            if me_links:
                for p, h in k.partners:
                    pk = self._keys.get(p)
                    if pk is not None and self._linker(p, pk, ts):
                        self._join(k, pk, h, ts, alerts)
        else:
            partners = {}
        out: dict[str, list[str]] = {}
        if k.fam is not None:
            out[self._find(k.fam)] = []
        for p in partners:
            pk = self._keys.get(p)
            if pk is not None and pk.fam is not None:
                out.setdefault(self._find(pk.fam), []).append(p)
        return list(out.items())

    def _join(self, k: _Key, pk: _Key, h: int, ts: float, alerts: list[dict[str, Any]]) -> None:
        """Put two linker keys whose prompts matched into one template family."""
        cap = self.config.max_family_keys
        size = self._family_size
        fa = None if k.fam is None else self._find(k.fam)
        fb = None if pk.fam is None else self._find(pk.fam)
        if fa is None and fb is None:
            # the family is named after the SimHash of the prompt that first linked it
            fid = self._new_family(f"t:{h:016x}")
            if size.get(fid, 0) + 2 <= cap:
                k.fam = pk.fam = fid
                size[fid] = size.get(fid, 0) + 2
        elif fa is None or fb is None:
            root = fa if fa is not None else fb
            assert root is not None
            if size.get(root, 1) + 1 <= cap:
                if fa is None:
                    k.fam = root
                else:
                    pk.fam = root
                size[root] = size.get(root, 1) + 1
        elif fa != fb:
            merged = self._merge_family(fa, fb, ts, alerts)
            if merged is not None:
                k.fam = pk.fam = merged
        else:
            k.fam = pk.fam = fa

    def _merge_family(self, a: str, b: str, ts: float, alerts: list[dict[str, Any]]) -> str | None:
        """Merge families rooted at a and b; return the surviving root, or None if refused."""
        size_a = self._family_size.get(a, 1)
        size_b = self._family_size.get(b, 1)
        if size_a + size_b > self.config.max_family_keys:
            return None
        ga = self._groups.get(("template", a))
        gb = self._groups.get(("template", b))

        def rank(root: str, g: _Group | None, size: int) -> tuple[int, float, int, str]:
            # keep the family whose episode is open (its alert id stays stable), then the one
            # opened first, then the bigger one; the band id breaks ties deterministically
            if g is not None and g.open:
                return (0, g.opened_ts, -size, root)
            return (1, 0.0, -size, root)

        if rank(b, gb, size_b) < rank(a, ga, size_a):
            a, b, ga, gb, size_a, size_b = b, a, gb, ga, size_b, size_a
        self._band_parent[b] = a
        self._family_size[a] = size_a + size_b
        self._family_size.pop(b, None)
        if gb is not None:
            if ga is None:
                ga = _Group()
                self._groups[("template", a)] = ga
            for m, t in gb.members.items():
                if m not in ga.members:
                    ga.seen_total += 1
                ga.members[m] = max(t, ga.members.get(m, t))
            while len(ga.members) > self.config.max_members_per_group:
                ga.members.popitem(last=False)
                self._evicted += 1
            gone = {m for m, _ in gb.lifetimes}
            ga.lifetimes = ([x for x in ga.lifetimes if x[0] not in gone] + gb.lifetimes)[-_MAX_LIFETIMES:]
            ga.last_ts = max(ga.last_ts, gb.last_ts)
            ga.bar = max(ga.bar, gb.bar)
            if gb.open:
                alerts.append(self._close(("template", b), gb, ts, "merged", merged_into=a))
                ga.named |= gb.named
            del self._groups[("template", b)]
        return a

    def _member_view(
        self, g: _Group, now: float, group_confirmed: bool
    ) -> tuple[int, list[tuple[float, str, _Key]], list[tuple[float, str, _Key]], list[tuple[float, str, _Key]]]:
        """Active members (count), the implicated ones as (suspicion, key, state), the members
        suspicious enough to be named by association, and the rest (not allowlisted)."""
        cfg = self.config
        fb = self.feedback
        active = 0
        implicated: list[tuple[float, str, _Key]] = []
        candidates: list[tuple[float, str, _Key]] = []
        rest: list[tuple[float, str, _Key]] = []
        for m, t in g.members.items():
            if now - t > cfg.member_ttl:
                continue
            k = self._keys.get(m)
            if k is None:
                continue
            active += 1
            v = fb.verdict("api_key", m, now)
            if v == "allowlisted" or v == "false_positive":
                continue
            if v == "confirmed":
                implicated.append((1.0, m, k))
            elif k.susp >= cfg.member_threshold and (k.harv is None or k.harv >= cfg.member_harvest):
                # suspicious *and* harvesting: a key whose requests almost never take a long
                # answer to a capability prompt is a batch job, whatever its other tells
                implicated.append((k.susp, m, k))
            elif group_confirmed:
                implicated.append((k.susp, m, k))
            elif k.susp >= cfg.assoc_floor:
                candidates.append((k.susp, m, k))
            else:
                rest.append((k.susp, m, k))
        return active, implicated, candidates, rest

    def _sync_p(self, a: _Key, b: _Key) -> tuple[float, int, int] | None:
        """``(p, shared, minutes)``: how unlikely by chance the two keys' shared active minutes
        are, over the minutes both were alive in the last hour; None when there is too little
        to judge or they are plainly not synchronised."""
        cfg = self.config
        if a.amin < 0 or b.amin < 0:
            return None
        hi = min(a.amin, b.amin)
        lo = max(max(a.amin, b.amin) - 63, int(a.first_ts // 60.0), int(b.first_ts // 60.0))
        n = hi - lo + 1
        if n < cfg.sync_min_minutes:
            return None
        win = (1 << n) - 1
        x = (a.amask >> (a.amin - hi)) & win
        y = (b.amask >> (b.amin - hi)) & win
        c = (x & y).bit_count()
        if c < cfg.sync_min_overlap:
            return None
        na, nb = x.bit_count(), y.bit_count()
        if 2 * c < min(na, nb):  # most of the sparser key's minutes unshared: not in step
            return None
        # in step, not merely busy at the same time: two keys in one burst (a team at work, a
        # job and its agent) also share the neighbouring minutes; rounds dispatched to both
        # keys share the minute itself far more than the minute before or after
        c1 = max(((y << 1) & win & x).bit_count(), ((y >> 1) & x).bit_count())
        if 4 * c1 > c:
            return None
        return _hyper_tail(n, na, nb, c), c, n

    def _synchrony(
        self, etype: str, implicated: list[tuple[float, str, _Key]], members: list[tuple[float, str, _Key]]
    ) -> tuple[set[str], set[str], tuple[float, str, str, int, int] | None]:
        """Members (not implicated) in step with an implicated key, the implicated keys in step
        with another member, and the strongest pair ``(p, key, key, shared, minutes)``."""
        cfg = self.config
        if etype not in _TIMING or cfg.sync_p <= 0.0 or not implicated:
            return set(), set(), None
        top = sorted(implicated, key=lambda x: (-x[0], x[1]))[:8]
        names = {m for _, m, _ in implicated}
        synced: set[str] = set()
        imp_synced: set[str] = set()
        best: tuple[float, str, str, int, int] | None = None
        for _, m, k in members:
            for _, tm, tk in top:
                if tm == m:
                    continue
                r = self._sync_p(tk, k)
                if r is None or r[0] > cfg.sync_p:
                    continue
                imp_synced.add(tm)
                if m in names:
                    imp_synced.add(m)
                else:
                    synced.add(m)
                if best is None or (r[0], tm, m) < best[:3]:
                    best = (r[0], tm, m, r[1], r[2])
        return synced, imp_synced, best

    def _named(
        self,
        etype: str,
        implicated: list[tuple[float, str, _Key]],
        candidates: list[tuple[float, str, _Key]],
        confirmed: bool,
        synced: set[str] | frozenset[str] = frozenset(),
        imp_synced: set[str] | frozenset[str] = frozenset(),
        need: int | None = None,
        now: float | None = None,
    ) -> list[tuple[float, str, _Key]]:
        """The members an alert names.

        Narrow groups (an account, a /24, a template family) name their implicated members (with
        ``narrow_core``, in an account or network group of three or more, only those of the core
        tooling or in step with another member) and the associated ones. Broad groups (an ASN, a
        user agent) hold many unrelated customers: they name only implicated members whose
        behaviour profile matches the implicated centroid (an honest eval harness or reasoning
        app in a cloud ASN that a campaign also uses is implicated-looking on its own, but runs
        different tooling), and no associates. With ``name_linked``, account, network and broad
        groups name only implicated members with coordination evidence (:meth:`_linked`).
        """
        if etype not in _BROAD or confirmed:
            named = implicated
            if self.config.narrow_core and not confirmed and etype != "template" and len(implicated) > 2:
                core = {m for _, m, _ in self._core(implicated, self.config.assoc_distance)}
                named = [c for c in implicated if c[0] >= 1.0 or c[1] in core or c[1] in imp_synced]
            if self.config.name_linked and not confirmed and etype != "template":
                linked = self._linked(implicated, imp_synced, now)
                named = [c for c in named if c[1] in linked]
            return named + self._associated(etype, implicated, candidates, synced, need)
        if len(implicated) < self.config.min_implicated:
            named = implicated
        else:
            centroid = self._centroid(implicated)
            limit = self.config.assoc_distance
            named = [c for c in implicated if c[0] >= 1.0 or _distance(c[2].vec, centroid) <= limit]
        if self.config.name_linked:
            linked = self._linked(implicated, imp_synced, now)
            named = [c for c in named if c[1] in linked]
        return named

    def _linked(self, implicated: list[tuple[float, str, _Key]], imp_synced: set[str] | frozenset[str],
                now: float | None) -> set[str]:
        """Implicated members with evidence of coordination beyond looking alike: confirmed by an
        analyst, in step with another member, sharing a template family with another implicated
        key, or new (first seen within ``new_key_window``, after warm-up: the group's churn).
        A long-lived key that only resembles the campaign's profile (an honest reasoning app in
        the campaign's cloud ASN) is the per-key detector's to judge, not a campaign member."""
        roots, fam_count = self._families(implicated)
        horizon = self._new_since(now) if now is not None else math.inf
        out = set()
        for (susp, m, k), r in zip(implicated, roots, strict=True):
            if susp >= 1.0 or m in imp_synced or (r is not None and fam_count[r] >= 2) or k.first_ts >= horizon:
                out.add(m)
        return out

    def _new_since(self, now: float) -> float:
        """A key first seen at or after this time is *new* (the group's churn): within
        ``new_key_window`` and after warm-up. Infinite during warm-up, when every key is new."""
        cfg = self.config
        if self._start_ts is None or now - self._start_ts < cfg.warmup:
            return math.inf
        return max(now - cfg.new_key_window, self._start_ts + cfg.warmup)

    def _rotation(
        self, implicated: list[tuple[float, str, _Key]], candidates: list[tuple[float, str, _Key]], now: float,
    ) -> tuple[list[tuple[float, str, _Key]], list[tuple[float, str, _Key]]]:
        """Move a rotation's new look-alike members from ``candidates`` to ``implicated``
        (``rotation_floor``): only when an implicated key is itself new, after warm-up."""
        cfg = self.config
        horizon = self._new_since(now)
        anchors = [x for x in implicated if x[2].first_ts >= horizon]
        if not anchors:
            return implicated, candidates
        centroid = self._centroid(anchors)
        moved, kept = [], []
        for c in candidates:
            k = c[2]
            if (c[0] >= cfg.rotation_floor and k.first_ts >= horizon
                    and (k.harv is None or k.harv >= cfg.member_harvest)
                    and _distance(k.vec, centroid) <= cfg.assoc_distance):
                moved.append(c)
            else:
                kept.append(c)
        if not moved:
            return implicated, candidates
        return implicated + moved, kept

    def _families(self, implicated: list[tuple[float, str, _Key]]) -> tuple[list[str | None], dict[str, int]]:
        """Each implicated member's template family root (None without one), and how many
        implicated members each family holds."""
        roots = [None if k.fam is None else self._find(k.fam) for _, _, k in implicated]
        fam_count: dict[str, int] = {}
        for r in roots:
            if r is not None:
                fam_count[r] = fam_count.get(r, 0) + 1
        return roots, fam_count

    def _core(self, implicated: list[tuple[float, str, _Key]], limit: float) -> list[tuple[float, str, _Key]]:
        """The implicated members that run one tooling: those within ``assoc_distance`` of the
        medoid (the member with most such neighbours among the 32 most suspicious). A broad
        group (an ASN, a user agent) counts only these: two campaign keys and two honest
        reasoning apps in one cloud ASN are two pairs, not four coordinated keys."""
        if len(implicated) < 2:
            return implicated
        top = sorted(implicated, key=lambda x: (-x[0], x[1]))[:32]
        best: tuple[int, float, str] | None = None
        medoid = top[0]
        for c in top:
            ds = [_distance(c[2].vec, o[2].vec) for o in top if o is not c]
            near = sum(1 for d in ds if d <= limit)
            rank = (-near, sum(min(d, 1.0) for d in ds), c[1])
            if best is None or rank < best:
                best, medoid = rank, c
        return [c for c in implicated
                if c is medoid or c[0] >= 1.0 or _distance(c[2].vec, medoid[2].vec) <= limit]

    def _centroid(self, implicated: list[tuple[float, str, _Key]]) -> tuple[float, ...]:
        nf = len(PROFILE_FEATURES)
        sums = [0.0] * nf
        cnts = [0] * nf
        for _, _, k in implicated:
            for i, x in enumerate(k.vec[:nf]):
                if x == x:
                    sums[i] += x
                    cnts[i] += 1
        return tuple(sums[i] / cnts[i] if cnts[i] else math.nan for i in range(nf))

    def _need(self, etype: str, implicated: list[tuple[float, str, _Key]],
              imp_synced: set[str] | frozenset[str] = frozenset()) -> int:
        """Implicated members this group needs: ``min_implicated``, or ``min_implicated_alike``
        in a narrow group whose implicated members all run one tooling (each within
        ``assoc_distance`` of the medoid profile, or each in step with another member)."""
        cfg = self.config
        n = len(implicated)
        if (etype in _BROAD or etype == "template" or cfg.min_implicated_alike >= cfg.min_implicated
                or n < cfg.min_implicated_alike or n >= cfg.min_implicated):
            return cfg.min_implicated
        if all(m in imp_synced for _, m, _ in implicated):
            return cfg.min_implicated_alike
        if len(self._core(implicated, cfg.assoc_distance)) == n:
            return cfg.min_implicated_alike
        return cfg.min_implicated

    def _associated(
        self, etype: str, implicated: list[tuple[float, str, _Key]], candidates: list[tuple[float, str, _Key]],
        synced: set[str] | frozenset[str] = frozenset(), need: int | None = None,
    ) -> list[tuple[float, str, _Key]]:
        """Candidates whose profile matches the implicated members' centroid or whose requests
        are in step with an implicated key's (``synced``), and, in a template family,
        candidates whose own prompts repeatedly match other keys' prompts. ``need`` is the
        group's :meth:`_need` (computed when not given)."""
        if need is None:
            need = self._need(etype, implicated)
        if not candidates or len(implicated) < need:
            return []
        if etype == "template":
            cfg = self.config

            def routine(k: _Key) -> bool:
                # it sends the family's templates often, and harvests (a light user who now and
                # then sends a popular prompt the campaign's cover traffic also sends does not)
                return (k.xmatch >= cfg.template_min_matches and k.xmatch >= cfg.template_min_share * k.nhash
                        and (k.harv is None or k.harv >= cfg.member_harvest))

            # a template family's plain members joined by matching a prompt or two: profile
            # likeness alone does not name them (a light user with a popular prompt would)
            return [c for c in candidates if routine(c[2])]
        centroid = self._centroid(implicated)
        cfg = self.config

        def never_harvests(k: _Key) -> bool:
            # enough requests to be confident it harvests under the floor: a coding agent or
            # batch job of long standing behind the campaign's /24, near the centroid on the
            # features both leave at zero. A campaign key's first few requests prove nothing
            return k.harv is not None and _wilson_upper(k.harv, k.events) < cfg.member_harvest

        return [c for c in candidates if c[1] in synced or (
            _distance(c[2].vec, centroid) <= cfg.assoc_distance and not never_harvests(c[2]))]

    def _evaluate(self, gk: tuple[str, str], g: _Group, now: float) -> list[dict[str, Any]]:
        cfg = self.config
        etype, entity = gk
        verdict = self.feedback.verdict(etype, entity, now)
        if verdict == "allowlisted":
            if g.open:
                return [self._close(gk, g, now, "allowlisted")]
            return []
        confirmed = verdict == "confirmed"
        active, implicated, candidates, rest = self._member_view(g, now, confirmed)
        if (etype in _NARROW_NET and not confirmed and implicated and candidates
                and cfg.rotation_floor < cfg.member_threshold):
            implicated, candidates = self._rotation(implicated, candidates, now)
        if etype in _BROAD and not confirmed and cfg.broad_core:
            implicated = self._core(implicated, cfg.assoc_distance)
        # members in step with an implicated key (one orchestrator's rounds), whatever their
        # own suspicion, are candidates for association
        synced, imp_synced, sync_best = self._synchrony(etype, implicated, implicated + candidates + rest)
        if synced:
            candidates = candidates + [c for c in rest if c[1] in synced]
        # members running the implicated keys' tooling with more cover traffic (association)
        # count toward the implicated share of a narrow group; broad groups count only the
        # implicated (their customers are unrelated)
        need = self._need(etype, implicated, imp_synced)
        n_assoc = 0 if etype in _BROAD else len(self._associated(etype, implicated, candidates, synced, need))
        score, reasons, window = self._score(gk, g, now, active, implicated, confirmed, n_assoc, candidates,
                                             (synced, imp_synced, sync_best), need)
        if verdict == "false_positive":
            if g.open:
                g.bar = max(g.bar, cfg.fp_raise, min(0.98, score + 0.1) - cfg.open_score)
                return [self._close(gk, g, now, "false_positive")]
            g.bar = max(g.bar, cfg.fp_raise)
        g.score = score
        bar = min(0.99, cfg.open_score + g.bar)
        if not g.open:
            if score >= bar and implicated:
                g.open = True
                g.seq = self._seqs.get(gk, 0) + 1
                self._seqs[gk] = g.seq
                g.opened_ts = now
                g.named = set()
                g.quiet_since = None
                g.severity = self._severity(score, confirmed)
                named = self._named(etype, implicated, candidates, confirmed, synced, imp_synced, need, now)
                return [self._fire(gk, g, now, score, reasons, window, named, active)]
            return []
        # episode open
        if (score < cfg.close_score and not confirmed) or not implicated:
            if g.quiet_since is None:
                g.quiet_since = now
            if now - g.quiet_since >= cfg.quiet_resolve or active == 0:
                return [self._close(gk, g, now, "quiet", score, reasons, window)]
            return []
        g.quiet_since = None
        sev = self._severity(score, confirmed)
        escalated = _SEV_RANK[sev] > _SEV_RANK[g.severity]
        named = self._named(etype, implicated, candidates, confirmed, synced, imp_synced, need, now)
        new_named = sum(1 for _, m, _ in named if m not in g.named)
        if escalated or (new_named > 0 and now - g.last_fire >= cfg.refire_interval):
            g.severity = sev if escalated else g.severity
            return [self._fire(gk, g, now, score, reasons, window, named, active)]
        return []

    def _severity(self, score: float, confirmed: bool) -> str:
        if score >= 0.8:
            return "critical"
        return "warning"

    def _score(
        self,
        gk: tuple[str, str],
        g: _Group,
        now: float,
        active: int,
        implicated: list[tuple[float, str, _Key]],
        confirmed: bool,
        n_assoc: int = 0,
        candidates: list[tuple[float, str, _Key]] | None = None,
        sync: tuple[set[str], set[str], tuple[float, str, str, int, int] | None] | None = None,
        need: int | None = None,
    ) -> tuple[float, list[dict[str, Any]], dict[str, Any]]:
        cfg = self.config
        synced, imp_synced, sync_best = sync if sync is not None else (set(), set(), None)
        if need is None:
            need = self._need(gk[0], implicated, imp_synced)
        etype, entity = gk
        n_imp = len(implicated)
        window = {
            "first_ts": min((k.first_ts for _, _, k in implicated), default=now),
            "last_ts": now,
            "events": sum(k.events for _, _, k in implicated),
        }
        if n_imp == 0:
            return 0.0, [], window
        share_lb = _wilson_lower(n_imp + n_assoc, active)
        mean_susp = sum(s for s, _, _ in implicated) / n_imp
        # templates shared across different implicated keys
        roots, fam_count = self._families(implicated)
        sharing = sum(1 for r in roots if r is not None and fam_count[r] >= 2)
        tmpl_share = sharing / n_imp
        # reasoning domains swept jointly
        covered = sum(
            1 for i in range(4) if sum(k.doms[i] for _, _, k in implicated) / n_imp >= 0.1
        )
        breadths = [k.breadth for _, _, k in implicated if k.breadth is not None]
        # key churn: new keys, short lifetimes
        horizon = self._new_since(now)
        warm = horizon < math.inf
        new_keys = sum(1 for _, _, k in implicated if k.first_ts >= horizon)
        new_share = new_keys / n_imp
        life_med = _median([t for _, t in g.lifetimes]) if len(g.lifetimes) >= 3 else None
        short_life = 1.0 if life_med is not None and life_med < cfg.short_lifetime else 0.0
        if warm and new_keys == 0 and not any(k.first_ts >= horizon for _, _, k in candidates or ()):
            # rotation is keys that end *and are replaced*: implicated keys that ended after a
            # short life while no new key at all suspicious (>= assoc_floor) arrives are jobs
            # that finished. A replacement need not be implicated yet: a fresh key shows few
            # requests, so its suspicion is still low
            short_life = 0.0
        cots = [k.cot for _, _, k in implicated if k.cot is not None]
        cot_mean = sum(cots) / len(cots) if cots else None

        e_share = _clip01(share_lb / 0.6)
        e_tmpl = tmpl_share
        e_cov = covered / 4.0
        if covered == 0 and breadths:
            # no per-domain shares in the snapshots: the members' own breadth stands in
            e_cov = _clip01(sum(breadths) / len(breadths))
        e_churn = max(new_share, short_life)
        # one tooling fingerprint across keys: shared templates (content) or synchronised
        # minutes (one orchestrator's clock), whichever is stronger
        n_sync = sum(1 for _, m, _ in implicated if m in imp_synced)
        e_sync = n_sync / n_imp
        fingerprint = ("synchronised_timing", 0.15, e_sync) if e_sync > e_tmpl else ("shared_templates", 0.15, e_tmpl)
        parts = [
            ("implicated_share", 0.35, e_share),
            ("member_suspicion", 0.25, mean_susp),
            fingerprint,
            ("domain_coverage", 0.10, e_cov),
            ("key_churn", 0.15, e_churn),
        ]
        raw = sum(w * e for _, w, e in parts)
        # evidence that exists only across keys: shared templates, or key churn (new keys, short
        # lifetimes). Without either, a few long-lived suspicious keys behind one /24 are each
        # the per-key detector's business, not a campaign. Before warm-up ends churn cannot be
        # seen, so its absence is no evidence then.
        joint = e_tmpl > 0 or e_churn > 0 or e_sync > 0 or not warm or not cfg.require_joint
        # a burst: in a narrow group, fewer keys suffice when one implicated key is new (each
        # of them, with burst_all_new), all are clearly implicated and they share a template
        # family (a campaign's first keys, or its first rotation)
        burst = (
            etype not in _BROAD
            and n_imp >= cfg.min_implicated_new
            and (new_keys == n_imp or (new_keys >= 1 and not cfg.burst_all_new))
            and sharing == n_imp
            and all(s >= cfg.new_suspicion for s, _, _ in implicated)
        )
        # a pair (or more) running one tooling, with evidence across keys (churn, shared
        # templates or synchronised timing) actually seen, not merely unseen before warm-up
        alike = (
            n_imp < cfg.min_implicated
            and (e_tmpl > 0 or e_churn > 0 or e_sync > 0)
            and need < cfg.min_implicated
        )
        enough = n_imp >= cfg.min_implicated or burst or alike
        gated = enough and share_lb >= cfg.min_share and joint
        if confirmed:
            score = max(raw, cfg.open_score)
        else:
            score = raw * cfg.type_weights[etype] if gated else 0.0
        score = _clip01(score)
        total = raw or 1.0

        def contrib(name: str) -> float:
            for nm, w, e in parts:
                if nm == name:
                    return round(_clip01(w * e / total), 4)
            return 0.0

        label = _ENTITY_LABEL[etype]
        lead = f"{n_imp} of {active} active keys {label} {entity} look distillation-like"
        if etype == "template":
            lead = f"{n_imp} keys share template family {entity}"
        extras = []
        if new_keys:
            extras.append(f"{new_keys} of them new in the last {cfg.new_key_window / 3600:g} h")
        if life_med is not None:
            extras.append(f"median lifetime {life_med / 60:.0f} min")
        reasons: list[dict[str, Any]] = [
            {
                "feature": "implicated_members",
                "observed": float(n_imp),
                "baseline": round(share_lb * active, 3),
                "contribution": contrib("implicated_share"),
                "explanation": "; ".join([lead] + extras)
                + f" (share >= {share_lb:.2f} at 95% confidence, {g.seen_total} keys seen in total)",
            },
            {
                "feature": "member_suspicion",
                "observed": round(mean_susp, 4),
                "baseline": cfg.member_threshold,
                "contribution": contrib("member_suspicion"),
                "explanation": f"implicated keys' mean distillation-likeness {mean_susp:.2f} "
                f"(each below a per-key alarm on its own is typical of a campaign)",
            },
        ]
        if sharing >= 2:
            top = max(fam_count, key=lambda r: (fam_count[r], r))
            matched = sum(1 for _, _, k in implicated if k.xmatch > 0)
            reasons.append(
                {
                    "feature": "shared_templates",
                    "observed": round(tmpl_share, 4),
                    "baseline": 0.0,
                    "contribution": contrib("shared_templates"),
                    "explanation": f"{sharing} implicated keys send prompts within {cfg.match_bits} bits "
                    f"(64-bit SimHash) of other keys' prompts (largest family: {top}, "
                    f"{fam_count[top]} keys; {matched} keys with cross-key matches)",
                }
            )
        if sync_best is not None and (n_sync or synced):
            p, a, b, shared, minutes = sync_best
            reasons.append(
                {
                    "feature": "synchronised_timing",
                    "observed": round(e_sync, 4),
                    "baseline": 0.0,
                    "contribution": contrib("synchronised_timing"),
                    "explanation": f"{n_sync + len(synced)} keys ({n_sync} implicated) send in step with "
                    f"an implicated key: {a} and {b} were active in the same {shared} of {minutes} minutes, "
                    f"rarely a minute apart (p = {p:.0e} by chance), like one orchestrator's rounds",
                }
            )
        if covered >= 2:
            names = [d for i, d in enumerate(_HIGH_VALUE_DOMAINS)
                     if sum(k.doms[i] for _, _, k in implicated) / n_imp >= 0.1]
            reasons.append(
                {
                    "feature": "domain_coverage",
                    "observed": float(covered),
                    "baseline": 1.0,
                    "contribution": contrib("domain_coverage"),
                    "explanation": f"members jointly sweep {covered} high-value domains ({', '.join(names)})",
                }
            )
        if cot_mean is not None:
            reasons.append(
                {
                    "feature": "cot_share",
                    "observed": round(cot_mean, 4),
                    "baseline": 0.0,
                    "contribution": 0.0,
                    "explanation": f"implicated keys ask for step-by-step reasoning in {cot_mean:.0%} of requests",
                }
            )
        if e_churn > 0:
            reasons.append(
                {
                    "feature": "key_churn",
                    "observed": round(new_share, 4),
                    "baseline": 0.0,
                    "contribution": contrib("key_churn"),
                    "explanation": (
                        f"{new_keys} of {n_imp} implicated keys are new in the last "
                        f"{cfg.new_key_window / 60:.0f} min"
                        + (f"; ended keys lived a median {life_med / 60:.0f} min" if life_med is not None else "")
                    ),
                }
            )
        if confirmed:
            reasons.append(
                {
                    "feature": "analyst_verdict",
                    "observed": 1.0,
                    "baseline": 0.0,
                    "contribution": 0.0,
                    "explanation": f"an analyst confirmed {etype} {entity} as a campaign",
                }
            )
        return score, reasons, window

    def _related(self, g: _Group, implicated: list[tuple[float, str, _Key]]) -> list[str]:
        cap = self.config.max_related
        ranked = sorted(implicated, key=lambda x: (-x[0], x[1]))
        if len(ranked) <= cap:
            return [m for _, m, _ in ranked]
        # name the newly implicated first so rotated keys get named, then the most implicated
        fresh = [x for x in ranked if x[1] not in g.named][:cap]
        chosen = {m for _, m, _ in fresh}
        rest = [x for x in ranked if x[1] not in chosen][: cap - len(fresh)]
        return [m for _, m, _ in sorted(fresh + rest, key=lambda x: (-x[0], x[1]))]

    def _fire(
        self,
        gk: tuple[str, str],
        g: _Group,
        now: float,
        score: float,
        reasons: list[dict[str, Any]],
        window: dict[str, Any],
        implicated: list[tuple[float, str, _Key]],
        active: int,
    ) -> dict[str, Any]:
        related = self._related(g, implicated)
        for m in related:
            if len(g.named) < _MAX_NAMED:
                g.named.add(m)
        g.last_fire = now
        etype, entity = gk
        return {
            "alert_id": campaign_alert_id(etype, entity, g.seq),
            "schema_version": 1,
            "entity_type": etype,
            "entity": entity,
            "status": "firing",
            "severity": g.severity,
            "score": round(score, 6),
            "event_ts": now,
            "detected_at": 0.0,
            "window": window,
            "reasons": reasons,
            "detector": "campaign",
            "model_version": CAMPAIGN_MODEL_VERSION,
            "related_entities": related,
            "related_total": max(g.seen_total, len(g.members)),
        }

    def _close(
        self,
        gk: tuple[str, str],
        g: _Group,
        now: float,
        why: str,
        score: float = 0.0,
        reasons: list[dict[str, Any]] | None = None,
        window: dict[str, Any] | None = None,
        merged_into: str | None = None,
    ) -> dict[str, Any]:
        etype, entity = gk
        g.open = False
        g.quiet_since = None
        g.named = set()
        text = {
            "quiet": "members no longer look like a coordinated campaign",
            "allowlisted": f"an analyst allowlisted {etype} {entity}",
            "false_positive": f"an analyst marked {etype} {entity} a false positive; "
            "it needs stronger evidence to fire again",
            "merged": f"template family {entity} joined family {merged_into}, which carries on",
        }[why]
        rs = [
            {
                "feature": "analyst_verdict" if why in ("allowlisted", "false_positive") else "episode_end",
                "observed": round(score, 6),
                "baseline": self.config.close_score,
                "contribution": 1.0,
                "explanation": text,
            }
        ]
        return {
            "alert_id": campaign_alert_id(etype, entity, g.seq),
            "schema_version": 1,
            "entity_type": etype,
            "entity": entity,
            "status": "resolved",
            "severity": "info",
            "score": round(_clip01(score), 6),
            "event_ts": now,
            "detected_at": 0.0,
            "window": window or {"first_ts": g.opened_ts, "last_ts": now, "events": 0},
            "reasons": rs + (reasons or [])[:0],
            "detector": "campaign",
            "model_version": CAMPAIGN_MODEL_VERSION,
            "related_entities": [],
            "related_total": max(g.seen_total, len(g.members)),
        }


_ENTITY_LABEL = {
    "account": "of account",
    "client_net": "from network",
    "asn": "in ASN",
    "template": "of template family",
    "user_agent": "with user agent",
}


def iter_alerts(detector: CampaignDetector, snapshots: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Feed snapshots in order, advancing event time as they go; return every alert (a helper for tests)."""
    out: list[dict[str, Any]] = []
    for s in snapshots:
        ts = _finite(s.get("ts"))
        if ts is not None:
            out.extend(detector.advance(ts))
        out.extend(detector.observe(s))
    return out
