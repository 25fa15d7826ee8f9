"""Score a run's alerts against the simulator's truth (issue 3 §6, issue 4 targets).

Rules, applied to *firing* alerts only:

* An alert names the keys in its ``related_entities`` and, when ``entity_type`` is
  ``api_key``, its ``entity``.
* An attack key is caught by the first alert naming it with ``event_ts >= attack_start`` (for a
  drifter, when its drift starts; for a campaign key, when that key starts). Naming it earlier
  does not count (and is reported as ``named_before_attack``).
* A benign key named by any firing alert is a false positive.
* Time to detect (TTD) is that first qualifying ``event_ts`` minus ``attack_start``; a campaign's
  TTD runs from the campaign start to the first catch of any of its keys.

Alert lines that are not JSON objects with a usable ``entity_type``, ``entity``, ``status`` and
``event_ts`` are counted and skipped, never fatal: the harness must be able to score a
detector that is still half-built.

Examples
--------
>>> import json, os, tempfile
>>> d = tempfile.mkdtemp()
>>> truth = {"schema": "moatwatch.truth/v1", "seed": 1, "hours": 1.0, "start_ts": 0.0,
...          "end_ts": 3600.0, "campaigns": {}, "keys": {
...     "a": {"label": "attack", "persona": "bulk_distiller", "attack_start": 100.0,
...           "campaign": None, "hard_negative": False},
...     "b": {"label": "benign", "persona": "light_user", "attack_start": None,
...           "campaign": None, "hard_negative": False}}}
>>> _ = open(os.path.join(d, "t.json"), "w").write(json.dumps(truth))
>>> alert = {"alert_id": "1", "entity_type": "api_key", "entity": "a", "status": "firing",
...          "event_ts": 400.0, "related_entities": []}
>>> _ = open(os.path.join(d, "a.jsonl"), "w").write(json.dumps(alert) + "\\nnot json\\n")
>>> r = evaluate(os.path.join(d, "t.json"), os.path.join(d, "a.jsonl"))
>>> r["summary"]["recall"], r["summary"]["ttd_median_s"], r["alerts"]["skipped"]
(1.0, 300.0, 1)
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = [
    "EVALUATION_SCHEMA",
    "TARGETS",
    "PlotUnavailableError",
    "evaluate",
    "format_table",
    "load_truth",
    "plot",
]

EVALUATION_SCHEMA = "moatwatch.evaluation/v1"
TRUTH_SCHEMA = "moatwatch.truth/v1"

#: The project's targets (issue 3 and issue 4), as data: name -> threshold.
TARGETS = {
    "benign_fpr_max": 0.003,
    "hard_negative_keys_max": 1,
    "ttd_median_s_max": 600.0,
    "campaign_keys_named_min": 0.9,
    "campaign_ttd_s_max": 1800.0,
}


class PlotUnavailableError(RuntimeError):
    """The optional plot needs matplotlib, which is not installed."""


# --------------------------------------------------------------------------------------------
# Inputs


def load_truth(truth_path: str | Path) -> dict[str, Any]:
    """Read and check a truth file written by :func:`streams.simulator.simulate`.

    Raises
    ------
    ValueError
        If the file is not a ``moatwatch.truth/v1`` document, saying what is wrong.
    """
    raw = Path(truth_path).read_bytes()
    try:
        truth = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"truth file {truth_path} is not JSON ({exc}); "
                         "regenerate it with `moatwatch simulate`") from None
    if not isinstance(truth, dict) or truth.get("schema") != TRUTH_SCHEMA:
        raise ValueError(f"truth file {truth_path} is not a {TRUTH_SCHEMA} document "
                         f"(schema={truth.get('schema') if isinstance(truth, dict) else None!r})")
    keys = truth.get("keys")
    if not isinstance(keys, dict):
        raise ValueError(f"truth file {truth_path} has no 'keys' object")
    for key, info in keys.items():
        if not isinstance(info, dict) or info.get("label") not in ("benign", "attack"):
            raise ValueError(f"truth file {truth_path}: key {key!r} has no benign/attack label")
        if info["label"] == "attack" and not _is_number(info.get("attack_start")):
            raise ValueError(f"truth file {truth_path}: attack key {key!r} has no attack_start")
    if not isinstance(truth.get("campaigns", {}), dict):
        raise ValueError(f"truth file {truth_path}: 'campaigns' is not an object")
    return truth


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_alert(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """One alert line -> (usable alert, "") or (None, why it was skipped)."""
    try:
        a = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(a, dict):
        return None, "not_object"
    if a.get("status") not in ("firing", "resolved"):
        return None, "unknown_status"
    etype, entity = a.get("entity_type"), a.get("entity")
    if not isinstance(etype, str) or not isinstance(entity, str) or not entity:
        return None, "missing_entity"
    if not _is_number(a.get("event_ts")):
        return None, "bad_event_ts"
    related = a.get("related_entities", [])
    if related is None:
        related = []
    if not isinstance(related, list):
        return None, "bad_related_entities"
    return a, ""


def _named_keys(a: dict[str, Any]) -> set[str]:
    named = {x for x in (a.get("related_entities") or []) if isinstance(x, str)}
    if a["entity_type"] == "api_key":
        named.add(a["entity"])
    return named


# --------------------------------------------------------------------------------------------
# Scoring


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _minutes(s: float | None) -> float | None:
    return None if s is None else round(s / 60.0, 2)


def _ttd_block(ttds: list[float]) -> dict[str, float | None]:
    med, p90 = _pct(ttds, 50), _pct(ttds, 90)
    return {"ttd_median_s": med, "ttd_p90_s": p90,
            "ttd_median_min": _minutes(med), "ttd_p90_min": _minutes(p90)}


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def evaluate(truth_path: str, alerts_path: str) -> dict[str, Any]:
    """Score the alerts of a run against its truth.

    Parameters
    ----------
    truth_path
        Truth JSON written by ``moatwatch simulate``.
    alerts_path
        Alert v1 JSON lines (as written by ``moatwatch replay``). Unusable lines are counted
        under ``alerts.skip_reasons`` and skipped.

    Returns
    -------
    dict
        JSON-able result: ``alerts``, ``personas``, ``summary``, ``campaigns``, ``targets`` and
        per-key detail (``attack_keys``, ``flagged_benign_keys``, ``missed_attack_keys``).
    """
    truth = load_truth(truth_path)
    keys: dict[str, dict[str, Any]] = truth["keys"]
    hours = float(truth.get("hours") or (truth["end_ts"] - truth["start_ts"]) / 3600.0)

    first_catch: dict[str, float] = {}  # attack key -> first qualifying event_ts
    catch_alert: dict[str, dict[str, Any]] = {}
    named_early: set[str] = set()
    flagged: dict[str, float] = {}  # benign key -> first event_ts naming it
    unknown: set[str] = set()
    skipped: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    by_detector: Counter[str] = Counter()
    lines = firing_lines = resolved_lines = 0
    firing_ids: set[str] = set()
    scores: dict[str, list[float]] = {"attack": [], "benign": [], "unknown": []}

    with open(alerts_path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            lines += 1
            a, why = _parse_alert(raw)
            if a is None:
                skipped[why] += 1
                continue
            if a["status"] == "resolved":
                resolved_lines += 1
                continue
            firing_lines += 1
            firing_ids.add(str(a.get("alert_id", f"line-{lines}")))
            by_type[a["entity_type"]] += 1
            by_detector[str(a.get("detector", "?"))] += 1
            ts = float(a["event_ts"])
            labels = set()
            for k in _named_keys(a):
                info = keys.get(k)
                if info is None:
                    unknown.add(k)
                    labels.add("unknown")
                    continue
                labels.add(info["label"])
                if info["label"] == "benign":
                    flagged[k] = min(ts, flagged.get(k, ts))
                elif ts >= float(info["attack_start"]):
                    if k not in first_catch or ts < first_catch[k]:
                        first_catch[k] = ts
                        catch_alert[k] = {"entity_type": a["entity_type"],
                                          "detector": a.get("detector")}
                else:
                    named_early.add(k)
            if _is_number(a.get("score")):
                for lab in labels or {"unknown"}:
                    scores[lab].append(float(a["score"]))

    # ---- per key ---------------------------------------------------------------------------
    attack_detail: dict[str, dict[str, Any]] = {}
    for k, info in keys.items():
        if info["label"] != "attack":
            continue
        caught = k in first_catch
        attack_detail[k] = {
            "persona": info.get("persona"),
            "campaign": info.get("campaign"),
            "attack_start": info["attack_start"],
            "caught": caught,
            "ttd_s": (first_catch[k] - float(info["attack_start"])) if caught else None,
            "caught_by": catch_alert.get(k),
            "named_before_attack": k in named_early,
        }

    # ---- per persona -----------------------------------------------------------------------
    personas: dict[str, dict[str, Any]] = {}
    for k, info in keys.items():
        p = personas.setdefault(str(info.get("persona")), {
            "persona": str(info.get("persona")), "label": info["label"], "keys": 0, "hits": 0,
            "hard_negative": bool(info.get("hard_negative")), "_ttd": []})
        p["keys"] += 1
        if info["label"] == "attack":
            d = attack_detail[k]
            if d["caught"]:
                p["hits"] += 1
                p["_ttd"].append(d["ttd_s"])
        elif k in flagged:
            p["hits"] += 1
    persona_rows = []
    for p in sorted(personas.values(), key=lambda r: (r["label"] != "attack", r["persona"])):
        ttd = p.pop("_ttd")
        p["rate"] = _rate(p["hits"], p["keys"])
        p.update(_ttd_block(ttd) if p["label"] == "attack" else
                 {"ttd_median_s": None, "ttd_p90_s": None, "ttd_median_min": None,
                  "ttd_p90_min": None})
        persona_rows.append(p)

    # ---- summary ---------------------------------------------------------------------------
    def attack_block(select: list[str]) -> dict[str, Any]:
        caught = [k for k in select if attack_detail[k]["caught"]]
        block: dict[str, Any] = {"keys": len(select), "caught": len(caught),
                                 "recall": _rate(len(caught), len(select))}
        block.update(_ttd_block([attack_detail[k]["ttd_s"] for k in caught]))
        return block

    attack_keys = sorted(attack_detail)
    single = [k for k in attack_keys if not keys[k].get("campaign")]
    in_campaign = [k for k in attack_keys if keys[k].get("campaign")]
    benign = sorted(k for k, i in keys.items() if i["label"] == "benign")
    hard = [k for k in benign if keys[k].get("hard_negative")]
    hard_flagged = sorted(k for k in hard if k in flagged)
    overall = attack_block(attack_keys)
    summary: dict[str, Any] = {
        "attack_keys": overall["keys"],
        "caught": overall["caught"],
        "recall": overall["recall"],
        "single_key": attack_block(single),
        "campaign_keys": attack_block(in_campaign),
        "benign_keys": len(benign),
        "benign_flagged": sum(1 for k in benign if k in flagged),
        "benign_fpr": _rate(sum(1 for k in benign if k in flagged), len(benign)),
        "hard_negative_keys": len(hard),
        "hard_negative_flagged": len(hard_flagged),
        "hard_negative_flagged_keys": hard_flagged,
        "named_before_attack": sorted(named_early - set(first_catch)),
        "alerts_per_hour": len(firing_ids) / hours if hours > 0 else None,
    }
    summary.update({k: overall[k] for k in ("ttd_median_s", "ttd_p90_s", "ttd_median_min",
                                            "ttd_p90_min")})

    # ---- campaigns -------------------------------------------------------------------------
    campaigns: dict[str, dict[str, Any]] = {}
    for cid, c in sorted((truth.get("campaigns") or {}).items()):
        members = [k for k in c.get("keys", []) if k in attack_detail]
        caught = [k for k in members if attack_detail[k]["caught"]]
        first = min((first_catch[k] for k in caught), default=None)
        start = float(c.get("start_ts", min((keys[k]["attack_start"] for k in members),
                                            default=0.0)))
        campaigns[cid] = {
            "kind": c.get("kind"),
            "start_ts": start,
            "keys": len(members),
            "named": len(caught),
            "named_fraction": _rate(len(caught), len(members)),
            "detected": first is not None,
            "first_detection_ts": first,
            "ttd_s": None if first is None else first - start,
            "ttd_min": None if first is None else _minutes(first - start),
        }

    result: dict[str, Any] = {
        "schema": EVALUATION_SCHEMA,
        "truth": {"path": str(truth_path), "seed": truth.get("seed"), "hours": hours,
                  "start_ts": truth.get("start_ts"), "end_ts": truth.get("end_ts")},
        "alerts": {
            "path": str(alerts_path),
            "lines": lines,
            "valid": lines - sum(skipped.values()),
            "skipped": sum(skipped.values()),
            "skip_reasons": dict(sorted(skipped.items())),
            "firing_lines": firing_lines,
            "resolved_lines": resolved_lines,
            "firing_alerts": len(firing_ids),
            "per_hour": summary["alerts_per_hour"],
            "by_entity_type": dict(sorted(by_type.items())),
            "by_detector": dict(sorted(by_detector.items())),
            "unknown_keys_named": len(unknown),
            "scores": {lab: {"n": len(v), "median": _pct(v, 50)} for lab, v in scores.items()},
        },
        "personas": persona_rows,
        "summary": summary,
        "campaigns": campaigns,
        "targets": _targets(summary, campaigns),
        "attack_keys": attack_detail,
        "missed_attack_keys": [{"key": k, "persona": attack_detail[k]["persona"]}
                               for k in attack_keys if not attack_detail[k]["caught"]],
        "flagged_benign_keys": [{"key": k, "persona": keys[k].get("persona"),
                                 "hard_negative": bool(keys[k].get("hard_negative")),
                                 "first_event_ts": flagged[k]} for k in benign if k in flagged],
    }
    return result


def _check(value: Any, threshold: float, ok: bool, note: str = "") -> dict[str, Any]:
    out = {"value": value, "threshold": threshold, "pass": bool(ok)}
    if note:
        out["note"] = note
    return out


def _targets(summary: dict[str, Any], campaigns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    t = TARGETS
    single = summary["single_key"]
    fpr = summary["benign_fpr"] or 0.0
    ttd = single["ttd_median_s"]
    issue3 = {
        "single_key_attacks_caught": _check(
            single["recall"], 1.0, single["keys"] == 0 or single["caught"] == single["keys"],
            "every single-key attack key caught"),
        "benign_fpr": _check(fpr, t["benign_fpr_max"], fpr <= t["benign_fpr_max"]),
        "hard_negative_keys_flagged": _check(
            summary["hard_negative_flagged"], t["hard_negative_keys_max"],
            summary["hard_negative_flagged"] <= t["hard_negative_keys_max"]),
        "ttd_median_s": _check(ttd, t["ttd_median_s_max"],
                               single["keys"] == 0 or (ttd is not None and ttd <= t["ttd_median_s_max"]),
                               "single-key attacks, from attack start"),
    }
    camp = summary["campaign_keys"]
    late = [cid for cid, c in campaigns.items()
            if c["ttd_s"] is None or c["ttd_s"] > t["campaign_ttd_s_max"]]
    issue4 = {
        "campaign_keys_named": _check(
            camp["recall"], t["campaign_keys_named_min"],
            camp["keys"] == 0 or (camp["recall"] or 0.0) >= t["campaign_keys_named_min"]),
        "campaigns_detected_in_time": _check(
            len(campaigns) - len(late), t["campaign_ttd_s_max"], not late,
            "campaigns detected within the threshold (seconds) of their start"
            + (f"; late or missed: {', '.join(late)}" if late else "")),
        "benign_fpr": _check(fpr, t["benign_fpr_max"], fpr <= t["benign_fpr_max"]),
    }
    if not campaigns:
        issue4["campaigns_detected_in_time"]["note"] = "no campaigns in this truth file"
    p3 = all(c["pass"] for c in issue3.values())
    p4 = all(c["pass"] for c in issue4.values())
    return {"issue3": {"checks": issue3, "pass": p3}, "issue4": {"checks": issue4, "pass": p4},
            "pass": p3 and p4}


# --------------------------------------------------------------------------------------------
# Output


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}%"


#: Missed attack keys and named benign keys listed by name in the text table.
_LIST_KEYS = 6


def format_table(result: dict[str, Any], *, targets: bool = True) -> str:
    """The result as a table by persona, then summary, campaigns and (with ``targets``) the
    issues' target checks, as plain text."""
    out = []
    hdr = f"{'persona':<20} {'label':<7} {'keys':>5} {'caught/flagged':>14} {'rate':>7} {'ttd p50':>9} {'ttd p90':>9}"
    out.append(hdr)
    out.append("-" * len(hdr))
    for p in result["personas"]:
        name = p["persona"] + (" *" if p.get("hard_negative") else "")
        out.append(f"{name:<20} {p['label']:<7} {p['keys']:>5} {p['hits']:>14} "
                   f"{_fmt_rate(p['rate']):>7} {_fmt_s(p['ttd_median_s']):>9} {_fmt_s(p['ttd_p90_s']):>9}")
    out.append("(* hard negative; for benign personas the count is keys flagged = false positives)")
    s = result["summary"]
    sk, ck = s["single_key"], s["campaign_keys"]
    out.append("")
    out.append(f"recall (attack keys)      {s['caught']}/{s['attack_keys']} = {_fmt_rate(s['recall'])}"
               f"   ttd p50 {_fmt_s(s['ttd_median_s'])}, p90 {_fmt_s(s['ttd_p90_s'])}")
    out.append(f"  single-key attacks      {sk['caught']}/{sk['keys']} = {_fmt_rate(sk['recall'])}"
               f"   ttd p50 {_fmt_s(sk['ttd_median_s'])}, p90 {_fmt_s(sk['ttd_p90_s'])}")
    out.append(f"  campaign keys           {ck['caught']}/{ck['keys']} = {_fmt_rate(ck['recall'])}"
               f"   ttd p50 {_fmt_s(ck['ttd_median_s'])}, p90 {_fmt_s(ck['ttd_p90_s'])}")
    out.append(f"benign false positives    {s['benign_flagged']}/{s['benign_keys']} = "
               f"{100 * (s['benign_fpr'] or 0):.2f}%")
    hn = ", ".join(s["hard_negative_flagged_keys"]) or "none"
    out.append(f"hard negatives flagged    {s['hard_negative_flagged']}/{s['hard_negative_keys']} ({hn})")
    # which keys, so a reader can look at them (bench/trace_key.py --key K)
    for label, rows in (("missed attack keys", result.get("missed_attack_keys", [])),
                        ("benign keys named", result.get("flagged_benign_keys", []))):
        if rows:
            shown = ", ".join(f"{r['key']} ({r['persona']}{' *' if r.get('hard_negative') else ''})"
                              for r in rows[:_LIST_KEYS])
            more = f" and {len(rows) - _LIST_KEYS} more (--json lists all)" if len(rows) > _LIST_KEYS else ""
            out.append(f"{label:<25} {shown}{more}")
    a = result["alerts"]
    out.append(f"alerts                    {a['firing_alerts']} firing "
               f"({a['per_hour']:.1f}/h), {a['skipped']} unusable line(s) skipped"
               if a["per_hour"] is not None else f"alerts {a['firing_alerts']} firing")
    if result["campaigns"]:
        out.append("")
        out.append(f"{'campaign':<22} {'kind':<9} {'keys':>5} {'named':>6} {'frac':>7} {'detected after':>15}")
        for cid, c in result["campaigns"].items():
            det = _fmt_s(c["ttd_s"]) if c["detected"] else "never"
            out.append(f"{cid:<22} {str(c['kind']):<9} {c['keys']:>5} {c['named']:>6} "
                       f"{_fmt_rate(c['named_fraction']):>7} {det:>15}")
    if not targets:
        return "\n".join(out)
    out.append("")
    for issue in ("issue3", "issue4"):
        block = result["targets"][issue]
        out.append(f"targets {issue}: {'PASS' if block['pass'] else 'FAIL'}")
        for name, c in block["checks"].items():
            v = c["value"]
            v = f"{v:.4g}" if isinstance(v, float) else str(v)
            out.append(f"  [{'x' if c['pass'] else ' '}] {name:<28} {v:>10}  (target {c['threshold']})")
    return "\n".join(out)


