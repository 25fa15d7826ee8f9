"""Nothing read from a topic, a changelog or a file is deserialized with a code-executing format.

Issue 7 §5. Two checks:

* static: the source of streams/, models/ and schemas/ never calls pickle, marshal, shelve,
  dill/cloudpickle/jsonpickle, ``yaml.load``/``yaml.unsafe_load``, ``eval``/``exec`` or
  ``compile`` (AST walk, so comments and strings do not count);
* at run time: in a fresh interpreter whose pickle/marshal/shelve loaders raise, a replay with
  prompts, a key-state export/import round trip and the worker's Faust app all work, and every
  topic and table of the worker uses the raw codec (Faust's default codecs include pickle).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("streams", "models", "schemas")

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                  "jsonpickle", "joblib"}
BANNED_CALLS = {"eval", "exec", "compile"}
BANNED_ATTRS = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
                ("yaml", "load_all"), ("yaml", "unsafe_load_all"), ("numpy", "load"),
                ("np", "load"), ("torch", "load")}


def _sources():
    for pkg in PACKAGES:
        for root, _dirs, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(root, f)


def test_sources_are_found():
    assert sum(1 for _ in _sources()) >= 20


@pytest.mark.parametrize("path", sorted(_sources()), ids=lambda p: os.path.relpath(p, REPO))
def test_no_code_executing_deserializer_in_source(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                found.append(node.module)
            if node.module.split(".")[0] == "yaml":
                found += [f"yaml.{a.name}" for a in node.names
                          if ("yaml", a.name) in BANNED_ATTRS]
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in BANNED_CALLS:
                found.append(f"{fn.id}()")
            elif isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
                if (fn.value.id, fn.attr) in BANNED_ATTRS:
                    found.append(f"{fn.value.id}.{fn.attr}()")
                if fn.value.id in BANNED_MODULES:
                    found.append(f"{fn.value.id}.{fn.attr}()")
    rel = os.path.relpath(path, REPO)
    assert not found, f"{rel} uses {found}: read data with orjson / the binary codec instead"


RUNTIME_CHECK = r'''
import marshal, pickle, shelve, sys, tempfile, pathlib, orjson
# import everything first: the import system itself unmarshals .pyc files
import streams.app, streams.replay, streams.simulator, streams.pipeline, streams.kafka_io
import streams.feedback_feed, models.engine, models.campaign, schemas.validation
from streams.app import Worker
from streams.settings import load_settings
w = Worker(load_settings({}), 2)
for table in (w.key_state, w.partition_state):
    assert (table.key_serializer, table.value_serializer) == ("raw", "raw"), table.name
    ch = table.changelog_topic
    assert (ch.key_serializer, ch.value_serializer) == ("raw", "raw"), ch
for topic in (w.events_topic, w.rekeyed_topic, w.snapshot_topic, w.alerts_topic, w.dlq_topic):
    assert (topic.key_serializer, topic.value_serializer) == ("raw", "raw"), topic
for agent in w.app.agents.values():
    ch = agent.channel
    assert (ch.key_serializer, ch.value_serializer) == ("raw", "raw"), agent.name

def refuse(*a, **k):
    raise AssertionError("a code-executing deserializer was called")

pickle.loads = pickle.load = refuse
pickle.Unpickler = refuse
import _pickle
_pickle.loads = _pickle.load = refuse
marshal.loads = marshal.load = refuse
shelve.open = refuse

from streams.pipeline import Detector
from streams.replay import replay
from streams.simulator import simulate

d = pathlib.Path(tempfile.mkdtemp())
simulate(1.0, 4, str(d / "e.jsonl"), str(d / "t.json"), scale=0.2, progress=False)
lines = []
for line in (d / "e.jsonl").read_bytes().splitlines():
    ev = orjson.loads(line)
    ev["prompt_text"] = "cos(x) step by step please"
    lines.append(orjson.dumps(ev))
(d / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
s = replay(str(d / "p.jsonl"), str(d / "a.jsonl"), partitions=2, progress=False)
assert s.events > 100, s

det = Detector(1)
for line in lines[:300]:
    from streams.pipeline import decode
    det.process(decode(line))
core = det.core(0)
for k in list(core.keys):
    core.import_key(k, core.export_key(k))
core.import_shared(core.export_shared())

print("ok")
'''


def test_runtime_paths_never_call_pickle_or_marshal(tmp_path):
    out = subprocess.run([sys.executable, "-c", RUNTIME_CHECK], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
