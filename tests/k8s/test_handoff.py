"""Hand-off on the real kube-apiserver (v1.20.2): the remediation modes external and approve, through the real
chain (quarantine, drain, remediation, resolution in one Manager) and the real `nvsentinel approve|reject|status`
commands, run as subprocesses with the test's kubeconfig.

An external repairer is simulated by the test: it deletes the Node, or deletes and recreates it under the same name
(a new UID). Each test labels its Nodes and HealthEvents with a unique value and gives the stages matching selectors.
No job controller runs: `finish_job` plays it; a background loop plays the kubelet for pod deletions.
"""
from __future__ import annotations

import contextlib
import getpass
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from ctlhelpers import DeletionFinisher, clean_up, condition, env_fixture, eventually, ownership, phase, running_manager
from kubelet import finish_job, make_node, run_pod

from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.cluster.drain.controller import DrainController
from nvsentinel.cluster.ownership import OWNER_LABEL, RECOMMENDATION_ANNOTATION, TAINT_KEY
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.cluster.remediation import RemediationConfig, RemediationController
from nvsentinel.cluster.remediation.logic import job_name
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.cluster.resolution.controller import ResolutionController
from nvsentinel.k8s import AlreadyExists, Kube, KubeNotFound
from nvsentinel.k8s.resources import EVENTS, HEALTHEVENTS, JOBS, NAMESPACES, NODES, PODS
from nvsentinel.policy.handoff import APPROVAL_ANNOTATION, APPROVAL_BY_ANNOTATION, APPROVAL_REASON_ANNOTATION
from nvsentinel.policy.healthevent import LABEL_NODE, Entity, HealthEvent, HealthEventSpec, utcnow
from nvsentinel.policy.naming import label_value
from nvsentinel.xid import Action

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/handoff"
GPU = "GPU-00000003-0000-4000-8000-000000000003"
RULES = json.dumps([{"nodeSelector": "pool=ext", "mode": "external"},
                    {"nodeSelector": "pool in (appr)", "mode": "approve"}])
_MAIN = "import sys\nfrom nvsentinel import cli\nsys.exit(cli.main(sys.argv[1:]))"


