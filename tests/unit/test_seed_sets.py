"""bench/perturb_traces.py and bench/make_seed_sets.py: the evaluation seeds can be rebuilt."""

from __future__ import annotations

import csv
import os
import re

import orjson
import pytest

from streams.simulator import simulate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("MOATWATCH_TRACES") or os.path.join(os.path.dirname(REPO), "shared", "data")


def _azure(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _mooncake(path) -> list[dict]:
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def test_swapped_traces_swap_azure_and_rescale_mooncake(tmp_path, bench_script):
    pt = bench_script("perturb_traces")
    counts = pt.perturb(pt.Path(DATA), tmp_path, "swapped")
    src_code = _azure(os.path.join(DATA, "azure_llm_2023_code.csv"))
    src_conv = _azure(os.path.join(DATA, "azure_llm_2023_conv.csv"))
    assert _azure(tmp_path / "azure_llm_2023_code.csv") == src_conv
    assert _azure(tmp_path / "azure_llm_2023_conv.csv") == src_code
    src_m = _mooncake(os.path.join(DATA, "mooncake_conversation_trace.jsonl"))
    out_m = _mooncake(tmp_path / "mooncake_conversation_trace.jsonl")
    assert counts["mooncake_conversation_trace.jsonl"] == len(src_m) == len(out_m)
    for a, b in zip(src_m[:200], out_m[:200], strict=True):
        assert b["input_length"] == max(1, round(a["input_length"] * 1.6))
        assert b["output_length"] == max(1, round(a["output_length"] * 0.7))
        assert b["timestamp"] == a["timestamp"] and b["hash_ids"] == a["hash_ids"]


def test_long_answer_traces_shorten_prompts_and_lengthen_answers(tmp_path, bench_script):
    pt = bench_script("perturb_traces")
    pt.perturb(pt.Path(DATA), tmp_path, "long-answers")
    src = _azure(os.path.join(DATA, "azure_llm_2023_conv.csv"))
    out = _azure(tmp_path / "azure_llm_2023_conv.csv")
    assert out[0] == src[0] and len(out) == len(src)
    for a, b in zip(src[1:200], out[1:200], strict=True):
        assert b[0] == a[0]
        assert int(b[1]) == max(1, round(int(a[1]) * 0.7))
        assert int(b[2]) == max(1, round(int(a[2]) * 1.4))


def test_layouts_keep_the_numbers_and_the_simulator_finds_their_parts(tmp_path, bench_script):
    """mooncake-only and burstgpt-layout change file names and columns, not the data: the
    simulator's trace discovery reads the same lengths and arrival gaps back."""
    from streams import simulator as sim

    pt = bench_script("perturb_traces")
    pt.perturb(pt.Path(DATA), tmp_path / "m", "mooncake-only")
    assert _mooncake(tmp_path / "m" / "conversation_trace.jsonl") == _mooncake(
        os.path.join(DATA, "mooncake_conversation_trace.jsonl"))
    pt.perturb(pt.Path(DATA), tmp_path / "b", "burstgpt-layout")
    rows = _azure(tmp_path / "b" / "BurstGPT_conv.csv")
    src = _azure(os.path.join(DATA, "azure_llm_2023_conv.csv"))
    assert rows[0] == ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens",
                       "Log Type"]
    assert [(r[2], r[3]) for r in rows[1:]] == [(r[1], r[2]) for r in src[1:]]
    assert float(rows[1][0]) == 0.0
    bundled = sim._load_traces(str(sim.resolve_traces_dir(DATA).resolve()))
    burst = sim._load_traces(str((tmp_path / "b").resolve()))
    assert burst.conv_ctx.tolist() == bundled.conv_ctx.tolist()
    # timestamps rounded to the millisecond (ties spread within it): the same bursts
    assert len(burst.conv_gaps) == len(bundled.conv_gaps)
    assert abs(burst.conv_gaps - bundled.conv_gaps).max() < 0.02
    moon = sim._load_traces(str((tmp_path / "m").resolve()))
    assert moon.roles.conv == moon.roles.code == moon.roles.prefix
    assert moon.moon_share.tolist() == bundled.moon_share.tolist()