def plot(result: dict[str, Any], truth_path: str | Path, alerts_path: str | Path,
         png_path: str | Path) -> None:
    """Draw time-to-detect by attack persona and alert score distributions to a PNG.

    Raises
    ------
    PlotUnavailableError
        If matplotlib is not installed (it is optional: ``pip install matplotlib``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError(
            "the evaluation plot needs matplotlib, which is not installed; "
            "`pip install matplotlib` or drop --plot (the table and --json need nothing)"
        ) from None
    truth = load_truth(truth_path)
    by_persona: dict[str, list[float]] = {}
    for info in result["attack_keys"].values():
        if info["ttd_s"] is not None:
            by_persona.setdefault(info["persona"], []).append(info["ttd_s"] / 60.0)
    scores: dict[str, list[float]] = {"attack": [], "benign": []}
    with open(alerts_path, "rb") as fh:
        for raw in fh:
            a, _ = _parse_alert(raw) if raw.strip() else (None, "")
            if a is None or a["status"] != "firing" or not _is_number(a.get("score")):
                continue
            labels = {truth["keys"][k]["label"] for k in _named_keys(a) if k in truth["keys"]}
            for lab in labels:
                scores[lab].append(float(a["score"]))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = sorted(by_persona)
    if names:
        data = [by_persona[n] for n in names]
        try:
            ax1.boxplot(data, orientation="horizontal")
        except TypeError:  # matplotlib < 3.10
            ax1.boxplot(data, vert=False)
        ax1.set_yticks(range(1, len(names) + 1), names)
    ax1.axvline(TARGETS["ttd_median_s_max"] / 60.0, color="r", ls="--", lw=1)
    ax1.set_xlabel("time to detect (minutes)")
    ax1.set_title("time to detect by attack persona")
    bins = np.linspace(0, 1, 21)
    for lab, colour in (("attack", "tab:red"), ("benign", "tab:blue")):
        if scores[lab]:
            ax2.hist(scores[lab], bins=bins, alpha=0.6, color=colour,
                     label=f"naming {lab} keys (n={len(scores[lab])})")
    ax2.set_xlabel("alert score")
    ax2.set_title("firing alert scores")
    ax2.legend(loc="upper left")
    fig.suptitle(f"seed {result['truth'].get('seed')}, {result['truth'].get('hours')} h: "
                 f"recall {_fmt_rate(result['summary']['recall'])}, "
                 f"benign FPR {_fmt_rate(result['summary']['benign_fpr'])}")
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
