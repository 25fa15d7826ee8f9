"""bench/perturb_benign.py: chosen benign people-facing keys take up a habit, nothing else changes."""

from __future__ import annotations

import orjson
import pytest

from streams.simulator import simulate


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    simulate(0.5, 3, str(d / "seed3.jsonl"), str(d / "seed3.truth.json"), scale=0.3)
    return d


def _events(path):
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh]


def test_only_the_chosen_benign_people_facing_keys_change_and_only_their_temperature(sim, tmp_path, bench_script):
    pt = bench_script("perturb_benign")
    res = pt.perturb(sim / "seed3.jsonl", tmp_path, share=0.5, change=1.0)
    truth = orjson.loads((tmp_path / "seed3.truth.json").read_bytes())
    keys = set(truth["perturbed_keys"])
    assert res["keys"] == len(keys) > 0
    for k in keys:
        info = truth["keys"][k]
        assert info["label"] == "benign" and info["persona"] in pt.PEOPLE_FACING
    before, after = _events(sim / "seed3.jsonl"), _events(tmp_path / "seed3.jsonl")
    assert len(before) == len(after)
    temps: dict[str, set] = {}
    n = 0
    for a, b in zip(before, after, strict=True):
        if a["api_key"] in keys:
            n += 1
            assert b["temperature"] in pt.SLIDER
            temps.setdefault(a["api_key"], set()).add(b["temperature"])
            assert {k: v for k, v in a.items() if k != "temperature"} == \
                {k: v for k, v in b.items() if k != "temperature"}
        else:
            assert a == b
    assert n == res["events_changed"]
    busy = [k for k in keys if sum(e["api_key"] == k for e in before) >= 10]
    assert busy and all(len(temps[k]) > 1 for k in busy)  # a new draw every request
    # the same input gives the same copy; change 0 keeps one value per key
    again = tmp_path / "again"
    pt.perturb(sim / "seed3.jsonl", again, share=0.5, change=1.0)
    assert (again / "seed3.jsonl").read_bytes() == (tmp_path / "seed3.jsonl").read_bytes()
    still = tmp_path / "still"
    pt.perturb(sim / "seed3.jsonl", still, share=0.5, change=0.0)
    one: dict[str, set] = {}
    for e in _events(still / "seed3.jsonl"):
        if e["api_key"] in keys:
            one.setdefault(e["api_key"], set()).add(e["temperature"])
    assert all(len(v) == 1 for v in one.values())


def test_bad_command_lines_say_what_to_fix(sim, tmp_path, bench_script, capsys):
    pt = bench_script("perturb_benign")
    for argv, words in (
        (["--events", str(sim / "seed3.jsonl"), "--out", str(tmp_path), "--share", "1.5"], "between 0 and 1"),
        (["--events", str(sim / "nope.jsonl"), "--out", str(tmp_path)], "does not exist"),
        (["--events", str(sim / "seed3.jsonl"), "--out", str(sim)], "another folder"),
    ):
        with pytest.raises(SystemExit):
            pt.main(argv)
        assert words in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["whole-answers", "logprobs"])
def test_other_habits_touch_only_their_field(sim, tmp_path, bench_script, mode):
    pt = bench_script("perturb_benign")
    pt.perturb(sim / "seed3.jsonl", tmp_path, share=0.5, change=0.5, mode=mode)
    keys = set(orjson.loads((tmp_path / "seed3.truth.json").read_bytes())["perturbed_keys"])
    field = {"whole-answers": "stream", "logprobs": "logprobs"}[mode]
    hit = total = 0
    for a, b in zip(_events(sim / "seed3.jsonl"), _events(tmp_path / "seed3.jsonl"), strict=True):
        if a["api_key"] not in keys:
            assert a == b
            continue
        total += 1
        assert {k: v for k, v in a.items() if k != field} == {k: v for k, v in b.items() if k != field}
        if mode == "whole-answers":
            assert b["stream"] is False
        elif b.get("logprobs") is True:
            hit += 1
    if mode == "logprobs":
        assert 0.35 * total < hit < 0.65 * total  # about --change of the requests


def test_an_unknown_mode_is_refused_before_anything_is_written(sim, tmp_path, bench_script):
    pt = bench_script("perturb_benign")
    with pytest.raises(ValueError, match="unknown mode 'sleepy'"):
        pt.perturb(sim / "seed3.jsonl", tmp_path / "out", share=0.5, change=0.5, mode="sleepy")
    assert not (tmp_path / "out").exists()


def test_subject_changes_move_follow_ups_to_a_new_topic_that_later_turns_keep(sim, tmp_path, bench_script):
    pt = bench_script("perturb_benign")
    pt.perturb(sim / "seed3.jsonl", tmp_path, share=1.0, change=0.5, mode="subject-changes")
    keys = set(orjson.loads((tmp_path / "seed3.truth.json").read_bytes())["perturbed_keys"])
    moved = followups = 0
    last: dict[tuple, str] = {}  # (key, conversation) -> its latest topic in the copy
    for a, b in zip(_events(sim / "seed3.jsonl"), _events(tmp_path / "seed3.jsonl"), strict=True):
        if a["api_key"] not in keys or "conversation_id" not in a or "topic" not in a:
            assert a == b
            continue
        assert {k: v for k, v in a.items() if k != "topic"} == {k: v for k, v in b.items() if k != "topic"}
        assert b["topic"] in pt.TOPICS
        conv = (a["api_key"], a["conversation_id"])
        if a.get("turn", 1) > 1 and conv in last:
            followups += 1
            moved += b["topic"] != last[conv]
        elif a.get("turn", 1) <= 1:
            assert a == b  # a conversation's first turn keeps its topic
        last[conv] = b["topic"]
    # about --change of the follow-ups change the subject (plus the few the simulator changed)
    assert followups > 50 and 0.35 * followups < moved < 0.75 * followups
