"""The traffic simulator: deterministic, contract-valid, labelled consistently, realistic enough.

Runs are small (a few simulated hours at a tenth of the reference key count) so the whole file
takes a couple of seconds.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas.validation import validate_event
from streams.simulator import (
    ATTACK_PERSONAS,
    BENIGN_PERSONAS,
    DEFAULT_START_TS,
    HARD_NEGATIVE_PERSONAS,
    TOPICS,
    TRUTH_SCHEMA,
    TracesNotFoundError,
    format_summary,
    resolve_traces_dir,
    simulate,
)

HOURS, SCALE, SEED = 4.0, 0.1, 11
SIMHASH = re.compile(r"^[0-9a-f]{16}$")
OPTIONAL_TYPES: dict[str, type | tuple[type, ...]] = {
    "account_id": str, "client_ip": str, "asn": int, "user_agent": str, "model": str,
    "endpoint": str, "max_tokens": int, "latency_ms": (int, float), "conversation_id": str,
    "turn": int, "prompt_simhash": str, "topic": str, "cot_request": bool, "logprobs": bool,
    "top_logprobs": int, "n": int, "temperature": (int, float), "stream": bool,
}
REQUIRED = ("event_id", "ts", "api_key", "prompt_tokens", "completion_tokens", "status")


def _run(tmp: Path, name: str, seed: int = SEED, hours: float = HOURS,
         scale: float = SCALE) -> tuple[dict, Path, Path]:
    out, truth = tmp / f"{name}.jsonl", tmp / f"{name}.truth.json"
    summary = simulate(hours, seed, str(out), str(truth), scale=scale, progress=False)
    return summary, out, truth


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sim")
    summary, out, truth_path = _run(tmp, "a")
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    truth = orjson.loads(truth_path.read_bytes())
    by_key: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_key[e["api_key"]].append(e)
    return {"summary": summary, "out": out, "truth_path": truth_path, "events": events,
            "truth": truth, "by_key": by_key, "tmp": tmp}


def _hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def test_same_seed_gives_identical_files(run: dict) -> None:
    _, out, truth = _run(run["tmp"], "again")
    assert out.read_bytes() == run["out"].read_bytes()
    assert truth.read_bytes() == run["truth_path"].read_bytes()


def test_different_seeds_differ(run: dict) -> None:
    summary, out, truth = _run(run["tmp"], "other", seed=SEED + 1)
    assert out.read_bytes() != run["out"].read_bytes()
    other = orjson.loads(truth.read_bytes())
    assert set(other["keys"]).isdisjoint(run["truth"]["keys"])  # key ids are drawn, not counted
    assert summary["events"] != run["summary"]["events"]


def test_every_event_satisfies_the_contract(run: dict) -> None:
    start, end = run["truth"]["start_ts"], run["truth"]["end_ts"]
    ids = set()
    prev = -math.inf
    for e in run["events"]:
        validate_event(e)  # the project's own QueryEvent v1 validator
        for f in REQUIRED:
            assert f in e, f
        assert isinstance(e["event_id"], str) and e["event_id"] not in ids
        ids.add(e["event_id"])
        assert isinstance(e["ts"], float) and start <= e["ts"] < end
        assert e["ts"] >= prev, "events must be sorted by ts"
        prev = e["ts"]
        assert isinstance(e["api_key"], str) and e["api_key"]
        for f in ("prompt_tokens", "completion_tokens", "status"):
            assert type(e[f]) is int and e[f] >= 0, f
        assert e["status"] in (200, 400, 429, 500)
        if e["status"] != 200:
            assert e["completion_tokens"] == 0
        assert "prompt_text" not in e
        for f, typ in OPTIONAL_TYPES.items():
            if f in e:
                assert isinstance(e[f], typ) and not (typ is int and isinstance(e[f], bool)), f
        if "prompt_simhash" in e:
            assert SIMHASH.match(e["prompt_simhash"]), e["prompt_simhash"]
        if "topic" in e:
            assert e["topic"] in TOPICS
        if "turn" in e:
            assert e["turn"] >= 1
        if "n" in e:
            assert e["n"] >= 1
        if e.get("max_tokens"):  # no choice is longer than the budget the request asked for
            assert e["completion_tokens"] <= e["max_tokens"] * e.get("n", 1), e
        if "client_ip" in e:
            ipaddress.ip_address(e["client_ip"])
        if "temperature" in e:
            assert 0 <= e["temperature"] <= 2


def test_summary_matches_files(run: dict) -> None:
    s = run["summary"]
    assert s["events"] == len(run["events"])
    assert s["keys"] == len(run["truth"]["keys"])
    assert s["attack_keys"] == sum(1 for k in run["truth"]["keys"].values() if k["label"] == "attack")
    assert s["campaigns"] == len(run["truth"]["campaigns"]) >= 2
    assert run["truth"]["start_ts"] == DEFAULT_START_TS
    assert run["truth"]["end_ts"] == DEFAULT_START_TS + HOURS * 3600


def test_summary_reads_as_text_with_every_persona_counted(run: dict) -> None:
    s = run["summary"]
    text = format_summary(s)
    head, attack, benign, traces = text.splitlines()
    assert head.startswith(f"{s['events']:,} events from {s['keys']:,} keys in ")
    assert attack.startswith(f"  attack keys {s['attack_keys']:,}: ")
    assert f"({s['campaigns']} campaigns with {s['campaign_keys']:,} keys)" in attack
    assert benign.startswith(f"  benign keys {s['benign_keys']:,}: ")
    for persona, count in s["personas"].items():
        line = attack if persona in ATTACK_PERSONAS else benign
        assert re.search(rf"\b{persona} {count:,}\b", line), (persona, line)
    assert traces.startswith("  traces ") and "conv " in traces


def test_every_persona_is_present(run: dict) -> None:
    personas = {k["persona"] for k in run["truth"]["keys"].values()}
    assert set(BENIGN_PERSONAS) <= personas
    assert set(ATTACK_PERSONAS) <= personas


def test_truth_is_consistent_with_events(run: dict) -> None:
    truth, by_key = run["truth"], run["by_key"]
    assert truth["schema"] == TRUTH_SCHEMA and truth["seed"] == SEED
    assert set(truth["keys"]) == set(by_key)
    for key, info in truth["keys"].items():
        assert set(info) >= {"label", "persona", "attack_start", "campaign", "hard_negative"}
        assert info["hard_negative"] == (info["persona"] in HARD_NEGATIVE_PERSONAS)
        ts = [e["ts"] for e in by_key[key]]
        if info["label"] == "benign":
            assert info["attack_start"] is None and info["campaign"] is None
            assert info["persona"] in BENIGN_PERSONAS
            continue
        assert info["persona"] in ATTACK_PERSONAS
        assert max(ts) >= info["attack_start"], "an attack key must act after its attack start"
        if info["persona"] == "drifter":
            assert min(ts) < info["attack_start"], "a drifter behaves benignly first"
        if info["persona"] in ("drifter", "mimicry"):
            # the attack starts with a request the key actually sent (its first harvest), not at
            # a planned drift time nor with a mimic's cover chat
            assert info["attack_start"] in ts and info["attack_start"] >= min(ts)
        else:
            assert info["attack_start"] == min(ts)
        if info["persona"].startswith("campaign_"):
            assert key in truth["campaigns"][info["campaign"]]["keys"]
    for cid, c in truth["campaigns"].items():
        assert c["keys"] and all(truth["keys"][k]["campaign"] == cid for k in c["keys"])
        assert c["start_ts"] == min(truth["keys"][k]["attack_start"] for k in c["keys"])


def test_campaign_keys_rotate_with_one_to_two_hour_lives(run: dict) -> None:
    truth, by_key = run["truth"], run["by_key"]
    end = truth["end_ts"]
    for c in truth["campaigns"].values():
        spans = sorted((by_key[k][0]["ts"], by_key[k][-1]["ts"]) for k in c["keys"])
        for first, last in spans:
            assert last - first <= 2 * 3600 + 60
            if last < end - 900:  # ended by rotation, not by the end of the run
                assert last - first >= 2700, (first, last)
        # new keys appear as old ones stop
        assert any(b_first >= a_last for a_first, a_last in spans for b_first, _ in spans)
        # ordinary user volume, not a firehose
        for k in c["keys"]:
            evs = by_key[k]
            hours = max(evs[-1]["ts"] - evs[0]["ts"], 1800) / 3600
            assert len(evs) / hours < 150


def test_template_campaign_shares_prompt_families_across_keys(run: dict) -> None:
    truth, by_key = run["truth"], run["by_key"]
    (cid,) = [c for c, v in truth["campaigns"].items() if v["kind"] == "template"]
    keys = truth["campaigns"][cid]["keys"]
    hashes = {k: [e["prompt_simhash"] for e in by_key[k] if "prompt_simhash" in e][:60]
              for k in keys}
    sharing = 0
    for k in keys:
        others = [h for o in keys if o != k for h in hashes[o]]
        if any(_hamming(h, o) <= 8 for h in hashes[k] for o in others):
            sharing += 1
    assert sharing >= 0.8 * len(keys)


def test_infra_campaign_shares_a_network_but_not_prompts(run: dict) -> None:
    truth, by_key = run["truth"], run["by_key"]
    (cid,) = [c for c, v in truth["campaigns"].items() if v["kind"] == "infra"]
    keys = truth["campaigns"][cid]["keys"]
    nets, asns = set(), set()
    for k in keys:
        for e in by_key[k]:
            if "client_ip" in e:
                ip = ipaddress.ip_address(e["client_ip"])
                nets.add(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))
            if "asn" in e:
                asns.add(e["asn"])
    assert len(nets) == 1 and len(asns) == 1


def test_benign_group_hard_negatives_exist(run: dict) -> None:
    truth, by_key = run["truth"], run["by_key"]
    cgnat = [k for k, v in truth["keys"].items() if v["persona"] == "light_user_cgnat"]
    nets = {".".join(e["client_ip"].split(".")[:3]) for k in cgnat for e in by_key[k]
            if "client_ip" in e}
    assert len(cgnat) >= 3 and len(nets) == 1
    reseller = [k for k, v in truth["keys"].items() if v["persona"] == "reseller_user"]
    accounts = {e["account_id"] for k in reseller for e in by_key[k] if "account_id" in e}
    assert len(reseller) >= 2 and len(accounts) == 1


def test_optional_fields_are_sometimes_missing(run: dict) -> None:
    keys_without = defaultdict(int)
    for evs in run["by_key"].values():
        for f in ("topic", "prompt_simhash", "user_agent", "asn"):
            if not any(f in e for e in evs):
                keys_without[f] += 1
    assert keys_without["topic"] > 0 and keys_without["prompt_simhash"] > 0


def test_attack_traits_are_drawn_not_fixed(tmp_path: Path) -> None:
    """Attack parameters differ between keys and seeds: nothing to key a rule on."""
    cot, ratio = [], []
    for seed in (1, 2, 3):
        _, out, truth_path = _run(tmp_path, f"s{seed}", seed=seed, hours=3.0)
        truth = orjson.loads(truth_path.read_bytes())["keys"]
        per: dict[str, list[dict]] = defaultdict(list)
        for line in out.read_bytes().splitlines():
            e = orjson.loads(line)
            info = truth[e["api_key"]]
            if info["label"] == "attack" and e["ts"] >= info["attack_start"]:
                per[e["api_key"]].append(e)
        for evs in per.values():
            c = [e["cot_request"] for e in evs if "cot_request" in e]
            if len(c) >= 20:
                cot.append(np.mean(c))
            ok = [e["completion_tokens"] / max(1, e["prompt_tokens"]) for e in evs
                  if e["status"] == 200]
            if len(ok) >= 20:
                ratio.append(float(np.median(ok)))
    assert np.std(cot) > 0.05 and np.std(ratio) > 0.5


def test_benign_background_has_real_burstiness_and_429s(tmp_path: Path) -> None:
    _, out, truth_path = _run(tmp_path, "big", seed=5, hours=2.0, scale=0.5)
    truth = orjson.loads(truth_path.read_bytes())["keys"]
    status_by_label: dict[str, list[int]] = defaultdict(list)
    for line in out.read_bytes().splitlines():
        e = orjson.loads(line)
        status_by_label[truth[e["api_key"]]["label"]].append(e["status"])
    benign = np.array(status_by_label["benign"])
    assert (benign == 429).any(), "benign keys near their limit get 429s too"
    assert (benign == 200).mean() > 0.9


def test_progress_bar_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    simulate(0.5, 1, str(tmp_path / "e.jsonl"), str(tmp_path / "t.json"), scale=0.05,
             progress=True)
    assert "simulate [" in capsys.readouterr().err
    simulate(0.5, 1, str(tmp_path / "e.jsonl"), str(tmp_path / "t.json"), scale=0.05,
             progress=False)
    assert capsys.readouterr().err == ""


def test_missing_traces_fail_with_a_clear_message(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TracesNotFoundError, match="--traces DIR or MOATWATCH_TRACES"):
        simulate(1, 1, str(tmp_path / "e.jsonl"), str(tmp_path / "t.json"),
                 traces_dir=str(tmp_path / "nowhere"))
    monkeypatch.setenv("MOATWATCH_TRACES", str(tmp_path / "elsewhere"))
    with pytest.raises(TracesNotFoundError, match="elsewhere"):
        resolve_traces_dir()
    monkeypatch.delenv("MOATWATCH_TRACES")
    assert (resolve_traces_dir() / "azure_llm_2023_conv.csv").is_file()


_TRACE_ARRAYS = ("conv_ctx", "conv_gen", "code_ctx", "code_gen", "conv_gaps", "code_gaps",
                 "moon_in", "moon_out", "moon_share", "moon_group")


def _bundled(name: str) -> Path:
    return resolve_traces_dir(None) / name


def test_traces_under_other_names_play_the_same_parts(tmp_path: Path) -> None:
    """The public datasets' own file names work: a file's part comes from its columns and
    name (hash_ids: prefix sharing; "code": the code service), not from one spelling."""
    from streams import simulator as sim

    for src, dst in (("azure_llm_2023_code.csv", "AzureLLMInferenceTrace_code_1week.csv"),
                     ("azure_llm_2023_conv.csv", "AzureLLMInferenceTrace_conv_1week.csv"),
                     ("mooncake_conversation_trace.jsonl", "toolagent_trace.jsonl")):
        (tmp_path / dst).write_bytes(_bundled(src).read_bytes())
    (tmp_path / "README.md").write_text("provenance\n")
    ours = sim._load_traces(str(resolve_traces_dir(None).resolve()))
    theirs = sim._load_traces(str(resolve_traces_dir(tmp_path).resolve()))
    for name in _TRACE_ARRAYS:
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    assert theirs.roles.describe() == {
        "conv": ["AzureLLMInferenceTrace_conv_1week.csv"],
        "code": ["AzureLLMInferenceTrace_code_1week.csv"],
        "prefix": ["toolagent_trace.jsonl"], "notes": [], "borrowed": []}


def test_gzip_compressed_traces_read_as_the_plain_ones(tmp_path: Path) -> None:
    """Public traces often ship compressed: ``.csv.gz`` and ``.jsonl.gz`` play the same parts
    with the same rows as the plain files."""
    import gzip

    from streams import simulator as sim

    for src, dst in (("azure_llm_2023_code.csv", "code_trace.csv.gz"),
                     ("azure_llm_2023_conv.csv", "conv_trace.CSV.gz"),
                     ("mooncake_conversation_trace.jsonl", "mooncake.jsonl.gz")):
        (tmp_path / dst).write_bytes(gzip.compress(_bundled(src).read_bytes()))
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(b"not a trace\n"))
    whole = gzip.compress(_bundled("azure_llm_2023_conv.csv").read_bytes())
    (tmp_path / "partial_download.csv.gz").write_bytes(whole[: len(whole) // 2])  # cut off
    ours = sim._load_traces(str(resolve_traces_dir(None).resolve()))
    theirs = sim._load_traces(str(resolve_traces_dir(tmp_path).resolve()))
    for name in _TRACE_ARRAYS:
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    described = theirs.roles.describe()
    assert {k: described[k] for k in ("conv", "code", "prefix")} == {
        "conv": ["conv_trace.CSV.gz"], "code": ["code_trace.csv.gz"],
        "prefix": ["mooncake.jsonl.gz"]}
    # the cut-off download is named as not used, with why, instead of failing the run
    assert [n for n in described["notes"] if n.startswith("partial_download.csv.gz: ")]
    assert all(n.endswith("(not used)") for n in described["notes"])


def test_a_vllm_style_jsonl_trace_is_read_by_its_keys(tmp_path: Path) -> None:
    """Other column spellings (``start_time`` as zoned date-times, ``num_input_tokens``,
    ``num_output_tokens``) are found by name, in a gzip-compressed JSON-lines file."""
    import datetime as dt
    import gzip

    from streams import simulator as sim

    rows = _bundled("azure_llm_2023_conv.csv").read_text().splitlines()[1:]
    start = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    recs = []
    for i, row in enumerate(rows):
        _, ctx, gen = row.split(",")
        t = (start + dt.timedelta(seconds=0.3 * i + (i % 7) * 0.01)).isoformat().replace("+00:00", "Z")
        recs.append(orjson.dumps({"request_id": i, "start_time": t, "num_input_tokens": int(ctx),
                                  "num_output_tokens": int(gen)}))
    (tmp_path / "serving_log.jsonl.gz").write_bytes(gzip.compress(b"\n".join(recs)))
    tf = sim._read_trace(tmp_path / "serving_log.jsonl.gz")
    ok = [(int(c), int(g)) for c, g in (r.split(",")[1:] for r in rows) if int(c) > 0 and int(g) > 0]
    assert tf.prompt.tolist() == [c for c, _ in ok] and tf.answer.tolist() == [g for _, g in ok]
    assert tf.gaps is not None and abs(tf.gaps.mean() - 1.0) < 1e-9


def test_a_burstgpt_style_trace_drives_every_part(tmp_path: Path) -> None:
    """BurstGPT's layout (seconds since start, "Request tokens", "Response tokens", failed
    requests with 0 response tokens) alone is enough: it stands in for the code service and
    for prompt lengths, without prefix sharing, and the summary says so."""
    from streams import simulator as sim

    rows = _bundled("azure_llm_2023_conv.csv").read_text().splitlines()[1:]
    lines = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    kept = []
    for i, row in enumerate(rows):
        _, ctx, gen = row.split(",")
        if i % 50 == 7:  # a failed request: no answer
            lines.append(f"{i * 0.2:.1f},ChatGPT,{ctx},0,{ctx},Conversation log")
            continue
        lines.append(f"{i * 0.2:.1f},GPT-4,{ctx},{gen},{int(ctx) + int(gen)},API log")
        kept.append((int(ctx), int(gen)))
    (tmp_path / "BurstGPT_1.csv").write_text("\n".join(lines) + "\n\n")
    tr = sim._load_traces(str(resolve_traces_dir(tmp_path).resolve()))
    assert tr.conv_ctx.tolist() == [c for c, _ in kept]
    assert tr.conv_gen.tolist() == [g for _, g in kept]
    assert np.array_equal(tr.code_ctx, tr.conv_ctx) and np.array_equal(tr.moon_in, tr.conv_ctx)
    assert not tr.moon_share.any() and not tr.moon_group.any()
    assert abs(tr.conv_gaps.mean() - 1.0) < 1e-9
    summary = simulate(0.5, 3, str(tmp_path / "e.jsonl"), str(tmp_path / "t.json"), scale=0.05,
                       traces_dir=str(tmp_path), progress=False)
    assert summary["events"] > 0
    notes = " ".join(summary["traces"]["notes"])
    assert "no code-service trace" in notes and "no prefix sharing" in notes
    assert summary["traces"]["borrowed"] == ["code", "prefix"]
    # the line a person reads names the one file once per part: as conv, then in each note
    line = format_summary(summary).splitlines()[-1]
    assert line.count("BurstGPT_1.csv") == 3 and "code BurstGPT_1.csv" not in line, line
    for line in (tmp_path / "e.jsonl").read_bytes().splitlines()[:200]:
        validate_event(orjson.loads(line))  # raises on an invalid event


def test_a_folder_without_a_usable_trace_says_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / "events.jsonl").write_text('{"prompt_tokens": 5}\n')
    (tmp_path / "tiny.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,20\n")
    with pytest.raises(TracesNotFoundError) as err:
        simulate(1, 1, str(tmp_path / "e.jsonl"), str(tmp_path / "t.json"),
                 traces_dir=str(tmp_path))
    msg = str(err.value)
    assert "notes.csv: no prompt-length column" in msg
    assert "events.jsonl: no answer-length key" in msg
    assert "tiny.csv: only 1 usable rows" in msg
    assert "--traces DIR or MOATWATCH_TRACES" in msg


def test_tied_timestamps_are_spread_not_stacked() -> None:
    """A trace stamped to the second must not make its requests arrive at once; a trace
    without ties (the bundled Azure ones) is left exactly as it is."""
    from streams.simulator import _spread_ties

    ts = np.array([0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    out = _spread_ties(ts)
    assert out[0] == 0.0 and out[3] == 1.0 and out[4] == 2.0 and out[7] == 5.0
    assert np.all(np.diff(out) > 0)
    # within one tick of the trace's clock (1.0 here), even before a long gap
    assert 0.0 < out[1] < out[2] < 1.0 and 2.0 < out[5] < out[6] < 3.0
    untied = np.array([0.0, 0.5, 0.7, 3.0])
    assert _spread_ties(untied) is untied


@pytest.mark.filterwarnings("error")
def test_zoned_date_times_give_the_same_gaps_as_plain_ones() -> None:
    """Traces stamp time as ``2024-05-10T00:00:01Z`` or ``2024-05-10 00:00:01.5+00:00`` too:
    the zone is dropped (only gaps matter), without numpy's deprecated zone parsing."""
    import datetime as dt

    from streams.simulator import MIN_TRACE_ROWS, _unit_gaps_of

    start = dt.datetime(2024, 5, 10, 23, 0, 0)
    secs = np.cumsum(np.random.default_rng(3).exponential(2.0, MIN_TRACE_ROWS + 50))
    times = [start + dt.timedelta(seconds=float(x)) for x in secs]
    plain = _unit_gaps_of([t.strftime("%Y-%m-%d %H:%M:%S.%f") for t in times])
    assert plain is not None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d %H:%M:%S.%f+00:00", "%Y-%m-%dT%H:%M:%S.%f-0500"):
        zoned = _unit_gaps_of([t.strftime(fmt) for t in times])
        assert zoned is not None and np.allclose(zoned, plain), fmt
    # to the second, with a zone: still read (ties spread within the second)
    assert _unit_gaps_of([t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in times]) is not None


