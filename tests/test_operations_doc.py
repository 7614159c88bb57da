"""docs/operations.md names only what exists.

Its `nvsentinel` commands parse with the real CLI, its flags and chart values exist, the reasons,
phases and actions it names are the controllers' own, its HealthEvent example is valid, and its
links resolve. A rename anywhere fails here until the runbook follows it.

What counts as what in the doc:
- a shell line (in a fenced block) whose command, or whose command after `--` (kubectl exec), is
  `nvsentinel`, and an inline code span starting with `nvsentinel `: parsed by the CLI's parser;
- an inline code span starting with `--`: a flag of some `nvsentinel` command;
- a `--set KEY=VALUE` of a helm line, and an inline span like `chain.dryRun` whose first part is a
  top-level key of values.yaml: a path in charts/nvsentinel/values.yaml.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import re
import shlex
import textwrap

import yaml

from nvsentinel import cli
from nvsentinel.cluster.remediation.logic import HELD_REASONS
from nvsentinel.policy.healthevent import ConditionType, HealthEvent, Phase
from nvsentinel.xid import Action

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
VALUES = ROOT / "charts" / "nvsentinel" / "values.yaml"
SOURCES = ROOT / "nvsentinel"
#: Reasons Kubernetes itself writes that the runbook tells operators to look for.
KUBERNETES_REASONS = {"FailedCreate"}

_FENCE = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)


def doc() -> str:
    return DOC.read_text()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, dedented body) of every fenced block, list-indented ones included."""
    return [(m.group(2), textwrap.dedent(m.group(3))) for m in _FENCE.finditer(text)]


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks; a span may wrap a line (read as one space)."""
    prose = _FENCE.sub("", text)
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]


def shell_commands(text: str) -> list[list[str]]:
    """Every simple command of the shell blocks, as argv lists (pipes, `&&`, `;` split them)."""
    out = []
    for lang, body in fenced_blocks(text):
        if lang not in ("", "sh", "bash", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if not line:
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for token in lexer:
                if token in ("|", "||", "&&", ";", ">", ">>", "<"):
                    out.append(command)
                    command = []
                else:
                    command.append(token)
            out.append(command)
    return [c for c in out if c]


def nvsentinel_argvs(text: str) -> list[list[str]]:
    """The arguments after `nvsentinel` of every nvsentinel command the doc shows."""
    out = []
    for argv in shell_commands(text):
        for i, word in enumerate(argv):
            if word == "nvsentinel" and (i == 0 or argv[i - 1] == "--"):
                out.append(argv[i + 1:])
                break
    out += [shlex.split(s)[1:] for s in inline_spans(text) if s.startswith("nvsentinel ")]
    return out


def all_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= all_flags(sub)
    return flags


def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def has_value(tree: dict, path: str) -> bool:
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def source_text() -> str:
    return "\n".join(p.read_text() for p in SOURCES.rglob("*.py"))


# ---- commands and flags -------------------------------------------------------------------------------

def test_extractors_find_commands_in_blocks_spans_and_kubectl_exec():
    """Verify the extractors see a command in a block, after `kubectl exec --`, in a span, and split pipes."""
    text = ("```sh\nnvsentinel get he -o json | jq .\nkubectl exec deploy/x -- nvsentinel breaker status\n"
            "helm install r c \\\n  --set a.b=1\n```\nRun `nvsentinel breaker reset` now.\n")
    assert nvsentinel_argvs(text) == [["get", "he", "-o", "json"], ["breaker", "status"], ["breaker", "reset"]]
    assert ["helm", "install", "r", "c", "--set", "a.b=1"] in shell_commands(text)


def test_every_nvsentinel_command_in_the_doc_parses():
    """Verify each `nvsentinel ...` the doc shows is accepted by the real CLI parser."""
    argvs = nvsentinel_argvs(doc())
    commands = {a[0] for a in argvs if a}
    assert {"get", "describe", "breaker"} <= commands, commands
    parser = cli.build_parser()
    for argv in argvs:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 0 and {"--help", "--version"} & set(argv), \
                f"`nvsentinel {shlex.join(argv)}` does not parse: {err.getvalue().strip()}"


def test_every_flag_the_doc_names_exists():
    """Verify each inline `--flag` of the doc is a flag of some nvsentinel command."""
    known = all_flags(cli.build_parser())
    named = {re.split(r"[ =]", s)[0] for s in inline_spans(doc()) if s.startswith("--")}
    assert {"--dry-run", "--breaker-percent", "--node-selector"} <= named
    unknown = sorted(named - known)
    assert not unknown, f"docs/operations.md names flags no nvsentinel command has: {unknown}"


def test_every_chart_value_the_doc_names_exists():
    """Verify the helm `--set` keys and the value paths the doc names are in charts/nvsentinel/values.yaml."""
    tree = values()
    sets = [argv[i + 1].partition("=")[0] for argv in shell_commands(doc()) if argv[0] == "helm"
            for i, word in enumerate(argv[:-1]) if word == "--set"]
    assert "chain.dryRun" in sets
    spans = [s for s in inline_spans(doc())
             if re.fullmatch(r"[a-z][A-Za-z0-9]*(\.[A-Za-z0-9]+)+", s) and s.split(".")[0] in tree]
    assert "controllers.quarantine.breaker.percent" in spans
    missing = sorted({p for p in sets + spans if not has_value(tree, p)})
    assert not missing, f"docs/operations.md names chart values that do not exist: {missing}"


def test_install_commands_use_the_chart_and_its_crd():
    """Verify the helm lines install charts/nvsentinel and the CRD applied/deleted by hand is the chart's."""
    commands = shell_commands(doc())
    helm = [c for c in commands if c[0] == "helm" and c[1] in ("install", "upgrade")]
    assert helm and all("charts/nvsentinel" in c for c in helm)
    crd = ROOT / "charts" / "nvsentinel" / "crds" / "healthevents.nvsentinel.nvidia.com.yaml"
    assert ["kubectl", "apply", "-f", crd.relative_to(ROOT).as_posix()] in commands
    crd_name = yaml.safe_load(crd.read_text())["metadata"]["name"]
    assert ["kubectl", "delete", "crd", crd_name] in commands
    assert ["kubectl", "label", "namespace", "nvsentinel", "pod-security.kubernetes.io/enforce=privileged"] in commands


