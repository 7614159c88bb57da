"""Odd input gets its proper status code, never INTERNAL, and is never echoed back whole or raw.

Real gRPC calls (raw bytes where the client would refuse to build the request): the code is the
contract's, the details are bounded and carry no escape or control character, and the daemon's own
log stays clean and short."""
from __future__ import annotations

import re

import grpc
import pytest
from apiserver import SubprocessServer
from gpus import gpu, gpu_name, status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvsentinel._proto import gpu_pb2, gpu_pb2_grpc

A = gpu_name(1)
ANSI = "\x1b[31;1mRED\x1b[0m\x1b]0;pwned\x07"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
DETAILS_MAX = 1100  # the server's status messages: at most 1 000 characters, plus the code's name


def assert_clean(info: pytest.ExceptionInfo, code: grpc.StatusCode) -> str:
    err = info.value
    assert err.code() is code, (err.code(), err.details()[:300])
    details = err.details() or ""
    assert len(details) < DETAILS_MAX, len(details)
    assert not CONTROL.search(details), repr(details[:300])
    return details


@pytest.fixture
def stub(server):
    server.run_sync(server.store.create, gpu(A))
    with grpc.insecure_channel(server.unix) as ch:
        yield gpu_pb2_grpc.GpuServiceStub(ch)


def watch(stub, rv: str):
    req = gpu_pb2.WatchGpusRequest(opts=gpu_pb2.ListOptions(resource_version=rv))
    return list(stub.WatchGpus(req, timeout=10))


@pytest.mark.parametrize("rv", [
    "²",  # str.isdigit() is True, int() refuses it
    "١٢",  # Arabic-Indic digits: int() takes them as 12
    "-1", "+5", "1e3", " 7 7", "0x10",
    "9" * 20,  # over int64
    "9" * 5000,  # over Python's int() digit limit too
    "1" + ANSI,
])
def test_odd_resource_versions_are_invalid_argument(stub, rv):
    """Verify a watch RV that is not ASCII decimal digits of an int64 is INVALID_ARGUMENT, bounded and clean."""
    with pytest.raises(grpc.RpcError) as info:
        watch(stub, rv)
    assert "resource_version must be a decimal int64" in assert_clean(info, grpc.StatusCode.INVALID_ARGUMENT)


def test_future_resource_version_is_out_of_range(stub):
    """Verify an RV that is a valid int64 but newer than the store is OUT_OF_RANGE (relist)."""
    with pytest.raises(grpc.RpcError) as info:
        watch(stub, str(2**63 - 1))
    assert_clean(info, grpc.StatusCode.OUT_OF_RANGE)


@pytest.mark.parametrize("method, request_", [
    ("GetGpu", gpu_pb2.GetGpuRequest(name="GPU-" + ANSI + "x" * 100_000)),
    ("DeleteGpu", gpu_pb2.DeleteGpuRequest(name=ANSI * 5000)),
    ("UpdateGpuStatus", gpu_pb2.UpdateGpuStatusRequest(name="\n".join(["forged log line"] * 5000))),
])
def test_huge_names_are_invalid_argument_and_not_echoed(stub, method, request_):
    """Verify a 100 KB name full of escapes is INVALID_ARGUMENT; the details quote a bounded, clean prefix."""
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request_, timeout=10)
    details = assert_clean(info, grpc.StatusCode.INVALID_ARGUMENT)
    assert "is not a GPU name" in details and "chars)" in details