class Env:
    """One test's world: its label, namespace (pods, reboot Jobs), Nodes and HealthEvents; a kubelet stand-in."""

    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.kubeconfig = control_plane.kubeconfig
        self.ns = f"ho-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.nodes: list[str] = []
        self.events: list[str] = []
        with contextlib.suppress(AlreadyExists):
            self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        self.kubelet = DeletionFinisher(self.kube, self.ns)

    @property
    def selector(self) -> str:
        return f"{LABEL}={self.unique}"

    def node(self, short: str, pool: str | None = None, **kw: Any) -> str:
        name = f"ho-{short}-{self.unique}"
        if name not in self.nodes:
            self.nodes.append(name)
        make_node(self.kube, name, labels={LABEL: self.unique, **({"pool": pool} if pool else {})}, **kw)
        return name

    def pod(self, name: str, node: str) -> dict:
        self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": self.ns},
                                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}, self.ns)
        return run_pod(self.kube, self.ns, name)

    def pod_state(self, name: str) -> str:
        """running | deleting | gone"""
        try:
            pod = self.kube.get(PODS, name, self.ns)
        except KubeNotFound:
            return "gone"
        return "deleting" if pod["metadata"].get("deletionTimestamp") else "running"

    def event(self, name: str, node: str, action: Action = Action.RESTART_BM) -> str:
        spec = HealthEventSpec(source="test", agent="test", node_name=node, component_class="GPU",
                               check_name="xid-error-check", is_fatal=True, is_healthy=False, detected_at=utcnow(),
                               error_codes=("79",), recommended_action=action, entities_impacted=(Entity("GPU", GPU),),
                               message="Xid 79")
        self.events.append(name)
        self.kube.create(HEALTHEVENTS, HealthEvent(name=name, spec=spec, labels={
            LABEL: self.unique, LABEL_NODE: label_value(node)}).create_body())
        return name

    def get(self, name: str) -> dict:
        return self.kube.get(HEALTHEVENTS, name)

    def get_node(self, name: str) -> dict:
        return self.kube.get(NODES, name)

    def jobs(self) -> dict[str, dict]:
        items, _ = self.kube.list(JOBS, self.ns)
        return {j["metadata"]["name"]: j for j in items}

    def reasons(self, involved: str, kind: str) -> set[str]:
        """Reasons of the Kubernetes Events about `involved` (cluster-scoped objects' land in "default")."""
        items, _ = self.kube.list(EVENTS, "default",
                                  field_selector=f"involvedObject.name={involved},involvedObject.kind={kind}")
        return {e["reason"] for e in items}

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real `nvsentinel` entry point in its own process, as an operator runs it."""
        argv = [sys.executable, "-c", _MAIN, *args, "--kubeconfig", self.kubeconfig]
        return await anyio.to_thread.run_sync(
            lambda: subprocess.run(argv, capture_output=True, text=True, timeout=120))

    async def status(self) -> dict:
        out = await self.cli("status", "-o", "json", "--namespace", self.ns, "--node-selector", self.selector,
                             "--event-selector", self.selector)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def close(self) -> None:
        self.kubelet.stop()
        clean_up(self.kube, events=self.events, nodes=self.nodes, namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def chain(env: Env, *, node_gone_grace: float = 300.0) -> AsyncIterator[None]:
    """The chain as `nvsentinel controllers --remediation-mode-rules RULES` wires it, on this test's objects."""
    sel = env.selector
    recs: list[Any] = [
        QuarantineController(QuarantineConfig(node_selector=sel, event_selector=sel, breaker_percent=100,
                                               breaker_max_nodes=10000, remediation_mode_rules=RULES)),
        DrainController(DrainConfig(node_selector=sel, event_selector=sel, drain_poll=0.5)),
        RemediationController(RemediationConfig(namespace=env.ns, node_selector=sel, event_selector=sel,
                                                remediation_backoff=0.2, remediation_poll=0.5)),
        ResolutionController(ResolutionConfig(node_selector=sel, event_selector=sel,
                                              node_gone_grace=node_gone_grace)),
    ]
    async with running_manager(env.kube, recs, env.ns):
        yield


async def until(env: Env, name: str, pred: Any, what: str, timeout: float = 60.0) -> dict:
    return await eventually(lambda: (lambda o: pred(o) and o)(env.get(name)), what=what, timeout=timeout)


def reason(obj: dict, ctype: str) -> tuple[str, str] | None:
    c = condition(obj, ctype)
    return (c["status"], c["reason"]) if c else None


def marks(node: dict) -> dict:
    """What nvsentinel puts on a Node it quarantines."""
    meta = node["metadata"]
    return {"cordoned": bool(node["spec"].get("unschedulable")),
            "taint": any(t["key"] == TAINT_KEY for t in node["spec"].get("taints") or ()),
            "owner": (meta.get("labels") or {}).get(OWNER_LABEL), "record": ownership(node),
            "recommendation": (meta.get("annotations") or {}).get(RECOMMENDATION_ANNOTATION)}


async def handed_off(env: Env, name: str) -> dict:
    return await until(env, name, lambda o: phase(o) == "Quarantined" and reason(o, "Remediated") == (
        "False", "HandedOff"), "Quarantined and HandedOff")


# ---- (a) mode external: quarantine, recommend, and stop; resolve when the repairer replaces the node -------------

