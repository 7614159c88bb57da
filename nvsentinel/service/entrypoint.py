"""How a daemon is started: as `nvsentinel <name>` (a subcommand) or `python -m nvsentinel.daemons.<module>`.

Each daemon module declares one `Entrypoint`; the CLI calls its `register`, and the module's own
`__main__` block calls its `main`. Both parse the same flags and run the same function.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
from collections.abc import Callable, Sequence

__all__ = ["Entrypoint", "on_stop_signal", "stop_requested"]


def on_stop_signal(callback: Callable[[], None]) -> None:
    """Run `callback` on SIGTERM or SIGINT (install on the main thread, before starting work).

    Not in the handler itself: Python runs a handler on the main thread between two bytecodes, and that
    can be inside `threading.Event.wait()`, holding the event's lock; `Event.set()` there would wait for
    that lock forever (a kmsg monitor ignored SIGTERM that way). A thread of its own takes the lock as soon
    as the main thread lets go of it."""
    def _handler(signum: int, _frame: object) -> None:
        threading.Thread(target=callback, name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def stop_requested() -> threading.Event:
    """An event that SIGTERM or SIGINT sets (`on_stop_signal`); call on the main thread, before starting
    work, so an early signal is not lost."""
    done = threading.Event()
    on_stop_signal(done.set)
    return done


@dataclasses.dataclass(frozen=True)
class Entrypoint:
    name: str
    """The `nvsentinel` subcommand, e.g. `device-api-server`."""
    help: str
    """One line for `nvsentinel --help`."""
    description: str
    """The subcommand's `--help` text."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], int]
    """`run(args, prog)` → exit status (2: bad settings, 1: cannot start)."""

    @property
    def module(self) -> str:
        return "nvsentinel.daemons." + self.name.replace("-", "_")

    def register(self, subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser(self.name, help=self.help, description=self.description)
        self.add_arguments(parser)
        parser.set_defaults(func=lambda args: self.run(args, f"nvsentinel {self.name}"))

    def main(self, argv: Sequence[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog=f"python -m {self.module}", description=self.description)
        self.add_arguments(parser)
        return self.run(parser.parse_args(argv), parser.prog)
