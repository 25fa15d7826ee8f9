"""`moatwatch replay` and the CLI: dead letters to a file, clear errors, the same alerts twice."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from streams.cli import main
from streams.replay import ReplayError, replay

GOOD = {"event_id": "e1", "ts": 1767571200.0, "api_key": "k1", "prompt_tokens": 12,
        "completion_tokens": 340, "status": 200}


def _events(n: int = 300) -> list[bytes]:
    out = []
    for i in range(n):
        out.append(orjson.dumps({**GOOD, "event_id": f"e{i}", "ts": GOOD["ts"] + i * 7.0,
                                 "api_key": f"k{i % 5}", "topic": ["math", "code", "science", "reasoning"][i % 4],
                                 "cot_request": i % 3 != 0, "turn": 1,
                                 "prompt_simhash": f"{(i * 2654435761) & 0xFFFFFFFFFFFFFFFF:016x}"}))
    return out


def test_replay_dead_letters_bad_lines_and_keeps_going(tmp_path):
    lines = _events()
    bad = [b"{oops", b"[]", b'{"event_id":"x"}', b"\xff\xfe"]
    mixed = lines[:100] + bad + lines[100:]
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join(mixed) + b"\n")
    out = tmp_path / "alerts.jsonl"
    summary = replay(str(src), str(out), progress=False)
    assert summary.events == len(lines) and summary.invalid == len(bad)
    dead = [orjson.loads(x) for x in (tmp_path / "alerts.dlq.jsonl").read_bytes().splitlines()]
    assert [d["source"]["line"] for d in dead] == [101, 102, 103, 104]
    assert {d["reason"] for d in dead} == {"invalid_json", "not_object", "missing_field", "not_utf8"}

    # the good events' alerts do not depend on the bad lines
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join(lines) + b"\n")
    out2 = tmp_path / "alerts2.jsonl"
    replay(str(clean), str(out2), progress=False)
    ids = lambda p: [orjson.loads(x)["alert_id"] for x in p.read_bytes().splitlines()]  # noqa: E731
    assert ids(out) == ids(out2)


def test_replay_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(ReplayError, match="does not exist"):
        replay(str(tmp_path / "nope.jsonl"), str(tmp_path / "a.jsonl"))
    rc = main(["replay", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "a.jsonl")])
    assert rc == 2


def test_replay_reads_gzip(tmp_path):
    import gzip

    src = tmp_path / "events.jsonl.gz"
    with gzip.open(src, "wb") as fh:
        fh.write(b"\n".join(_events(50)) + b"\n")
    s = replay(str(src), str(tmp_path / "a.jsonl"), progress=False)
    assert s.events == 50


@pytest.mark.parametrize("argv,needle", [
    (["replay"], "required"),
    (["produce", "x.jsonl", "--rate", "-3"], "must be 0 or more"),
    (["alerts", "--timeout", "zero"], "is not a number"),
    (["simulate", "--hours", "0", "--out", "a", "--truth", "b"], "greater than 0"),
    (["feedback", "maybe", "--entity", "k"], "invalid choice"),
])
def test_bad_command_lines_say_what_to_fix(argv, needle):
    out = subprocess.run([sys.executable, "-m", "streams.cli", *argv], capture_output=True, text=True)
    assert out.returncode == 2
    assert needle in out.stderr


def test_bad_environment_says_which_variable(tmp_path):
    out = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "x", "--out", "y"],
                         capture_output=True, text=True,
                         env={"MOATWATCH_WEB_PORT": "abc", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert "MOATWATCH_WEB_PORT" in out.stderr


def test_worker_help_lists_the_settings():
    out = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for var in ("MOATWATCH_BOOTSTRAP", "MOATWATCH_WEB_PORT", "MOATWATCH_EVENTS_TOPIC",
                "MOATWATCH_ALERTS_TOPIC", "MOATWATCH_DLQ_TOPIC", "MOATWATCH_APP_ID"):
        assert var in out.stdout


def test_an_event_the_detector_fails_on_is_dead_lettered_not_fatal(tmp_path, monkeypatch):
    from streams import pipeline

    real = pipeline.Detector.process

    def flaky(self, event, **kw):
        if event["event_id"] == "e7":
            raise RuntimeError("boom")
        return real(self, event, **kw)

    monkeypatch.setattr(pipeline.Detector, "process", flaky)
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join(_events(20)) + b"\n")
    summary = replay(str(src), str(tmp_path / "a.jsonl"), progress=False)
    assert summary.events == 20 and summary.invalid == 1
    dead = [orjson.loads(x) for x in (tmp_path / "a.dlq.jsonl").read_bytes().splitlines()]
    assert dead[0]["reason"] == "processing_error" and "boom" in dead[0]["detail"]
    assert dead[0]["source"]["line"] == 8


def _entity_types(path) -> set[str]:
    return {orjson.loads(x)["entity_type"] for x in path.read_bytes().splitlines()}


def test_replay_takes_detector_settings_from_a_file_and_can_leave_campaigns_out(tmp_path,
                                                                                monkeypatch):
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join(_events()) + b"\n")
    base = tmp_path / "base.jsonl"
    assert main(["replay", str(src), "--out", str(base), "--no-progress"]) == 0
    assert _entity_types(base) == {"api_key", "template"}

    # a warm-up longer than the file: no key can fire; campaigns are not the per-key detector's
    cfg = tmp_path / "detector.json"
    cfg.write_bytes(b'{"warmup_events": 100000}')
    late = tmp_path / "late.jsonl"
    assert main(["replay", str(src), "--out", str(late), "--no-progress",
                 "--detector-config", str(cfg)]) == 0
    assert _entity_types(late) == {"template"}
    # the same file named by the environment, as the worker reads it
    monkeypatch.setenv("MOATWATCH_DETECTOR_CONFIG", str(cfg))
    env = tmp_path / "env.jsonl"
    assert main(["replay", str(src), "--out", str(env), "--no-progress"]) == 0
    assert env.read_bytes().count(b"\n") == late.read_bytes().count(b"\n")
    monkeypatch.delenv("MOATWATCH_DETECTOR_CONFIG")

    keys_only = tmp_path / "keys.jsonl"
    assert main(["replay", str(src), "--out", str(keys_only), "--no-progress",
                 "--no-campaigns"]) == 0
    assert _entity_types(keys_only) == {"api_key"}


@pytest.mark.parametrize("text,needle", [
    ('{"fabricated_switch_flor": 1.0}', "did you mean 'fabricated_switch_floor'"),
    ('{"fabricated_switch_floor": 2}', "fabricated_switch_floor must be in [0, 1]"),
    ('{"warmup_events": "3"}', "warmup_events must be an integer"),
    ("[]", "expected one JSON object"),
    ("{oops", "is not JSON"),
])
def test_a_bad_detector_config_says_what_to_fix(tmp_path, text, needle):
    cfg = tmp_path / "detector.json"
    cfg.write_text(text)
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join(_events(20)) + b"\n")
    out = subprocess.run([sys.executable, "-m", "streams.cli", "replay", str(src), "--out",
                          str(tmp_path / "a.jsonl"), "--detector-config", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert needle in out.stderr and str(cfg) in out.stderr
    assert not (tmp_path / "a.jsonl").exists()  # nothing ran


def test_help_shows_defaults_that_say_something():
    from streams.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        assert "(default: True)" not in text, name
    replay_help = sub.choices["replay"].format_help()
    assert "(default: 1)" in replay_help  # --partitions keeps its default
    assert replay_help.count("MOATWATCH_DETECTOR_CONFIG)") == 1
