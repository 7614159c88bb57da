"""docs/conditions.md stays true for the NVML provider: every flag, its environment variable and
every metric are documented, and the recovery-action table is the code's."""
from __future__ import annotations

import dataclasses
import pathlib
import re

from nvsentinel.node.nvml.config import ENV_PREFIX, NvmlProviderSettings
from nvsentinel.node.nvml.metrics import NvmlMetrics
from nvsentinel.policy.conditions import RECOVERY_ACTIONS, Reason, recovery_action_kind
from nvsentinel.service.settings import env_name

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "conditions.md"


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else None]


def test_docs_name_every_setting_with_its_environment_variable():
    daemon = _section(DOC.read_text(), "## The nvml-provider daemon")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(--[a-z-]+)` \| `([A-Z_]+)`", daemon, re.M)}
    for field in dataclasses.fields(NvmlProviderSettings):
        flag = "--" + field.name.replace("_", "-")
        assert rows.get(flag) == env_name(ENV_PREFIX, field), (flag, rows.get(flag))
    assert len(rows) == len(dataclasses.fields(NvmlProviderSettings))  # no flag the daemon lacks


def test_docs_name_every_metric():
    daemon = _section(DOC.read_text(), "## The nvml-provider daemon")
    for metric in NvmlMetrics().registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert f"`{name}{{" in daemon, name


def test_the_recovery_action_table_is_the_code_s():
    text = _section(DOC.read_text(), "### Recovery action")
    rows = re.findall(r"^\| (\d+) \| `([A-Z0-9_]+)` \| (?:`(\w+)`|— \(healthy\)) \| `([A-Z_]+)` \|", text, re.M)
    assert [int(r[0]) for r in rows] == sorted(RECOVERY_ACTIONS)
    for value, name, reason, action in rows:
        kind = RECOVERY_ACTIONS[int(value)]
        assert (kind.name, str(kind.action)) == (name, action)
        if int(value):
            assert Reason.for_recovery_action(int(value)).wire == reason
    assert "`RecoveryAction<n>` (e.g. `RecoveryAction42`) | `UNKNOWN`" in text
    assert Reason.for_recovery_action(42).wire == "RecoveryAction42"
    assert str(recovery_action_kind(42).action) == "UNKNOWN"