def test_missing_traces_say_where_to_point(tmp_path, capsys, bench_script):
    pt = bench_script("perturb_traces")
    assert pt.main(["--mode", "swapped", "--out", str(tmp_path / "o"), "--src", str(tmp_path)]) == 2
    assert "--src" in capsys.readouterr().err


def test_the_manifest_is_well_formed(bench_script):
    ms = bench_script("make_seed_sets")
    seeds = orjson.loads(ms.MANIFEST.read_bytes())["seeds"]
    assert len(seeds) >= 100
    assert len({(e["group"], e["seed"]) for e in seeds}) == len(seeds)
    for e in seeds:
        assert isinstance(e["seed"], int) and e["scale"] > 0
        assert e["start_ts"] is None or e["start_ts"] > 1.7e9
        assert (e["traces"] == "bundled" or e["traces"] in ms.MODES or e["traces"] in ms.LAYOUTS
                or "ambiguous" in e)


def test_every_seed_names_a_section_that_exists(bench_script):
    """A seed's ``source`` says where its parameters were stated: a doc and a section heading
    in it (line numbers move; headings are kept when a page is split, as detection.md was)."""
    ms = bench_script("make_seed_sets")
    seeds = orjson.loads(ms.MANIFEST.read_bytes())["seeds"]
    headings: dict[str, set[str]] = {}
    for e in seeds:
        m = re.fullmatch(r"(docs/[\w.-]+\.md), section '(.+)'( \(.*\))?", e["source"])
        assert m, f"seed {e['seed']} ({e['group']}): source {e['source']!r} names no doc section"
        doc, section = m.group(1), m.group(2)
        if doc not in headings:
            with open(os.path.join(REPO, doc), encoding="utf-8") as fh:
                headings[doc] = {ln.lstrip("#").strip() for ln in fh if ln.startswith("##")}
        assert section in headings[doc], f"seed {e['seed']}: {doc} has no section {section!r}"


def test_rebuilds_a_manifest_seed_exactly_and_skips_ambiguous_ones(tmp_path, capsys, bench_script):
    ms = bench_script("make_seed_sets")
    manifest = tmp_path / "m.json"
    manifest.write_bytes(orjson.dumps({"seeds": [
        {"seed": 3, "scale": 0.1, "start_ts": 1790000000, "traces": "swapped", "group": "g"},
        {"seed": 4, "scale": 0.1, "start_ts": None, "traces": "bundled", "group": "g",
         "ambiguous": "start not recorded"},
    ]}))
    root = tmp_path / "sets"
    assert ms.main(["--root", str(root), "--manifest", str(manifest), "--jobs", "1", "--src", DATA]) == 0
    out = capsys.readouterr()
    assert f"--sim-dir {root / 'g'} --seeds 3" in out.out
    assert "skipped g/4 (ambiguous: start not recorded)" in out.err
    assert not (root / "g" / "seed4.jsonl").exists()
    # the same simulate call a person would make from the docs gives the same bytes
    direct = tmp_path / "direct.jsonl"
    simulate(12.0, 3, str(direct), str(tmp_path / "direct.truth.json"), scale=0.1,
             traces_dir=str(root / "traces" / "swapped"), start_ts=1790000000, progress=False)
    assert (root / "g" / "seed3.jsonl").read_bytes() == direct.read_bytes()


def test_an_unknown_group_lists_the_groups(tmp_path, capsys, bench_script):
    ms = bench_script("make_seed_sets")
    with pytest.raises(SystemExit) as exc:
        ms.main(["--root", str(tmp_path), "--groups", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no group nope" in err and "mwsim" in err
