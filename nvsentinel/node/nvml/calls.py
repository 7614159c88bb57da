"""NVML calls on one GPU, under a deadline (docs/conditions.md, "A hung driver").

Python cannot cancel a ctypes call, so a call that hangs in the driver is never interrupted: it
runs on its GPU's own worker thread, and whoever waits for it (the provider's health thread, or a
blocking `call`) stops waiting at the deadline. Each GPU has one worker thread and one call slot:
while a call is outstanding, hung or not, no other call is issued to that GPU, so a GPU that hangs
forever holds exactly one thread and one call.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Call", "GpuCaller", "NvmlCallError", "CallTimeout", "CallBusy"]


class NvmlCallError(RuntimeError):
    """An NVML call on a GPU did not give an answer in time."""


class CallTimeout(NvmlCallError):
    """The call ran past its deadline; it still runs on the GPU's worker thread."""

    def __init__(self, call: str, gpu: int, timeout: float) -> None:
        super().__init__(f"{call} on GPU {gpu} did not return within {timeout:g} s (the driver may be hung)")
        self.call, self.gpu, self.timeout = call, gpu, timeout


class CallBusy(NvmlCallError):
    """An earlier call on the GPU is still outstanding (past its deadline, or still within it at ours)."""

    def __init__(self, call: str, gpu: int, outstanding: str) -> None:
        super().__init__(f"{call} on GPU {gpu} not issued: {outstanding} is still outstanding on it")
        self.call, self.gpu, self.outstanding = call, gpu, outstanding


@dataclasses.dataclass(eq=False)
class Call:
    """One call on a GPU: its name (the NVML function), when it was issued and when it is overdue."""

    name: str
    gpu: int
    issued: float
    deadline: float
    future: concurrent.futures.Future[Any]
    expired: bool = False
    """Someone saw it pass its deadline (set once, by `GpuCaller.expire`)."""


class GpuCaller:
    """One GPU's worker thread (started at the first call) and its single call slot.

    `on_done(call)` runs on the worker after every call (the slot is free by then);
    `observe(name, seconds)` gets every call's latency, including a late one's.
    """

    def __init__(self, gpu: int, timeout: float, *, on_done: Callable[[Call], None] | None = None,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.gpu = gpu
        self.timeout = timeout
        self._on_done = on_done
        self._observe = observe
        self._cv = threading.Condition()
        self._call: Call | None = None
        self._work: tuple[Call, Callable[..., Any], tuple[Any, ...]] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def outstanding(self) -> Call | None:
        with self._cv:
            return self._call

    def submit(self, name: str, fn: Callable[..., Any], *args: Any) -> Call | None:
        """Issue `fn(*args)` on the worker; None (nothing issued) while another call is outstanding."""
        with self._cv:
            if self._call is not None or self._closed:
                return None
            now = time.monotonic()
            call = Call(name, self.gpu, now, now + self.timeout, concurrent.futures.Future())
            self._call = call
            self._work = (call, fn, args)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"nvml-gpu-{self.gpu}", daemon=True)
                self._thread.start()
            self._cv.notify_all()
            return call

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking: `fn(*args)`'s result, waiting at most one deadline for the slot and one for the call.

        Raises CallBusy (the slot holds an overdue call, or stayed taken), CallTimeout (the call
        is overdue and left running), or what `fn` raised.
        """
        until = time.monotonic() + self.timeout
        with self._cv:  # a reentrant lock: submit takes it again
            while True:
                current = self._call
                if self._closed:
                    raise CallBusy(name, self.gpu, "the provider's stop")
                if current is None:
                    call = self.submit(name, fn, *args)
                    assert call is not None
                    break
                left = until - time.monotonic()
                if current.expired or left <= 0:
                    raise CallBusy(name, self.gpu, current.name)
                self._cv.wait(left)
        try:
            return call.future.result(max(0.0, call.deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            self.expire(call)
            raise CallTimeout(name, self.gpu, self.timeout) from None

    def overdue(self, now: float) -> Call | None:
        """The outstanding call if it passed its deadline and nobody has said so yet."""
        with self._cv:
            call = self._call
            return call if call is not None and not call.expired and now >= call.deadline else None

    def expire(self, call: Call) -> bool:
        """Mark `call` overdue; True only for the first to do so (it reports the timeout)."""
        with self._cv:
            if call.expired:
                return False
            call.expired = True
            return True

    def close(self) -> None:
        """The worker exits once idle (a hung call keeps it until the driver returns; it is a daemon)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._work is None and not self._closed:
                    self._cv.wait()
                if self._work is None:
                    return
                call, fn, args = self._work
                self._work = None
            t0 = time.monotonic()
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the call
                error = exc
            if self._observe is not None:
                self._observe(call.name, time.monotonic() - t0)
            with self._cv:
                self._call = None  # free before the result is seen: the waiter may call again at once
                self._cv.notify_all()
            if error is None:
                call.future.set_result(result)
            else:
                call.future.set_exception(error)
            if self._on_done is not None:
                self._on_done(call)
