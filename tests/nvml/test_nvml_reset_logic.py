"""The gpu-reset handshake's pure parts: which requests are unanswered, the answer's conditions,
the `Reset` decision, the resetters and the `--nvml-reset-command` setting."""
from __future__ import annotations

import argparse
import sys

import pytest

from nvsentinel._proto import gpu_pb2
from nvsentinel.devtools import fake_nvml
from nvsentinel.devtools.fake_nvml import FakeResetter, make_resetter
from nvsentinel.node.nvml import handshake
from nvsentinel.node.nvml.config import ENV_PREFIX, NvmlProviderSettings
from nvsentinel.node.nvml.reset import (
    DEFAULT_RESET_COMMAND,
    CommandResetter,
    ResetError,
    parse_template,
)
from nvsentinel.policy import conditions as logic
from nvsentinel.service.settings import SettingsError, resolve
from nvsentinel.xid import Action

UUID = "GPU-e7b01a4c-23be-ec6e-51b4-457253d5dcb5"


def status(*conds: tuple[str, str, str, str]) -> gpu_pb2.GpuStatus:
    out = gpu_pb2.GpuStatus()
    for type_, st, reason, message in conds:
        out.conditions.add(type=type_, status=st, reason=reason, message=message)
    return out


REQ = ("ResetRequested", "True", "RemediationRequested", "he-1")


@pytest.mark.parametrize(
    ("conds", "remembered", "pending"),
    [
        ((), None, None),
        ((REQ,), None, "he-1"),
        ((("ResetRequested", "False", "RemediationRequested", "he-1"),), None, None),
        ((("ResetRequested", "True", "RemediationRequested", ""),), None, None),  # names no HealthEvent
        ((REQ, ("GpuReset", "True", "ResetVerified", "he-1: GPU reset and re-verified")), None, None),
        ((REQ, ("GpuReset", "False", "ResetFailed", "he-1: boom")), None, None),  # a failure is an answer too
        ((REQ, ("GpuReset", "True", "ResetVerified", "he-0: GPU reset and re-verified")), None, "he-1"),
        ((REQ, ("GpuReset", "True", "ResetVerified", "he-10: GPU reset and re-verified")), None, "he-1"),
        ((REQ,), handshake.verified("he-1", 5.0), None),  # answered, the write still on its way
        ((REQ,), handshake.verified("he-0", 5.0), "he-1"),
        # the first ResetRequested counts, as the store keeps one per type
        ((REQ, ("ResetRequested", "True", "RemediationRequested", "he-2")), None, "he-1"),
        ((("NvmlHealthy", "False", "Xid48", "XID 48"), REQ), None, "he-1"),
    ],
)
def test_pending_request(conds, remembered, pending):
    """Verify a request is pending exactly while no answer prefixed `R:` exists, on the server or in memory."""
    assert handshake.pending_request(status(*conds), remembered) == pending


def test_answers_carry_the_request_and_one_line():
    """Verify the two answers' conditions are the contract's, and an error becomes one line."""
    ok = handshake.verified("he-1", 1700000000.25)
    assert (ok.status, ok.reason, ok.message) == ("True", "ResetVerified", "he-1: GPU reset and re-verified")
    assert (ok.seconds, ok.nanos) == (1700000000, 250000000)
    bad = handshake.failed("he-1", "`x` exited 1:\n  line one\n\tline two ", 7.0)
    assert (bad.status, bad.reason, bad.message) == ("False", "ResetFailed", "he-1: `x` exited 1: line one line two")
    assert ok.answers("he-1") and bad.answers("he-1") and not ok.answers("he")


