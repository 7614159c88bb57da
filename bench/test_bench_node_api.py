"""CI smoke test of bench/node_api_cost.py (what the node API's hardening costs, issue 16).

`python bench/node_api_cost.py` is how the numbers in bench/RESULTS.md are taken; here its `--quick`
configuration runs as a subprocess (a real server on a unix socket and loopback TCP, a few hundred
calls, 32 GPUs × 64 KiB listed by 3 clients through the watch fallback) and the test checks that the
harness measures what it says: both transports answered every call correctly, the memory numbers are
consistent, and every client got every GPU. No timing is asserted: it must hold on a loaded machine.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def _positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_node_api_cost_quick(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, str(HERE / "node_api_cost.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONSAFEPATH="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "correct: yes" in proc.stdout
    assert "[node-api-cost]" in proc.stderr  # progress goes to stderr
    r = json.loads(out.read_text())
    assert r["ok"] is True and r["failures"] == []

    lat = r["latency"]
    assert lat["pairs"] == r["config"]["pairs"] > 0
    assert lat["wrong_answers"] == {"get": 0, "missing": 0}
    assert set(lat["cases"]) == {"get", "missing"}
    for case, row in lat["cases"].items():
        for transport in ("unix", "tcp"):
            x = row[transport]
            assert x["calls"] == lat["pairs"], (case, transport, x)
            assert _positive(x["median_us"]) and x["p99_us"] >= x["median_us"], (case, transport, x)
            assert x["server_cpu_us_per_call"] >= 0, (case, transport, x)  # /proc/<pid>/stat ticks may read 0
        assert _positive(row["ratio_median"]) and _positive(row["ratio_p99"]), row
        assert math.isclose(row["ratio_median"], row["unix"]["median_us"] / row["tcp"]["median_us"])

    mem = r["memory"]
    cfg = r["config"]
    assert mem["gpus"] == cfg["gpus"] and mem["clients"] == cfg["clients"]
    assert _positive(mem["baseline_mib"]) and mem["peak_mib"] >= mem["baseline_mib"], mem
    assert mem["growth_ratio"] >= 1.0 and math.isclose(mem["growth_ratio"], mem["peak_mib"] / mem["baseline_mib"])
    assert mem["chart_limit"] and _positive(mem["chart_limit_mib"])
    assert math.isclose(mem["peak_vs_chart_limit"], mem["peak_mib"] / mem["chart_limit_mib"])
    # nothing lost: every list of every client held every GPU, whole, at the store's RV
    assert mem["every_client_saw_every_gpu"] is True
    assert mem["lists"] == mem["lists_complete"] == cfg["clients"] * cfg["lists"]
    assert mem["items_per_list"] == [cfg["gpus"]]
    assert mem["store_rv"] >= cfg["gpus"] and mem["client_errors"] == []
    # the quick store is over its --max-list-bytes: every list took the watch fallback
    assert mem["refused"]["list_too_large"] + mem["refused"]["list_busy"] == mem["lists"]
    assert mem["listgpus_ok"] == 0
