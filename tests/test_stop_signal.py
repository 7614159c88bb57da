"""SIGTERM stops a daemon whose main thread is waiting on a threading.Event, however often it arrives.

A handler that called `Event.set()` itself could run inside the main thread's `Event.wait()`, while
that thread holds the event's lock, and wait for the lock forever (a kmsg monitor once ignored
SIGTERM that way). `on_stop_signal` runs the callback on a thread of its own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

CHILD = r"""
import sys, threading
from nvsentinel.service.entrypoint import on_stop_signal

wake = threading.Event()
on_stop_signal(wake.set)
print("ready", flush=True)
for i in range(int(sys.argv[1])):  # the main thread spends its time inside Event.wait, lock taken and given
    while not wake.wait(0.0005):
        pass
    wake.clear()
    print(i, flush=True)
"""


def test_every_signal_reaches_a_main_thread_waiting_on_an_event() -> None:
    rounds = 3000  # the old handler (Event.set in the handler) hung here after about a thousand
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(rounds)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONSAFEPATH": "1"})
    watchdog = threading.Timer(120, child.kill)  # a hang ends as a failed readline, not a stuck suite
    watchdog.start()
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for i in range(rounds):
            child.send_signal(signal.SIGTERM if i % 2 else signal.SIGINT)
            # the child answers each signal before the next is sent: a deadlocked handler never answers
            assert child.stdout.readline().strip() == str(i)
        assert child.wait(timeout=120) == 0
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
