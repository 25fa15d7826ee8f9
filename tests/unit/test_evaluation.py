"""The evaluation harness on hand-made truth/alert pairs with known answers."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.evaluation import PlotUnavailableError, evaluate, format_table, plot
from streams.simulator import simulate

T0 = 1_000_000.0


def _key(label: str, persona: str, start: float | None = None, campaign: str | None = None,
         hard: bool = False) -> dict:
    return {"label": label, "persona": persona, "attack_start": start, "campaign": campaign,
            "hard_negative": hard}


TRUTH = {
    "schema": "moatwatch.truth/v1", "seed": 7, "hours": 2.0, "start_ts": T0,
    "end_ts": T0 + 7200,
    "keys": {
        "bulk": _key("attack", "bulk_distiller", T0 + 1000),
        "drift": _key("attack", "drifter", T0 + 5000),
        "slow": _key("attack", "low_and_slow", T0 + 1000),
        "c1": _key("attack", "campaign_template", T0 + 2000, "camp"),
        "c2": _key("attack", "campaign_template", T0 + 4000, "camp"),
        "user": _key("benign", "light_user"),
        "rag": _key("benign", "rag_batch", hard=True),
        "nat": _key("benign", "light_user_cgnat"),
        "quiet": _key("benign", "light_user"),
    },
    "campaigns": {"camp": {"kind": "template", "start_ts": T0 + 2000, "keys": ["c1", "c2"]}},
}


def _alert(aid: str, entity_type: str, entity: str, ts: float, status: str = "firing",
           related: list[str] | None = None, score: float = 0.9) -> dict:
    return {"alert_id": aid, "schema_version": 1, "entity_type": entity_type,
            "entity": entity, "status": status, "severity": "warning", "score": score,
            "event_ts": ts, "detected_at": ts + 1,
            "window": {"first_ts": ts - 60, "last_ts": ts, "events": 10},
            "reasons": [], "detector": "key_population", "model_version": "test",
            "related_entities": related or [], "related_total": len(related or [])}


ALERTS = [
    _alert("a1", "api_key", "bulk", T0 + 1120),             # caught, ttd 120 s
    _alert("a1", "api_key", "bulk", T0 + 1500),             # escalation of the same episode
    _alert("a2", "api_key", "drift", T0 + 3000),            # before its drift: does not count
    _alert("a3", "client_net", "10.0.0.0/24", T0 + 1600, related=["slow", "nat"]),
    _alert("a4", "template", "fam-1", T0 + 2300, related=["c1", "ghost"]),
    _alert("a5", "api_key", "user", T0 + 900, status="resolved"),  # resolved only: not an FP
    _alert("a6", "api_key", "rag", T0 + 4000),              # a hard negative flagged
    _alert("a7", "account", "acct_x", T0 + 1100, related=["bulk"]),  # later catch is earlier
]
GARBAGE = [
    b"not json at all",
    b"[1, 2, 3]",
    b'{"status": "weird", "entity_type": "api_key", "entity": "bulk", "event_ts": 1}',
    b'{"status": "firing", "entity_type": "api_key", "event_ts": 1}',
    b'{"status": "firing", "entity_type": "api_key", "entity": "slow", "event_ts": "soon"}',
    b'{"status": "firing", "entity_type": "api_key", "entity": "slow", "event_ts": 1e9, '
    b'"related_entities": "slow"}',
    b"\xff\xfe\x00garbage",
    b"",
]


def _write(tmp: Path, truth: dict, alerts: list[dict], garbage: list[bytes] = ()) -> tuple[str, str]:
    t, a = tmp / "truth.json", tmp / "alerts.jsonl"
    t.write_bytes(orjson.dumps(truth))
    a.write_bytes(b"\n".join([orjson.dumps(x) for x in alerts] + list(garbage)) + b"\n")
    return str(t), str(a)


@pytest.fixture()
def result(tmp_path: Path) -> dict:
    return evaluate(*_write(tmp_path, TRUTH, ALERTS, GARBAGE))


def test_catches_need_a_firing_alert_at_or_after_attack_start(result: dict) -> None:
    ak = result["attack_keys"]
    assert ak["bulk"]["caught"] and ak["bulk"]["ttd_s"] == 100.0  # a7 names it at +1100
    assert not ak["drift"]["caught"] and ak["drift"]["named_before_attack"]
    assert result["summary"]["named_before_attack"] == ["drift"]
    assert {m["key"] for m in result["missed_attack_keys"]} == {"drift", "c2"}


def test_related_entities_name_keys(result: dict) -> None:
    ak = result["attack_keys"]
    assert ak["slow"]["caught"] and ak["slow"]["ttd_s"] == 600.0
    assert ak["slow"]["caught_by"]["entity_type"] == "client_net"
    assert ak["c1"]["caught"] and ak["c1"]["ttd_s"] == 300.0
    assert result["alerts"]["unknown_keys_named"] == 1  # "ghost"


def test_summary_numbers(result: dict) -> None:
    s = result["summary"]
    assert (s["attack_keys"], s["caught"]) == (5, 3)
    assert s["recall"] == pytest.approx(0.6)
    assert (s["single_key"]["keys"], s["single_key"]["caught"]) == (3, 2)
    assert (s["campaign_keys"]["keys"], s["campaign_keys"]["caught"]) == (2, 1)
    # single-key TTDs 100 and 600 s: numpy's linear percentiles
    assert s["single_key"]["ttd_median_s"] == pytest.approx(350.0)
    assert s["single_key"]["ttd_p90_s"] == pytest.approx(550.0)
    assert s["ttd_median_s"] == pytest.approx(300.0)  # over 100, 300, 600
    assert s["ttd_median_min"] == pytest.approx(5.0)
    # benign: "nat" (via related_entities) and "rag" flagged; "user" only in a resolved alert
    assert (s["benign_keys"], s["benign_flagged"]) == (4, 2)
    assert s["benign_fpr"] == pytest.approx(0.5)
    assert s["hard_negative_flagged"] == 1 and s["hard_negative_flagged_keys"] == ["rag"]
    assert {f["key"] for f in result["flagged_benign_keys"]} == {"nat", "rag"}
    # 6 distinct firing alert ids (a1 twice) over 2 simulated hours
    assert result["alerts"]["firing_alerts"] == 6
    assert s["alerts_per_hour"] == pytest.approx(3.0)


def test_persona_table(result: dict) -> None:
    rows = {p["persona"]: p for p in result["personas"]}
    assert rows["light_user"]["keys"] == 2 and rows["light_user"]["hits"] == 0
    assert rows["rag_batch"]["hits"] == 1 and rows["rag_batch"]["hard_negative"]
    assert rows["campaign_template"]["rate"] == pytest.approx(0.5)
    assert rows["bulk_distiller"]["ttd_median_s"] == 100.0
    assert [p["label"] for p in result["personas"]][:4] == ["attack"] * 4  # attacks first


def test_campaigns(result: dict) -> None:
    c = result["campaigns"]["camp"]
    assert c["detected"] and c["ttd_s"] == 300.0
    assert (c["keys"], c["named"], c["named_fraction"]) == (2, 1, 0.5)


def test_targets(result: dict) -> None:
    t3 = result["targets"]["issue3"]["checks"]
    assert not t3["single_key_attacks_caught"]["pass"]
    assert not t3["benign_fpr"]["pass"]
    assert t3["hard_negative_keys_flagged"]["pass"]  # one is tolerated
    assert t3["ttd_median_s"]["pass"]
    t4 = result["targets"]["issue4"]["checks"]
    assert not t4["campaign_keys_named"]["pass"]
    assert t4["campaigns_detected_in_time"]["pass"]
    assert not result["targets"]["pass"]


def test_garbage_lines_are_counted_and_skipped(result: dict) -> None:
    a = result["alerts"]
    assert a["skipped"] == 7  # the empty line is not a line
    assert a["skip_reasons"] == {"bad_event_ts": 1, "bad_related_entities": 1,
                                 "invalid_json": 2, "missing_entity": 1, "not_object": 1,
                                 "unknown_status": 1}
    assert a["resolved_lines"] == 1 and a["firing_lines"] == 7


def test_result_is_json_and_table_is_readable(result: dict) -> None:
    orjson.dumps(result)  # no numpy scalars or other non-JSON values
    table = format_table(result)
    for word in ("bulk_distiller", "rag_batch *", "campaign_template", "FAIL", "camp",
                 "hard negatives flagged    1/1 (rag)"):
        assert word in table, word


def test_table_names_the_missed_and_the_wrongly_named_keys(result: dict, tmp_path: Path) -> None:
    table = format_table(result)
    missed = next(x for x in table.splitlines() if x.startswith("missed attack keys"))
    assert "c2 (campaign_template)" in missed and "drift (drifter)" in missed
    named = next(x for x in table.splitlines() if x.startswith("benign keys named"))
    assert "rag (rag_batch *)" in named and "nat (light_user_cgnat)" in named
    assert "user (" not in named  # resolved only: not a false positive
    # a long list is cut, and says how many it left out
    many = dict(TRUTH, keys={f"k{i}": _key("attack", "mimicry", T0) for i in range(9)})
    cut = format_table(evaluate(*_write(tmp_path, many, [])))
    assert "k5 (mimicry) and 3 more (--json lists all)" in cut and "k6 (" not in cut
    # nothing to list: no line
    clean = format_table(evaluate(*_write(tmp_path, TRUTH, [
        _alert(f"x{k}", "api_key", k, info["attack_start"] + 60)
        for k, info in TRUTH["keys"].items() if info["label"] == "attack"])))
    assert "missed attack keys" not in clean and "benign keys named" not in clean


def test_everything_caught_passes(tmp_path: Path) -> None:
    alerts = [_alert(f"x{k}", "api_key", k, info["attack_start"] + 60)
              for k, info in TRUTH["keys"].items() if info["label"] == "attack"]
    r = evaluate(*_write(tmp_path, TRUTH, alerts))
    assert r["summary"]["recall"] == 1.0 and r["summary"]["benign_fpr"] == 0.0
    assert r["targets"]["pass"], r["targets"]
    assert "PASS" in format_table(r) and "FAIL" not in format_table(r)


def test_no_alerts_at_all(tmp_path: Path) -> None:
    r = evaluate(*_write(tmp_path, TRUTH, []))
    assert r["summary"]["recall"] == 0.0 and r["summary"]["ttd_median_s"] is None
    assert r["alerts"]["per_hour"] == 0.0
    assert not r["targets"]["issue3"]["checks"]["ttd_median_s"]["pass"]
    format_table(r)


def test_bad_truth_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_bytes(b'{"schema": "something/else", "keys": {}}')
    (tmp_path / "a.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match="moatwatch.truth/v1"):
        evaluate(str(bad), str(tmp_path / "a.jsonl"))
    bad.write_bytes(b"{not json")
    with pytest.raises(ValueError, match="not JSON"):
        evaluate(str(bad), str(tmp_path / "a.jsonl"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(
    st.binary(max_size=80),
    st.dictionaries(st.sampled_from(["status", "entity_type", "entity", "event_ts",
                                     "related_entities", "score", "alert_id"]),
                    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
                              st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3)),
                    max_size=7).map(orjson.dumps),
), max_size=20))
def test_any_alert_bytes_never_crash(tmp_path: Path, lines: list[bytes]) -> None:
    t = tmp_path / "truth.json"
    t.write_bytes(orjson.dumps(TRUTH))
    a = tmp_path / "alerts.jsonl"
    a.write_bytes(b"\n".join(x.replace(b"\n", b" ") for x in lines))
    r = evaluate(str(t), str(a))
    assert r["alerts"]["valid"] + r["alerts"]["skipped"] == r["alerts"]["lines"]
    orjson.dumps(r)
    format_table(r)


def test_oracle_alerts_on_a_simulated_run_pass_every_target(tmp_path: Path) -> None:
    """The simulator's truth and the harness agree: perfect alerts score perfectly."""
    events, truth_path = tmp_path / "e.jsonl", tmp_path / "t.json"
    simulate(3, 4, str(events), str(truth_path), scale=0.1, progress=False)
    truth = orjson.loads(truth_path.read_bytes())
    alerts = [_alert(f"o{i}", "api_key", k, info["attack_start"] + 30)
              for i, (k, info) in enumerate(sorted(truth["keys"].items()))
              if info["label"] == "attack"]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in alerts))
    r = evaluate(str(truth_path), str(tmp_path / "a.jsonl"))
    assert r["summary"]["recall"] == 1.0 and r["summary"]["benign_flagged"] == 0
    assert len(r["campaigns"]) == 2 and all(c["ttd_s"] == 30.0 for c in r["campaigns"].values())
    assert r["targets"]["pass"]


def test_plot_without_matplotlib_says_what_to_do(tmp_path: Path, result: dict,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    t, a = _write(tmp_path, TRUTH, ALERTS)
    with pytest.raises(PlotUnavailableError, match="pip install matplotlib"):
        plot(result, t, a, str(tmp_path / "p.png"))


def test_plot_draws_a_png_when_matplotlib_is_there(tmp_path: Path, result: dict) -> None:
    import matplotlib  # noqa: F401 - a test dependency (pyproject [test]); fails, never skips
    t, a = _write(tmp_path, TRUTH, ALERTS)
    plot(result, t, a, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