# ---- the words of the controllers ---------------------------------------------------------------------

def test_every_held_reason_has_a_line_in_what_needs_a_human():
    """Verify each reason that parks an event for a human (remediation HELD_REASONS) is explained."""
    section = doc().split("## What needs a human", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)`", section, re.M)}
    assert HELD_REASONS <= rows, f"not explained: {sorted(HELD_REASONS - rows)}"


def test_reasons_phases_and_actions_named_are_the_code_s_own():
    """Verify each CamelCase word in code spans is a phase, a condition type, or a reason the code writes
    (DryRun reasons: their base reason), and each UPPER_CASE one a catalog action."""
    spans = set(inline_spans(doc()))
    code = source_text()
    allowed = {p.value for p in Phase} | {c.value for c in ConditionType} | {"True", "False", "Unknown"}
    words = {s for s in spans if re.fullmatch(r"[A-Z][a-z]+[A-Za-z]*", s)}
    assert {"UncordonedByOperator", "ManualRemediationRequired", "DryRunCordoned"} <= words
    assert '"DryRun"' in code, "the DryRun prefix is built by the controllers"
    unknown = [w for w in sorted(words - allowed - KUBERNETES_REASONS - {"DryRun"})
               if f'"{w}"' not in code and f'"{w.removeprefix("DryRun")}"' not in code]
    assert not unknown, f"docs/operations.md names reasons the controllers never write: {unknown}"
    actions = {s for s in spans if re.fullmatch(r"[A-Z]{2,}(_[A-Z]+)*", s)}
    assert actions and actions <= {a.value for a in Action}, actions - {a.value for a in Action}


def test_the_quarantine_annotation_and_taint_key_are_the_code_s():
    """Verify the annotation and taint key the manual steps remove are the ones quarantine writes."""
    from nvsentinel.cluster.quarantine.config import QuarantineConfig
    from nvsentinel.cluster.quarantine.logic import ANNOTATION
    from nvsentinel.cluster.remediation.logic import STRATEGY_ANNOTATION

    commands = shell_commands(doc())
    taint = f"{QuarantineConfig().taint_key}:{QuarantineConfig().taint_effect}-"
    assert any(c[:2] == ["kubectl", "taint"] and c[-1] == taint for c in commands)
    assert any(c[:2] == ["kubectl", "annotate"] and c[-1] == f"{ANNOTATION}-" for c in commands)
    assert any(c[:2] == ["kubectl", "annotate"] and c[-1].startswith(f"{STRATEGY_ANNOTATION}=") for c in commands)


def test_healthevent_example_is_valid():
    """Verify the hand-made healthy HealthEvent reads as a valid model object, healthy, for its node."""
    blocks = [b for lang, b in fenced_blocks(doc()) if lang == "yaml" and "kind: HealthEvent" in b]
    assert blocks, "the runbook's healthy HealthEvent example is gone"
    for block in blocks:
        obj = yaml.safe_load(block)
        event = HealthEvent.from_dict(obj)
        assert event.spec.is_healthy and not event.spec.is_fatal
        assert obj["metadata"]["labels"]["nvsentinel.nvidia.com/node"] == event.spec.node_name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", event.name) and len(event.name) <= 253


def test_patch_bodies_are_json_overrides_the_model_knows():
    """Verify each `kubectl patch ... -p JSON` sets an override the HealthEvent spec has."""
    import json

    patches = [c for c in shell_commands(doc()) if c[:2] == ["kubectl", "patch"]]
    assert len(patches) >= 2
    for argv in patches:
        body = json.loads(argv[argv.index("-p") + 1])
        (stage, flags), = body["spec"]["overrides"].items()
        assert stage in ("quarantine", "drain") and set(flags) <= {"force", "skip"}, body
        assert "--type" in argv and argv[argv.index("--type") + 1] == "merge"  # CRs take no strategic merge


# ---- links --------------------------------------------------------------------------------------------

def test_relative_links_and_anchors_resolve():
    """Verify each relative link points at an existing file and each `#anchor` at a heading."""
    text = doc()
    links = re.findall(r"\]\(([^)\s]+)\)", _FENCE.sub("", text))
    assert links

    def anchors(markdown: str) -> set[str]:
        heads = re.findall(r"^#+\s+(.*)$", _FENCE.sub("", markdown), re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}

    for link in links:
        if re.match(r"\w+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = (DOC.parent / path).resolve() if path else DOC
        assert target.exists(), f"broken link {link}"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target.read_text()), f"no heading for #{anchor} in {target.name}"


def test_every_never_line_names_a_test_that_exists() -> None:
    """"What nvsentinel will never do": each promise names at least one test, and each named test exists."""
    text = doc()
    start = text.index("## What nvsentinel will never do")
    section = text[start:text.index("\n## ", start + 1)]
    lines = [b for b in re.split(r"\n- ", section)[1:]]
    assert len(lines) >= 15, "the section lost its promises"
    for line in lines:
        refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?`", line)
        assert refs, f"a promise without a proof: {line[:80]!r}"
        for path, name in refs:
            source = (ROOT / path).read_text()
            assert re.search(rf"^(?:async )?def {name}\(", source, re.M), f"{path}::{name} does not exist"
