"""docs/exporter.md names every flag of `nvsentinel exporter` and every metric it exports, and only those."""
from __future__ import annotations

import dataclasses
import pathlib
import re

from prometheus_client import CollectorRegistry

from nvsentinel.cluster.exporter.config import ExporterSettings
from nvsentinel.cluster.exporter.dispatcher import ExporterMetrics
from nvsentinel.cli import build_parser

DOC = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "exporter.md").read_text()


def test_every_flag_is_documented_and_every_documented_flag_exists() -> None:
    flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(ExporterSettings)}
    named = set(re.findall(r"`(--[a-z-]+)", DOC))
    assert flags - named == set(), "undocumented flags"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["exporter"]
    known = {s for a in sub._actions for s in a.option_strings}
    assert named - known == set(), "the doc names flags the command lacks"


def test_every_metric_is_documented() -> None:
    reg = CollectorRegistry()
    ExporterMetrics(reg)
    names = {m.name for m in reg.collect()}
    documented = set(re.findall(r"`(nvsentinel_exporter_[a-z_]+)", DOC))
    exported = {n if n in documented else n + "_total" for n in names}
    assert exported == documented