async def test_external_mode_hands_off_and_a_replaced_node_resolves_the_event(env: Env) -> None:
    """A node labelled pool=ext matches the rule {nodeSelector: pool=ext, mode: external}: its XID 79 event is
    quarantined (cordon, taint, owner label external, recommendation annotation, Remediated False HandedOff) and
    nothing more: its pod is not evicted (while a fault on a node of mode nvsentinel is drained meanwhile), no Job.
    The repairer then deletes and recreates the Node (a new UID, cordoned by the repairer): the event is Resolved
    NodeReplaced, and nothing is released on the new Node."""
    ext, control = env.node("ext", "ext"), env.node("ctl")
    env.pod("work-ext", ext)
    env.pod("work-ctl", control)
    uid = env.get_node(ext)["metadata"]["uid"]
    name = env.event(f"ho-ext-{env.unique}.xid79", ext)
    async with chain(env):
        ev = await handed_off(env, name)
        assert ev["status"]["remediationMode"] == "external" and ev["status"]["nodeUID"] == uid
        assert "recommended RESTART_BM" in condition(ev, "Remediated")["message"]
        m = marks(env.get_node(ext))
        assert (m["cordoned"], m["taint"], m["owner"]) == (True, True, "external")
        assert m["record"]["mode"] == "external" and m["record"]["events"] == [name]
        rec = json.loads(m["recommendation"])
        assert rec["mode"] == "external"
        assert rec["events"] == [{"healthEvent": name, "action": "RESTART_BM", "errorCodes": ["79"], "gpus": [GPU]}]
        # a fault on a node nvsentinel remediates, created after: drained to the end (manual: no Job)
        other = env.event(f"ho-ctl-{env.unique}.xid48", control, Action.CONTACT_SUPPORT)
        await until(env, other, lambda o: phase(o) == "Drained", "the nvsentinel-mode event drained")
        assert env.pod_state("work-ctl") == "gone"
        assert env.pod_state("work-ext") == "running", "the handed-off node's pod was evicted"
        assert phase(env.get(name)) == "Quarantined" and env.jobs() == {}
        doc = await env.status()
        owners = {o["node"]: (o["owner"], o["scope"]) for o in doc["nodes"]["owners"]}
        assert owners == {ext: ("external", "node"), control: ("nvsentinel", "node")}
        assert [(h["name"], h["node"], h["action"]) for h in doc["healthEvents"]["handedOff"]] == [
            (name, ext, "RESTART_BM")]
    # the repairer replaces the machine while the controllers are between passes: same name, a new Node object
    env.kube.delete(NODES, ext)
    await eventually(lambda: not env.kube.list(NODES, field_selector=f"metadata.name={ext}")[0], what="node gone")
    env.node("ext", "ext", unschedulable=True)  # the repairer's own cordon on the new Node
    new_uid = env.get_node(ext)["metadata"]["uid"]
    assert new_uid != uid
    async with chain(env):
        done = await until(env, name, lambda o: phase(o) == "Resolved", "Resolved NodeReplaced")
        assert reason(done, "Resolved") == ("True", "NodeReplaced")
        assert f"{uid} → {new_uid}" in condition(done, "Resolved")["message"] and done["status"]["resolvedAt"]
        # the other event still holds its own node: the chain is live, and the new Node was left as it came
        assert marks(env.get_node(control))["record"] is not None
    m = marks(env.get_node(ext))
    assert m == {"cordoned": True, "taint": False, "owner": None, "record": None, "recommendation": None}
    assert env.pod_state("work-ext") == "running" and env.jobs() == {}


async def test_external_mode_deleted_node_resolves_at_once(env: Env) -> None:
    """The repairer deletes the Node of a handed-off event: Resolved True NodeDeleted at once (the node-gone grace,
    300 s here, is for events whose Node may not have registered yet: this one was quarantined on it)."""
    ext = env.node("del", "ext")
    name = env.event(f"ho-del-{env.unique}.xid79", ext)
    async with chain(env, node_gone_grace=300):
        await handed_off(env, name)
        env.kube.delete(NODES, ext)
        done = await until(env, name, lambda o: phase(o) == "Resolved", "Resolved NodeDeleted")
        assert reason(done, "Resolved") == ("True", "NodeDeleted") and done["status"]["resolvedAt"]
    assert env.jobs() == {}


# ---- (b) mode approve: drained, then wait for `nvsentinel approve` -------------------------------------------

