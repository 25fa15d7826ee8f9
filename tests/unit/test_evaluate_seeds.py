"""bench/evaluate_seeds.py: replay + evaluate per seed gives the same verdicts as the CLI."""

from __future__ import annotations

import orjson
import pytest

from streams.evaluation import evaluate


def test_generates_replays_and_reports_the_cli_verdicts(tmp_path, capsys, bench_script):
    es = bench_script("evaluate_seeds")
    sim, out, js = tmp_path / "sim", tmp_path / "out", tmp_path / "results" / "rows.json"
    assert es.main(["--sim-dir", str(sim), "--out-dir", str(out), "--seeds", "5", "--generate",
                    "--hours", "1", "--jobs", "1", "--json", str(js)]) == 0
    rows = orjson.loads(js.read_bytes())["rows"]
    assert [r["seed"] for r in rows] == [5]
    r = rows[0]
    assert r["events"] > 1000
    # the row is exactly what `moatwatch evaluate` says of the same alert file
    res = evaluate(str(sim / "seed5.truth.json"), str(out / "seed5.alerts.jsonl"))
    assert r["issue3_pass"] == res["targets"]["issue3"]["pass"]
    assert r["issue4_pass"] == res["targets"]["issue4"]["pass"]
    assert r["benign_fpr"] == res["summary"]["benign_fpr"]
    assert len(r["missed"]) + r["missed_campaign_keys"] == len(res["missed_attack_keys"])
    assert set(r["campaigns"]) == set(res["campaigns"])
    printed = capsys.readouterr().out
    assert "issue 3 passes on" in printed and "issue 4 on" in printed


def test_missing_seed_says_how_to_get_it(tmp_path, capsys, bench_script):
    es = bench_script("evaluate_seeds")
    with pytest.raises(SystemExit) as exc:
        es.main(["--sim-dir", str(tmp_path), "--seeds", "7"])
    assert exc.value.code == 2
    assert "--generate" in capsys.readouterr().err