def test_rejects_nonsense_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hours"):
        simulate(0, 1, str(tmp_path / "e.jsonl"), str(tmp_path / "t.json"))
    with pytest.raises(ValueError, match="scale"):
        simulate(1, 1, str(tmp_path / "e.jsonl"), str(tmp_path / "t.json"), scale=0)


@pytest.mark.parametrize("persona", ["_light_user", "_chat_app", "_coding_agent", "_reasoning_app"])
def test_conversations_resend_the_answer_as_delivered(persona: str) -> None:
    """A persona that resends its history caps each answer at max_tokens where it draws it,
    so the next turn's prompt grows by the answer the API returned, not by the uncapped draw."""
    from streams import simulator as sim

    traces = sim._load_traces(str(resolve_traces_dir(None).resolve()))
    w = sim.World(5, traces, DEFAULT_START_TS, DEFAULT_START_TS + 6 * 3600.0, 1.0)
    capped = grew = 0
    for i in range(40):
        rng = np.random.default_rng(1000 + i)
        rate = {"_light_user": (), "_chat_app": (400.0,), "_coding_agent": (6.0,),
                "_reasoning_app": (120.0,)}[persona]
        c = getattr(sim, persona)(rng, w, w.win.start, w.win.end, 0.0, *rate)
        budget = c.max_tokens * np.maximum(c.n, 1)
        limited = budget > 0
        assert (c.completion[limited] <= budget[limited]).all()
        capped += int((limited & (c.completion == budget)).sum())
        order = np.argsort(c.ts, kind="stable")
        last: dict[str, tuple[int, int]] = {}
        for j in order:
            cid = c.conv[j]
            if cid is None:
                continue
            if cid in last and c.turn[j] > 1:
                p, a = last[cid]
                # history = previous prompt + its delivered answer (unless context compaction)
                if c.prompt[j] >= p + a:
                    grew += 1
            last[cid] = (int(c.prompt[j]), int(c.completion[j]))
    assert capped > 0, "the cap never bit: the check above proved nothing"
    assert grew > 0
