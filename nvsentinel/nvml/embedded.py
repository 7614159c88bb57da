"""The NVML provider inside the device API server (`--enable-nvml-provider`, SPEC §4).

Same code as the `nvml-provider` daemon (sidecar mode): the provider loop runs in one thread of the
server process and talks to the server through its own gRPC client, over the unix socket when there
is one, else loopback TCP. NVML is loaded and initialised before the thread starts, so a missing or
broken library fails the server's start with one clear line (exit 1) instead of a crash loop.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection
from typing import Any

from nvsentinel.nvml.reset import DEFAULT_RESET_COMMAND

__all__ = ["EmbeddedNvmlProvider", "server_address"]

logger = logging.getLogger(__name__)

#: Seconds to wait for the provider thread at stop (one NVML wait is 5 s at most).
JOIN_TIMEOUT = 10.0


def server_address(unix_socket: str, grpc_address: str, tcp_port: int | None) -> str:
    """Where the embedded provider reaches its own server: the unix socket, else TCP on loopback."""
    if unix_socket:
        return f"unix://{unix_socket}"
    host = grpc_address.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{tcp_port}"


class EmbeddedNvmlProvider:
    """Load NVML, start the provider thread (`start`), stop it and release NVML (`stop`)."""

    def __init__(
        self,
        address: str,
        *,
        driver_root: str,
        ignored_xids: Collection[int] = (),
        node_name: str = "",
        fake: bool = False,
        fake_topology: str = "",
        fake_control: str = "",
        wait_timeout_ms: int = 5000,
        reset_command: str = DEFAULT_RESET_COMMAND,
    ) -> None:
        self.address = address
        self.driver_root = driver_root
        self.ignored_xids = tuple(ignored_xids)
        self.node_name = node_name
        self.fake = fake
        self.fake_topology = fake_topology
        self.fake_control = fake_control
        self.wait_timeout_ms = wait_timeout_ms
        self.reset_command = reset_command
        self.provider: Any = None
        self._client: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Blocking (NVML init may take a while): call through `asyncio.to_thread`.

        Raises RuntimeError with a one-line reason when NVML cannot be loaded or initialised.
        """
        from nvsentinel.client import DeviceApiClient
        from nvsentinel.nvml.library import NvmlLibraryError, load_library
        from nvsentinel.nvml.provider import NvmlInitError, NvmlProvider

        try:
            library = load_library(self.driver_root, fake=self.fake, fake_topology=self.fake_topology,
                                   fake_control=self.fake_control)
        except NvmlLibraryError as exc:
            raise RuntimeError(f"--enable-nvml-provider: {exc}") from None
        self._client = DeviceApiClient(self.address, timeout=5.0)
        provider = NvmlProvider(self._client, wait_timeout_ms=self.wait_timeout_ms,
                                ignored_xids=self.ignored_xids, node_name=self.node_name,
                                reset_command=self.reset_command)
        try:
            provider.init_nvml()
        except NvmlInitError as exc:
            provider.shutdown_nvml()
            self._client.close()
            self._client = None
            hint = ""
            if library == "system-default":
                hint = (f"; no libnvidia-ml.so.1 under --nvml-driver-root {self.driver_root!r} nor on the "
                        "system library path (is the NVIDIA driver installed or mounted? --fake-nvml "
                        "selects the fake for tests)")
            raise RuntimeError(f"--enable-nvml-provider: {exc}{hint}") from None
        self.provider = provider
        self._thread = threading.Thread(target=self._run, name="nvml-provider", daemon=True)
        self._thread.start()
        logger.info("embedded nvml provider started", extra={"kv": {
            "library": library, "address": self._client.address, "gpus": len(provider.gpus),
            "ignored_xids": ",".join(map(str, self.ignored_xids)), "reset_command": self.reset_command}})

    def _run(self) -> None:
        try:
            self.provider.run()
        except Exception:  # noqa: BLE001 - logged; the server keeps serving other writers
            logger.exception("embedded nvml provider crashed")

    @property
    def ready(self) -> bool:
        return self.provider is not None and self.provider.ready

    def stop(self) -> None:
        """Blocking: stop the loop, wait for it, release NVML and the client. Safe to call twice."""
        if self.provider is not None:
            self.provider.stop()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("embedded nvml provider did not stop in time", extra={"kv": {}})
                return  # leave NVML to the daemon thread; the process is exiting
            self._thread = None
            logger.info("embedded nvml provider stopped", extra={"kv": {}})
        if self.provider is not None:
            self.provider.shutdown_nvml()
            self.provider = None
        if self._client is not None:
            self._client.close()
            self._client = None

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)