async def test_approve_mode_waits_at_drained_until_nvsentinel_approve(env: Env) -> None:
    """A reboot-recommending XID on a node of mode approve is quarantined and drained, then waits with Remediated
    False AwaitingApproval (a Warning on the Node, no Job; `nvsentinel status` lists it with the command to run).
    `nvsentinel approve NAME` writes the approval; a reboot Job starts, its status names who approved and why; the
    Job succeeds → Remediated. A rejection of the Remediating event is refused by the CLI."""
    node = env.node("appr", "appr")
    env.pod("work", node)
    name = env.event(f"ho-appr-{env.unique}.xid79", node)
    async with chain(env):
        ev = await until(env, name, lambda o: phase(o) == "Drained" and reason(o, "Remediated") == (
            "False", "AwaitingApproval"), "Drained, AwaitingApproval")
        assert ev["status"]["remediationMode"] == "approve"
        assert f"nvsentinel approve {name}" in condition(ev, "Remediated")["message"]
        assert env.pod_state("work") == "gone" and env.jobs() == {}
        m = marks(env.get_node(node))
        assert (m["cordoned"], m["owner"], m["record"]["mode"]) == (True, "approve", "approve")
        await eventually(lambda: "AwaitingApproval" in env.reasons(node, "Node"), what="a Warning on the Node")

        doc = await env.status()
        assert [(o["node"], o["owner"], o["scope"]) for o in doc["nodes"]["owners"]] == [(node, "approve", "node")]
        assert [(a["name"], a["node"], a["wouldRun"], a["approve"]) for a in doc["healthEvents"]["awaitingApproval"]
                ] == [(name, node, "reboot", f"nvsentinel approve {name}")]
        assert doc["healthEvents"]["needsHuman"] == []
        text = await env.cli("status", "--namespace", env.ns, "--node-selector", env.selector,
                             "--event-selector", env.selector)
        assert "Awaiting approval:         1" in text.stdout and f"nvsentinel approve {name}" in text.stdout
        assert env.jobs() == {}, "nothing runs without the approval"

        out = await env.cli("approve", name, "--reason", "maintenance window")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"approved healthevent {name}: the remediation controller starts its reboot " \
                                     f"of node {node} now" and out.stderr == ""
        job = job_name(name, 1)
        await eventually(lambda: job in env.jobs(), what="the reboot Job")
        running = await until(env, name, lambda o: phase(o) == "Remediating", "Remediating")
        ann = running["metadata"]["annotations"]
        assert ann[APPROVAL_ANNOTATION] == "approved" and ann[APPROVAL_REASON_ANNOTATION] == "maintenance window"
        who = ann[APPROVAL_BY_ANNOTATION]
        assert who == getpass.getuser()  # 1.20 has no SelfSubjectReview: the login name
        assert condition(running, "Remediated")["message"].endswith(f"(approved by {who}: maintenance window)")
        assert "Approved" in env.reasons(name, "HealthEvent")

        refused = await env.cli("reject", name)
        assert (refused.returncode, refused.stdout) == (1, ""), refused.stderr
        assert refused.stderr.strip().splitlines() == [
            f"error: healthevent {name} is Remediating: its reboot is under way and is not abandoned halfway; wait "
            "until it is Remediated (a healthy event then resolves it)"]

        finish_job(env.kube, env.ns, job, succeeded=True)
        done = await until(env, name, lambda o: phase(o) == "Remediated", "Remediated")
        assert reason(done, "Remediated") == ("True", "RebootSucceeded") and list(env.jobs()) == [job]


# ---- (c) reject from the CLI: cancelled, node released ---------------------------------------------------

