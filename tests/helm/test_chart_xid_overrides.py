"""values.xidOverrides reaches every daemon that classifies an XID, as one file through one variable."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from helmchart import Helm, by_kind, containers
from test_chart_daemons import SETTINGS, build_parser, expanded_args

from nvsentinel.service.settings import XID_OVERRIDES_ENV, resolve
from nvsentinel.xid import Action, load_catalog

OVERRIDES = {"13": {"action": "COMPONENT_RESET", "reason": "recurring SM faults"}, "43": {"ignore": True},
             "SXID.24007": {"fatal": False}}
#: the containers that classify (docs/xid.md): each must see the site's file
CLASSIFIERS = {"nvml-provider", "kmsg-monitor", "publisher"}


def _node_containers(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["command"][1]: c for w, c in containers(objs) if w["metadata"]["name"].endswith("-node")}


def test_overrides_reach_every_classifier_and_parse_with_the_catalogs_own_loader(helm: Helm) -> None:
    objs = helm.render({"xidOverrides": OVERRIDES})
    cm = by_kind(objs, "ConfigMap")["nvs-xid-overrides"]
    text = cm["data"]["overrides.json"]
    assert json.loads(text) == {"version": 1, "overrides": OVERRIDES}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "overrides.json")
        with open(path, "w") as f:
            f.write(text)
        catalog = load_catalog(path)
        assert catalog.classify(13).action is Action.COMPONENT_RESET and catalog.classify(13).fatal
        assert catalog.classify(43).ignored
        assert not catalog.classify(24007, kind="sxid", severity="fatal").fatal

        (ds,) = [o for o in by_kind(objs, "DaemonSet").values() if o["metadata"]["name"] == "nvs-node"]
        pod = ds["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "xid-overrides"]
        assert vol["configMap"]["name"] == "nvs-xid-overrides"
        assert "checksum/xid-overrides" in ds["spec"]["template"]["metadata"]["annotations"]
        node = _node_containers(objs)
        assert CLASSIFIERS <= set(node)
        for sub in CLASSIFIERS:
            c = node[sub]
            env = {e["name"]: e.get("value") for e in c.get("env", ())}
            mounts = {m["name"]: m for m in c.get("volumeMounts", ())}
            assert env.get(XID_OVERRIDES_ENV) == "/etc/nvsentinel/xid-overrides/overrides.json", sub
            assert mounts["xid-overrides"]["readOnly"] is True, sub
            assert env[XID_OVERRIDES_ENV].startswith(mounts["xid-overrides"]["mountPath"] + "/"), sub
            # the daemon's own settings read the variable the chart sets (the file as mounted here)
            ns = build_parser().parse_args([sub, *expanded_args(c)])
            for cls, prefix in SETTINGS[sub]:
                settings = resolve(cls, ns, environ={XID_OVERRIDES_ENV: path}, prefix=prefix)
                assert settings.xid_overrides == path, (sub, cls.__name__)


def test_no_overrides_renders_nothing_extra(helm: Helm) -> None:
    objs = helm.render()
    assert "nvs-xid-overrides" not in by_kind(objs, "ConfigMap")
    for sub, c in _node_containers(objs).items():
        assert XID_OVERRIDES_ENV not in {e["name"] for e in c.get("env", ())}, sub


def test_a_bad_error_code_or_action_is_refused_by_the_schema(helm: Helm) -> None:
    cases = [({"1x": {"action": "NONE"}}, "'1x'"), ({"13": {"action": "REBOOT"}}, "xidOverrides/13/action"),
             ({"13": {"fatl": True}}, "fatl"), ({"13": {}}, "xidOverrides/13")]
    for bad, named in cases:
        r = helm.template({"xidOverrides": bad}, check=False)
        assert r.returncode != 0 and named in r.stderr, (bad, r.stderr[-400:])
