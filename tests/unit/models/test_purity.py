"""models/ is pure: importing it loads no Faust, Kafka or Prometheus module (and does no I/O)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_importing_models_loads_no_faust_kafka_or_prometheus():
    code = (
        "import sys; import models, models.engine, models.features, models.keymodel, "
        "models.population, models.policy, models.prompt, models.codec; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('faust', 'mode', 'confluent_kafka', 'aiokafka', 'kafka', 'prometheus_client', 'streams')); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"models imported: {out.stdout.strip()}"


def test_model_sources_import_only_river_numpy_and_stdlib():
    allowed_third_party = {"river", "numpy"}
    stdlib = set(sys.stdlib_module_names)
    mine = ["engine", "features", "keymodel", "population", "policy", "prompt", "codec", "__init__"]
    for name in mine:
        src = open(os.path.join(REPO, "models", f"{name}.py"), encoding="utf-8").read()
        for line in src.splitlines():
            s = line.strip()
            if s.startswith("import ") or s.startswith("from "):
                mod = s.split()[1].split(".")[0]
                if mod in ("__future__", "models"):
                    continue
                assert mod in stdlib or mod in allowed_third_party, f"models/{name}.py imports {mod}"
        assert "pickle" not in src.replace("no pickle", "").replace("never pickle", "").replace(
            "NO pickle", ""
        ), f"models/{name}.py mentions pickle"