async def test_reject_from_the_cli_cancels_and_releases_the_node(env: Env) -> None:
    """`nvsentinel reject NAME --reason ...` on an event awaiting approval: Cancelled with Resolved False Rejected
    (by whom, why), resolvedAt set; the node is uncordoned and untainted, its owner label and records gone; no Job
    ever. Approving it afterwards is refused (it is closed)."""
    node = env.node("rej", "appr")
    name = env.event(f"ho-rej-{env.unique}.xid79", node)
    async with chain(env):
        await until(env, name, lambda o: reason(o, "Remediated") == ("False", "AwaitingApproval"), "AwaitingApproval")
        out = await env.cli("reject", name, "--reason", "known flaky job")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"rejected healthevent {name}: the resolution controller cancels it (Resolved " \
                                     f"False Rejected) and releases node {node} once no other fault holds it"
        done = await until(env, name, lambda o: phase(o) == "Cancelled", "Cancelled")
        assert reason(done, "Resolved") == ("False", "Rejected") and done["status"]["resolvedAt"]
        assert condition(done, "Resolved")["message"].startswith(f"rejected by {getpass.getuser()}: known flaky job")
        released = await eventually(lambda: (n := env.get_node(node)) and marks(n)["record"] is None and n,
                                    what="node released")
        assert marks(released) == {"cordoned": False, "taint": False, "owner": None, "record": None,
                                   "recommendation": None}
        assert "Uncordoned" in await eventually(lambda: env.reasons(node, "Node") & {"Uncordoned"}, what="Event")
        assert env.jobs() == {}
        again = await env.cli("approve", name)
        assert (again.returncode, again.stderr.strip()) == (
            1, f"error: healthevent {name} is Cancelled: it is closed, nothing to approve")


# ---- the CLI's own rules, without controllers ------------------------------------------------------------

def put_status(env: Env, name: str, status: dict) -> None:
    env.kube.patch(HEALTHEVENTS, name, {"status": status}, subresource="status")


async def test_cli_refuses_warns_and_writes_with_the_events_resource_version(env: Env) -> None:
    """Not found → the usual one line; a healthy or resolved event → refused; the opposite decision → refused
    without --force, written with it; an event of mode nvsentinel → a warning, written all the same (a
    pre-approval); each write records the decision, who and why, and an Event on the HealthEvent."""
    node = env.node("cli")
    missing = await env.cli("approve", f"nope-{env.unique}")
    assert (missing.returncode, missing.stderr.strip()) == (1, f'error: healthevent "nope-{env.unique}" not found')

    resolved = env.event(f"ho-cli-done-{env.unique}", node)
    put_status(env, resolved, {"phase": "Resolved"})
    out = await env.cli("reject", resolved)
    assert (out.returncode, out.stderr.strip()) == (
        1, f"error: healthevent {resolved} is Resolved: it is closed, nothing to reject")

    pending = env.event(f"ho-cli-appr-{env.unique}", node)
    put_status(env, pending, {"phase": "Drained", "remediationMode": "approve"})
    out = await env.cli("reject", pending, "--reason", "first thoughts")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    out = await env.cli("approve", pending)
    assert (out.returncode, out.stderr.strip()) == (1, f"error: healthevent {pending} was already rejected by "
                                                       f"{getpass.getuser()}; pass --force to approve it instead")
    assert env.get(pending)["metadata"]["annotations"][APPROVAL_ANNOTATION] == "rejected"
    out = await env.cli("approve", pending, "--force")
    assert out.returncode == 0, out.stderr
    ann = env.get(pending)["metadata"]["annotations"]
    assert ann[APPROVAL_ANNOTATION] == "approved" and APPROVAL_REASON_ANNOTATION not in ann  # no reason this time
    await eventually(lambda: {"Approved", "Rejected"} <= env.reasons(pending, "HealthEvent"), what="both Events")

    plain = env.event(f"ho-cli-nvs-{env.unique}", node)
    put_status(env, plain, {"phase": "Quarantined", "remediationMode": "nvsentinel"})
    out = await env.cli("approve", plain)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == f"warning: healthevent {plain} is in remediation mode nvsentinel, not approve: it " \
                                 "does not wait for an approval (recorded as a pre-approval, harmless)"
    assert env.get(plain)["metadata"]["annotations"][APPROVAL_ANNOTATION] == "approved"
