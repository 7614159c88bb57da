"""`nvsentinel watch gpus`: follow GPU changes as they happen (one line or JSON object per event).

A watch outlives its server: when the stream drops (the server restarts, the connection breaks,
the watcher is evicted for lagging) the command says so in one line on stderr and reconnects with
backoff, as the GpuInformer does. It resumes from the last resource version it printed; if that
has left the server's window, or the server is a new incarnation (its RVs start again from 0), it
relists and prints the difference from what it showed (ADDED, MODIFIED, DELETED), then follows the
new server. A failure before the first stream opened (a wrong address, no server) ends it (exit 1).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from nvsentinel import errors
from nvsentinel.cli.args import add_address
from nvsentinel.cli.views.gpus import watch_line
from nvsentinel.service.sanitize import printable

BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("watch", help="follow changes from the node's Device API")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    gpus = kinds.add_parser("gpus", help="every GPU change: ADDED for each GPU, then updates (reconnects by itself)")
    gpus.add_argument("-o", "--output", choices=("table", "json"), default="table")
    gpus.add_argument("--since", type=int, default=None, metavar="RV", help="resume after this resource version")
    gpus.add_argument("--bookmarks", action="store_true", help="also print BOOKMARK events")
    add_address(gpus)
    gpus.set_defaults(func=run)


def _notice(text: str) -> None:
    print(f"watch: {text}", file=sys.stderr, flush=True)


class Follower:
    """Prints a server's GPU events and carries the watch across stream failures."""

    def __init__(self, client: Any, output: str, bookmarks: bool, since: int | None) -> None:
        self.client = client
        self.output = output
        self.bookmarks = bookmarks
        self.rv = since
        self.epoch: str | None = None
        self.shown: dict[str, Any] = {}  # name -> the GPU as last printed (what a relist compares with)
        self.connected = False
        self.relist_because = ""  # set: relist before the next stream, and say why

    def emit(self, event_type: str, gpu: Any, rv: int) -> None:
        if event_type == "BOOKMARK" and not self.bookmarks:
            return
        print(watch_line(event_type, gpu, rv, self.output), flush=True)

    def apply(self, event: Any) -> None:
        self.rv = max(self.rv or 0, event.resource_version)
        if event.type == "DELETED":
            self.shown.pop(event.gpu.metadata.name, None)
        elif event.type != "BOOKMARK":
            self.shown[event.gpu.metadata.name] = event.gpu
        self.emit(event.type, event.gpu, event.resource_version)

    def relist(self) -> int:
        """List, print how it differs from what was shown, follow from the list's RV; the changes."""
        rv, gpus = self.client.list_gpus()
        fresh = {g.metadata.name: g for g in gpus}
        changes = 0
        for name, gpu in fresh.items():
            old = self.shown.get(name)
            if old is None or old != gpu:
                self.emit("ADDED" if old is None else "MODIFIED", gpu, gpu.resource_version)
                changes += 1
        for name, gpu in self.shown.items():
            if name not in fresh:
                self.emit("DELETED", gpu, rv)
                changes += 1
        self.shown, self.rv, self.epoch = fresh, rv, self.client.server_epoch
        return changes

    def connected_to(self, epoch: str) -> None:
        if not self.connected and self.epoch is not None:
            _notice(f"reconnected; resuming after rv {self.rv}")
        self.epoch, self.connected = epoch, True

    def follow_once(self) -> None:
        """One stream, from the last RV (or fresh), until it ends; raises what ended it. The stream's
        initial metadata says which server incarnation answered: a new one means the RVs mean
        something else now, so relist instead of applying anything from it. (A server that sends no
        epoch, like upstream's, counts as connected at its first event.)"""
        stream = self.client.watch_gpus(since_rv=self.rv)
        try:
            epoch = stream.epoch  # "" when the call failed before it opened: iterating says why
            if epoch:
                if self.epoch is not None and epoch != self.epoch:
                    self.relist_because = "the server restarted (a new store)"
                    return
                self.connected_to(epoch)
            for event in stream:
                if not self.connected:
                    self.connected_to(epoch)
                self.apply(event)
        finally:
            stream.cancel()

    def run(self) -> int:
        delay = BACKOFF_INITIAL
        while True:
            try:
                if self.relist_because:
                    changes = self.relist()
                    _notice(f"{self.relist_because}: relisted, {changes} change(s)")
                    self.relist_because, self.connected = "", True
                self.follow_once()
                delay = BACKOFF_INITIAL
                continue  # the stream ended cleanly (or must relist): go on
            except errors.Expired:
                self.relist_because = f"rv {self.rv} is not in the server's window (or the server restarted)"
                continue
            except errors.Evicted as exc:
                _notice(f"evicted for lagging ({printable(exc)}); resuming after rv {self.rv}")
                continue
            except errors.Unavailable as exc:
                if self.epoch is None:  # never connected: a wrong address, or no server there
                    raise
                if self.connected:
                    _notice(f"connection lost ({printable(exc)}); reconnecting")
                    self.connected = False
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, BACKOFF_MAX)


def run(args: argparse.Namespace) -> int:
    from nvsentinel.node.client import DeviceApiClient

    try:
        with DeviceApiClient(args.address, timeout=args.timeout) as client:
            return Follower(client, args.output, args.bookmarks, args.since).run()
    except (errors.NvsentinelError, ValueError) as exc:
        print(f"error: {printable(exc, 1000)}", file=sys.stderr)
        return 1
