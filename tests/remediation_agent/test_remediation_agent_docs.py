"""docs/remediation-agent.md stays true: it names every setting, metric and log line the code has."""
from __future__ import annotations

import dataclasses
import pathlib
import re

from nvsentinel.node.remediation_agent import agent as agent_module
from nvsentinel.node.remediation_agent.agent import RemediationAgentMetrics
from nvsentinel.node.remediation_agent.config import ENV_PREFIX, RemediationAgentSettings

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "remediation-agent.md"


def test_docs_name_every_setting_metric_and_log_message():
    """Verify every flag (with its env variable), every metric and every info log message is documented."""
    text = DOC.read_text()
    for field in dataclasses.fields(RemediationAgentSettings):
        assert f"`--{field.name.replace('_', '-')}`" in text, field.name
        env = ENV_PREFIX + field.name.upper()
        assert env in text or f"…_{field.name.upper()}" in text, env
    for flag in ("--kubeconfig", "--context", "--request-timeout"):
        assert f"`{flag}`" in text
    for metric in RemediationAgentMetrics().registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert f"`{name}" in text, name
    source = pathlib.Path(agent_module.__file__).read_text()
    for msg in re.findall(r'logger\.info\("([^"]+)"', source):
        assert f"`{msg}`" in text, msg


def test_docs_rbac_is_what_the_least_privilege_test_grants():
    """Verify the documented rules are exactly the ones the cluster tests' ServiceAccounts get: create only with the
    node view (the chart's identity, tests/k8s/test_chart_identities.py), get/list/watch/create without it."""
    text = DOC.read_text()
    assert 'verbs: ["create"]' in text and "`get, list, watch, create`" in text
    k8s_test = DOC.parents[1] / "tests" / "k8s" / "test_remediation_agent.py"
    assert '"verbs": ["get", "list", "watch", "create"]' in k8s_test.read_text()
    rbac = (DOC.parents[1] / "charts" / "nvsentinel" / "templates" / "remediation-agent-rbac.yaml").read_text()
    assert "verbs: [create]" in rbac and "verbs: [get, list, watch, create]" in rbac
    for link in re.findall(r"\]\(([a-z-]+\.md)", text):
        assert (DOC.parent / link).exists(), link