def test_huge_object_names_are_invalid_argument_and_not_echoed(stub):
    """Verify CreateGpu/UpdateGpu with a 60 KB ANSI name (refused by the store) come back bounded and clean."""
    bad = gpu("GPU-" + (ANSI + "y") * 3000)
    for call in (lambda: stub.CreateGpu(gpu_pb2.CreateGpuRequest(gpu=bad), timeout=10),
                 lambda: stub.UpdateGpu(gpu_pb2.UpdateGpuRequest(gpu=bad), timeout=10)):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert_clean(info, grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize("rv, code", [
    (-5, grpc.StatusCode.INVALID_ARGUMENT),
    (-(2**63), grpc.StatusCode.INVALID_ARGUMENT),
    (2**63 - 1, grpc.StatusCode.ABORTED),  # a real int64, just not the object's RV
])
def test_odd_expected_resource_versions(stub, rv, code):
    """Verify negative and extreme expected RVs get INVALID_ARGUMENT or ABORTED, never INTERNAL."""
    with pytest.raises(grpc.RpcError) as info:
        stub.UpdateGpuStatus(gpu_pb2.UpdateGpuStatusRequest(name=A, status=status(("Ready", "True")),
                                                            resource_version=rv), timeout=10)
    assert_clean(info, code)
    whole = gpu(A)
    whole.resource_version = rv
    with pytest.raises(grpc.RpcError) as info:
        stub.UpdateGpu(gpu_pb2.UpdateGpuRequest(gpu=whole), timeout=10)
    assert_clean(info, code)


def test_missing_gpu_is_not_found(stub):
    """Verify a well-formed name that is not there is NOT_FOUND, its (short) name quoted."""
    with pytest.raises(grpc.RpcError) as info:
        stub.GetGpu(gpu_pb2.GetGpuRequest(name=gpu_name(7)), timeout=10)
    assert gpu_name(7) in assert_clean(info, grpc.StatusCode.NOT_FOUND)


METHODS = ["GetGpu", "ListGpus", "CreateGpu", "UpdateGpu", "UpdateGpuStatus", "DeleteGpu"]
EXPECTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from([*METHODS, "WatchGpus"]), payload=st.binary(max_size=300))
def test_fuzzed_requests_never_internal(server, method, payload):
    """Verify random request bytes to every RPC end OK or with a contract code and clean details."""
    server.run_sync(server.store.create, gpu(A))
    with grpc.insecure_channel(server.unix) as ch:
        try:
            if method == "WatchGpus":
                call = ch.unary_stream(f"/nvidia.device.v1alpha1.GpuService/{method}")(payload, timeout=10)
                next(iter(call), None)
                call.cancel()
            else:
                ch.unary_unary(f"/nvidia.device.v1alpha1.GpuService/{method}")(payload, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.CANCELLED:
                return
            assert exc.code() in EXPECTED, (method, payload, exc.code(), exc.details())
            assert len(exc.details()) < DETAILS_MAX and not CONTROL.search(exc.details())


def test_the_daemon_log_stays_clean(sock_dir):
    """Verify after a barrage of odd requests the daemon logged no escape or control character and no
    long line (nothing it was sent reaches its log raw)."""
    server = SubprocessServer.start(sock_dir, "--log-level", "DEBUG")
    try:
        with grpc.insecure_channel(server.unix) as ch:
            stub = gpu_pb2_grpc.GpuServiceStub(ch)
            stub.CreateGpu(gpu_pb2.CreateGpuRequest(gpu=gpu(A)), timeout=10)
            for name in ("GPU-" + ANSI * 2000, "\n".join(["level=error msg=forged"] * 100)):
                for call in (lambda: stub.GetGpu(gpu_pb2.GetGpuRequest(name=name), timeout=10),
                             lambda: stub.CreateGpu(gpu_pb2.CreateGpuRequest(gpu=gpu(name)), timeout=10),
                             lambda: watch(stub, name)):
                    with pytest.raises(grpc.RpcError):
                        call()
            assert stub.GetGpu(gpu_pb2.GetGpuRequest(name=A), timeout=10).gpu.metadata.name == A
        assert server.terminate() == 0
    finally:
        server.close()
    log = "".join(server.log)
    assert "\x1b" not in log and not CONTROL.search(log.replace("\n", ""))
    assert "forged" not in log
    assert max(len(line) for line in server.log) < 2000


def test_an_unexpected_error_is_internal_with_a_fixed_message(server, caplog):
    """Verify a bug (here: the store raising a plain ValueError that quotes its input) reaches the client
    as INTERNAL with a fixed message, and the server's log line names where it happened with a
    bounded, clean message instead of the raw text."""
    server.run_sync(server.store.create, gpu(A))

    class Buggy:
        def __init__(self, store):
            self._store = store

        def __getattr__(self, name):
            return getattr(self._store, name)

        def get(self, name):
            raise ValueError("cannot handle " + ANSI + "z" * 50_000)

    servicer = server.server.servicer
    servicer.store = Buggy(servicer.store)
    try:
        with grpc.insecure_channel(server.unix) as ch, caplog.at_level("ERROR"):
            with pytest.raises(grpc.RpcError) as info:
                gpu_pb2_grpc.GpuServiceStub(ch).GetGpu(gpu_pb2.GetGpuRequest(name=A), timeout=10)
    finally:
        servicer.store = servicer.store._store
    assert assert_clean(info, grpc.StatusCode.INTERNAL) == "internal error (logged by the server)"
    (record,) = [r for r in caplog.records if r.getMessage() == "rpc failed"]
    kv = record.kv
    assert kv["method"] == "GetGpu" and "test_api_odd_inputs.py" in kv["where"]
    assert kv["error"].startswith("ValueError: cannot handle RED") and len(kv["error"]) < 300
    assert "\x1b" not in kv["error"] and record.exc_info is None