def test_merge_ack_replaces_only_its_own_condition_in_place():
    """Verify merge_ack keeps every other condition and the action, keeps GpuReset's position and drops duplicates."""
    cur = status(("NvmlHealthy", "False", "Xid48", "m"), ("GpuReset", "False", "ResetFailed", "he-0: x"),
                 REQ, ("GpuReset", "True", "ResetVerified", "dup"))
    cur.recommended_action = "COMPONENT_RESET"
    out = handshake.merge_ack(cur, handshake.verified("he-1", 42.5))
    assert [(c.type, c.status, c.message) for c in out.conditions] == [
        ("NvmlHealthy", "False", "m"), ("GpuReset", "True", "he-1: GPU reset and re-verified"),
        ("ResetRequested", "True", "he-1")]
    assert out.conditions[1].last_transition_time.seconds == 42
    assert out.recommended_action == "COMPONENT_RESET"
    appended = handshake.merge_ack(status(REQ), handshake.failed("he-1", "no", 1.0))
    assert [c.type for c in appended.conditions] == ["ResetRequested", "GpuReset"]
    assert handshake.ack_of(appended) == handshake.failed("he-1", "no", 1.0)


def test_reset_decision_makes_the_gpu_healthy_and_names_the_request():
    """Verify logic.Reset heals any finding with reason GpuReset, keeps the SBE count, and is idempotent."""
    xid48 = logic.decide(logic.GpuView(sbe_count=3), logic.Xid(48)).view
    d = logic.decide(xid48, logic.Reset("he-1"))
    assert d.changed and d.note == "reset"
    assert d.view.condition() == ("True", "GpuReset", "GPU reset and re-verified (requested by HealthEvent he-1)")
    assert d.view.action is Action.NONE and d.view.sbe_count == 3
    assert not logic.decide(d.view, logic.Reset("he-1")).changed
    assert logic.decide(d.view, logic.Reset("he-2")).changed  # a new message
    assert logic.decide(logic.GpuView(), logic.Reset("he-1")).changed  # NvmlOk → GpuReset
    # and a later fault replaces it as usual
    assert logic.decide(d.view, logic.Xid(79)).view.condition()[:2] == ("False", "Xid79")


def test_recommended_action_drops_after_a_reset_even_over_an_old_failed_answer():
    """Verify the provider's merge order (answer, then NvmlHealthy) lowers the action despite a stale ResetFailed."""
    cur = status(("NvmlHealthy", "False", "Xid48", "m"), ("GpuReset", "False", "ResetFailed", "he-0: x"))
    cur.recommended_action = "COMPONENT_RESET"
    view = logic.decide(logic.GpuView(), logic.Reset("he-1")).view
    merged = logic.merge_status(handshake.merge_ack(cur, handshake.verified("he-1", 9.0)), view, 9)
    assert merged.recommended_action == "NONE"
    # merged the other way round, the stale False would have kept the action up (why the order matters)
    assert logic.merge_status(cur, view, 9).recommended_action == "COMPONENT_RESET"


# ---- resetters ----

def test_command_resetter_substitutes_and_succeeds(tmp_path):
    """Verify {uuid} and {index} are replaced in every argument, literally (shell braces survive)."""
    out = tmp_path / "out"
    r = CommandResetter("sh -c 'X=ok; echo {uuid} {index} ${X} > \"$0\"' " + str(out))
    r.reset(3, UUID)
    assert out.read_text() == f"{UUID} 3 ok\n"
    assert CommandResetter(DEFAULT_RESET_COMMAND).argv(5, UUID) == ["nvidia-smi", "--gpu-reset", "-i", UUID]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("false", "`false` exited 1: no output"),
        ("sh -c 'echo out; echo first >&2; echo second >&2; exit 3'", "exited 3: first | second"),
        ("sh -c 'echo only-stdout; exit 4'", "exited 4: only-stdout"),
        ("/nonexistent/nvidia-smi -r", "could not run: No such file or directory"),
    ],
)
def test_command_resetter_failures_are_one_line(template, expected):
    """Verify a failing command raises ResetError with the exit status and a one-line output tail."""
    with pytest.raises(ResetError) as err:
        CommandResetter(template).reset(0, UUID)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_command_resetter_times_out_and_keeps_only_a_tail():
    """Verify a hung command is cut off at the timeout, and huge output is trimmed to its tail."""
    with pytest.raises(ResetError, match=r"timed out after 0.2 s"):
        CommandResetter("sleep 5", timeout=0.2).reset(0, UUID)
    with pytest.raises(ResetError) as err:
        CommandResetter("sh -c 'yes x | head -c 5000 >&2; echo END >&2; exit 1'").reset(0, UUID)
    assert str(err.value).endswith("x | END") and len(str(err.value)) < 400


