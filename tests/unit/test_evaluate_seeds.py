"""bench/evaluate_seeds.py: replay + evaluate per seed gives the same verdicts as the CLI."""

from __future__ import annotations

import orjson
import pytest

from streams.evaluation import evaluate
from streams.simulator import simulate


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


def test_perturb_scores_a_copy_with_the_habit_and_counts_the_changed_keys_named(tmp_path, capsys, bench_script):
    es = bench_script("evaluate_seeds")
    sim, out, js = tmp_path / "sim", tmp_path / "out", tmp_path / "rows.json"
    simulate(1.0, 5, str(sim / "seed5.jsonl"), str(sim / "seed5.truth.json"), scale=0.3)
    original = (sim / "seed5.jsonl").read_bytes()
    assert es.main(["--sim-dir", str(sim), "--out-dir", str(out), "--seeds", "5", "--jobs", "1",
                    "--perturb", "whole-answers", "--perturb-share", "0.5", "--json", str(js)]) == 0
    r = orjson.loads(js.read_bytes())["rows"][0]
    truth = orjson.loads((out / "perturbed" / "seed5.truth.json").read_bytes())
    changed = set(truth["perturbed_keys"])
    assert truth["perturbation"]["mode"] == "whole-answers" and r["perturbed_keys"] == len(changed) > 0
    # scored against the copy's truth: the count is of the changed keys the alerts name
    res = evaluate(str(out / "perturbed" / "seed5.truth.json"), str(out / "seed5.alerts.jsonl"))
    assert r["perturbed_named"] == sum(1 for k in res["flagged_benign_keys"] if k["key"] in changed)
    assert r["benign_fpr"] == res["summary"]["benign_fpr"]
    # the replayed copy was deleted; the seed itself is untouched
    assert not (out / "perturbed" / "seed5.jsonl").exists()
    assert (sim / "seed5.jsonl").read_bytes() == original
    assert f"benign keys given a habit (perturbed): {len(changed):,}" in capsys.readouterr().out


def test_perturb_refuses_an_unknown_habit_and_a_share_out_of_range(tmp_path, capsys, bench_script):
    es = bench_script("evaluate_seeds")
    for bad, says in ((["--perturb", "slider"], "invalid choice"),
                      (["--perturb", "logprobs", "--perturb-share", "1.5"], "between 0 and 1")):
        with pytest.raises(SystemExit) as exc:
            es.main(["--sim-dir", str(tmp_path), "--seeds", "7", *bad])
        assert exc.value.code == 2
        assert says in capsys.readouterr().err
    # copies must not land on the seeds they are made from
    seeds = tmp_path / "x" / "perturbed"
    simulate(0.2, 7, str(seeds / "seed7.jsonl"), str(seeds / "seed7.truth.json"), scale=0.1)
    before = (seeds / "seed7.jsonl").read_bytes()
    with pytest.raises(SystemExit):
        es.main(["--sim-dir", str(seeds), "--out-dir", str(tmp_path / "x"), "--seeds", "7",
                 "--perturb", "logprobs"])
    assert "choose another --out-dir" in capsys.readouterr().err
    assert (seeds / "seed7.jsonl").read_bytes() == before
