"""docs/controllers.md matches `nvsentinel controllers`: every flag it names exists, with the default it says."""
from __future__ import annotations

import argparse
import pathlib
import re

from nvsentinel.cluster.settings import ControllersSettings
from nvsentinel.daemons import controllers as daemon
from nvsentinel.service.settings import resolve

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "controllers.md"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    daemon.add_parser_arguments(p)
    return p


def test_every_flag_in_the_doc_exists():
    flags = set(re.findall(r"`(--[a-z-]+)", DOC.read_text()))
    known = {opt for a in _parser()._actions for opt in a.option_strings}
    known |= {f"--no-{o[2:]}" for o in known}
    prefixes = {f.rstrip("-*") for f in flags if f.endswith("-")}
    missing = sorted(f for f in flags if f not in known and f.rstrip("-*") not in prefixes)
    assert not missing, f"docs/controllers.md names flags the command lacks: {missing}"
    for prefix in prefixes:  # `--breaker-*` style rows
        assert any(k.startswith(prefix) for k in known), prefix


def test_documented_defaults_are_the_real_ones():
    s = resolve(ControllersSettings, None, {}, prefix="CONTROLLERS_")
    text = DOC.read_text()
    rows = {
        "`--workers`": f"| {s.workers} |",
        "`--kube-qps`, `--kube-burst`": f"| {s.kube_qps:g}, {s.kube_burst} |",
        "`--resync-period`": f"| {s.resync_period:g} s |",
        "`--health-port`": f"| {s.health_port} |",
        "`--metrics-port`": f"| {s.metrics_port} |",
        "`--shutdown-timeout`": f"| {s.shutdown_timeout:g} s |",
        "`--lease-duration`, `--renew-deadline`, `--retry-period`":
            f"| {s.lease_duration:g} s, {s.renew_deadline:g} s, {s.retry_period:g} s |",
    }
    for flag, cell in rows.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {flag} "))
        assert cell in line, (flag, line)
    assert s.leader_elect is True and s.dry_run is False and s.controllers == (
        "quarantine", "conditions", "drain", "remediation", "resolution", "ttl")