def test_parse_template_rejects_unusable_commands():
    """Verify an empty or unsplittable template is refused."""
    for bad in ("", "   ", "nvidia-smi 'unbalanced"):
        with pytest.raises(ValueError):
            parse_template(bad)


class _StubCdll:
    def __init__(self, rc: int) -> None:
        self.calls: list[int] = []
        self.rc = rc

        def reset(index: int) -> int:
            self.calls.append(index)
            return self.rc

        self.fakeNvmlResetGpu = _Fn(reset)
        self.fakeNvmlLastError = lambda: b"GPU 9 is not in the topology (8 GPUs)"


class _Fn:
    """A callable that, like a ctypes function, accepts argtypes/restype."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def _fake(rc: int) -> tuple[fake_nvml.FakeNvml, _StubCdll]:
    cdll = _StubCdll(rc)
    return fake_nvml.FakeNvml(path=None, topology="built-in", control=None, cdll=cdll), cdll  # type: ignore[arg-type]


def test_make_resetter_picks_fake_command_or_none(monkeypatch):
    """Verify: empty → disabled; the fake loaded + the default → the fake; any other template → the command."""
    assert make_resetter("") is None and make_resetter("  ") is None
    monkeypatch.setattr(fake_nvml, "loaded", lambda: None)
    assert isinstance(make_resetter(DEFAULT_RESET_COMMAND), CommandResetter)
    fake, cdll = _fake(0)
    monkeypatch.setattr(fake_nvml, "loaded", lambda: fake)
    r = make_resetter(DEFAULT_RESET_COMMAND)
    assert isinstance(r, FakeResetter)
    r.reset(3, UUID)
    assert cdll.calls == [3]
    assert isinstance(make_resetter("false"), CommandResetter)


def test_fake_resetter_reports_the_library_error():
    """Verify a refused fakeNvmlResetGpu raises ResetError with the library's last error."""
    fake, cdll = _fake(-1)
    with pytest.raises(ResetError, match=r"fakeNvmlResetGpu\(9\) failed: GPU 9 is not in the topology"):
        FakeResetter(fake).reset(9, UUID)
    assert cdll.calls == [9]


# ---- the setting ----

def test_reset_command_setting_flag_env_default_and_validation():
    """Verify --nvml-reset-command > NVML_PROVIDER_NVML_RESET_COMMAND > the default, "" allowed, bad refused."""
    from nvsentinel.daemons.nvml_provider import add_parser_arguments

    assert resolve(NvmlProviderSettings, None, {}, prefix=ENV_PREFIX).nvml_reset_command == DEFAULT_RESET_COMMAND
    env = {f"{ENV_PREFIX}NVML_RESET_COMMAND": "/opt/reset.sh {index}"}
    assert resolve(NvmlProviderSettings, None, env, prefix=ENV_PREFIX).nvml_reset_command == "/opt/reset.sh {index}"
    parser = argparse.ArgumentParser()
    add_parser_arguments(parser)
    s = resolve(NvmlProviderSettings, parser.parse_args(["--nvml-reset-command", ""]), env, prefix=ENV_PREFIX)
    assert s.nvml_reset_command == ""
    with pytest.raises(SettingsError, match="--nvml-reset-command"):
        resolve(NvmlProviderSettings, parser.parse_args(["--nvml-reset-command", "a 'b"]), {}, prefix=ENV_PREFIX)


def test_bad_reset_command_exits_2():
    """Verify the daemon refuses an unsplittable reset command at start with exit status 2."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.nvml_provider", "--health-port", "0",
         "--address", "127.0.0.1:1", "--nvml-reset-command", "nvidia-smi 'unbalanced"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "--nvml-reset-command" in proc.stderr
