"""Who is calling: a unix-socket client by its kernel credentials, a TCP client by its address.

Per-client limits (SPEC §10: no client holds the node API hostage) need to tell clients apart, and
gRPC cannot on a unix socket: it does not hand a connection's socket to Python, and it names every
unix client's peer just "unix:". So the server owns its public unix socket itself. `PeerRelay`
accepts each connection, reads the client's credentials from the kernel (SO_PEERCRED: uid and pid,
which the client cannot forge), and relays the bytes to the gRPC server's private listener over a
connection of its own, bound to an address the kernel picks (autobind: a unique abstract name).
gRPC reports that name as the call's peer ("unix-abstract:<name>"), and `PeerRegistry.identify`
maps it back to the client's credentials. A connection made to the private listener directly,
around the relay, has no registered name; the servicer refuses its calls.

The relay is a pair of asyncio protocols per connection with flow control both ways (a side whose
write buffer fills pauses reading on the other), so a slow client cannot make it buffer without
bound. It also caps connections per client process (`max_connections_per_peer`): each one costs
file descriptors and gRPC transport memory.

The kernel gives pid 0 for a client in a pid namespace the server cannot see (another container
of the pod, unless the pod shares its process namespace; another pod). Such a client is known by its
uid and gid ("uid=0 gid=65523 pid=?"), which it cannot change without CAP_SETUID/CAP_SETGID: the
chart runs each client container with a group of its own (`nvsentinel.clientGroups`), so the
publisher, the NVML provider, the kernel-log monitor and the remediation agent each get their own
share, and both caps apply. (Naming each such connection a client of its own would let one container
take every watch slot by opening more connections; sharing the pod's process namespace instead would
let containers read each other's files through /proc.)
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import uuid
from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = ["PeerRegistry", "PeerRelay", "private_address", "tcp_peer"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def private_address() -> tuple[str, str]:
    """(gRPC listen address, socket address) of a fresh private abstract-namespace listener."""
    name = f"nvsentinel-device-api-{uuid.uuid4().hex}"
    return f"unix-abstract:{name}", "\0" + name


def tcp_peer(grpc_peer: str) -> str | None:
    """'ipv4:10.0.0.7' for gRPC's 'ipv4:10.0.0.7:43122' (the port changes with every connection,
    the host does not); None for a peer that is not TCP."""
    scheme, _, rest = grpc_peer.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return f"{scheme}:{rest.rpartition(':')[0] or rest}"
    return None


class PeerRegistry:
    """Maps the names of the relay's connections to the credentials of the clients behind them."""

    def __init__(self) -> None:
        self._relayed: dict[str, str] = {}

    def add(self, name: str, peer: str) -> None:
        self._relayed[name] = peer

    def remove(self, name: str) -> None:
        self._relayed.pop(name, None)

    def identify(self, grpc_peer: str) -> str | None:
        """The client behind a call (`context.peer()`): 'uid=0 pid=4242' for a unix-socket client,
        'ipv4:10.0.0.7' for a TCP one; None for a unix connection that did not come through the
        relay (refuse it)."""
        tcp = tcp_peer(grpc_peer)
        if tcp is not None:
            return tcp
        scheme, _, rest = grpc_peer.partition(":")
        if scheme.startswith("unix"):
            return self._relayed.get(rest.lstrip("@\0"))
        return grpc_peer or None


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it reads, the other end writes."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self._on_lost = on_lost
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.other is not None and self.other.eof:  # both ways done: the connection is over
            return False  # asyncio closes this transport; connection_lost closes the other
        other = self.other.transport if self.other is not None else None
        if other is not None and not other.is_closing() and other.can_write_eof():
            other.write_eof()
        return True  # half-close: keep sending the other way

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None and not self.other.transport.is_closing():
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()  # after writing what it still buffers
        self._on_lost()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Connection:
    """A client connection and its relayed twin, counted against the client's limit until both close."""

    def __init__(self, relay: PeerRelay, peer: str, client: _Side) -> None:
        self.relay = relay
        self.peer = peer
        self.name = ""
        self.client = client
        self.upstream: _Side | None = None
        self._done = False

    def _lost(self) -> None:
        if not self._done:
            self._done = True
            for side in (self.client, self.upstream):
                if side is not None and side.transport is not None:
                    side.transport.close()
            self.relay._forget(self)

    def abort(self) -> None:
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class PeerRelay:
    """The public unix socket: accept, identify, relay to `target` (see the module docstring)."""

    def __init__(self, path: str, mode: int, target: str, registry: PeerRegistry, *,
                 max_connections_per_peer: int, on_refused: Callable[[str], None] = lambda _r: None) -> None:
        self.path = path
        self.mode = mode
        self.target = target
        self.registry = registry
        self.max_connections_per_peer = max_connections_per_peer
        self._on_refused = on_refused
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._per_peer: dict[str, int] = {}
        self._warned: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    def connections(self, peer: str) -> int:
        return self._per_peer.get(peer, 0)

    async def start(self) -> None:
        """Bind the socket with its mode from the start (umask), then chmod to the exact mode."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            old = os.umask(0o777 & ~self.mode)
            try:
                sock.bind(self.path)
                bound = True
            finally:
                os.umask(old)
            os.chmod(self.path, self.mode)
            sock.listen(256)
            sock.setblocking(False)
            self._server = await asyncio.get_running_loop().create_unix_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            raise

    def _accept(self) -> asyncio.Protocol:
        return _Accepted(self)

    def _admit(self, protocol: _Accepted, transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        try:
            pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        except OSError:
            transport.abort()
            return
        # pid 0: a pid namespace the server cannot see: known by uid and gid (see above)
        peer = f"uid={uid} pid={pid}" if pid > 0 else f"uid={uid} gid={gid} pid=?"
        if self._per_peer.get(peer, 0) >= self.max_connections_per_peer:
            self._on_refused("connections_per_peer")
            if peer not in self._warned:  # once per burst, not once per connection attempt
                self._warned.add(peer)
                logger.warning("too many connections from one client: closing the new ones",
                               extra={"kv": {"peer": peer, "limit": self.max_connections_per_peer}})
            transport.abort()
            return
        conn = _Connection(self, peer, protocol)
        protocol.connection = conn
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._connections.add(conn)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            up.setblocking(False)
            up.bind("")  # autobind: the kernel picks a unique abstract name; gRPC shows it as the peer
            conn.name = up.getsockname().lstrip(b"\0").decode("ascii", "replace")
            await loop.sock_connect(up, self.target)
            if conn._done:  # the client left while we connected
                up.close()
                return
            self.registry.add(conn.name, conn.peer)  # before any byte of the client reaches gRPC
            _, upstream = await loop.create_unix_connection(lambda: _Side(conn._lost), sock=up)
        except (OSError, asyncio.CancelledError) as exc:
            up.close()
            if not isinstance(exc, asyncio.CancelledError):
                logger.warning("cannot relay a connection", extra={"kv": {"peer": conn.peer, "error": str(exc)}})
            conn._lost()
            return
        conn.upstream = upstream
        upstream.other, conn.client.other = conn.client, upstream
        if conn._done:
            upstream.close()
            return
        assert conn.client.transport is not None
        conn.client.transport.resume_reading()

    def _forget(self, conn: _Connection) -> None:
        if conn.name:
            self.registry.remove(conn.name)
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        left = self._per_peer.get(conn.peer, 1) - 1
        if left > 0:
            self._per_peer[conn.peer] = left
        else:
            self._per_peer.pop(conn.peer, None)
            self._warned.discard(conn.peer)

    def stop_accepting(self) -> None:
        """Refuse new connections; relayed ones keep flowing (in-flight calls drain through them)."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        self.stop_accepting()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._connections):
            conn.abort()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run


class _Accepted(_Side):
    """The client's end: holds its bytes until the relayed connection is up."""

    def __init__(self, relay: PeerRelay) -> None:
        super().__init__(self._lost)
        self.relay = relay
        self.connection: _Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]
        self.relay._admit(self, transport)  # type: ignore[arg-type]

    def _lost(self) -> None:
        if self.connection is not None:
            self.connection._lost()
