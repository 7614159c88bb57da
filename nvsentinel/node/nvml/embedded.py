"""The NVML provider inside the device API server (`--enable-nvml-provider`, SPEC §4).

Same code as the `nvml-provider` daemon (sidecar mode): the provider loop runs in one thread of the
server process and talks to the server through its own gRPC client, over the unix socket when there
is one, else loopback TCP. NVML is loaded and initialised before the thread starts, so a missing or
broken library fails the server's start with one clear line (exit 1) instead of a crash loop. The
device API server knows it only as a companion (`nvsentinel.node.api.server.Companion`): the
daemon wires the two together.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection
from typing import Any

from nvsentinel.node.nvml.library import NvmlLibraryError, NvmlLoader
from nvsentinel.node.nvml_settings import DEFAULT_HEALTH_POLL_INTERVAL, DEFAULT_NVML_CALL_TIMEOUT

__all__ = ["EmbeddedNvmlProvider"]

logger = logging.getLogger(__name__)

#: Seconds to wait for the provider thread at stop (one NVML wait is 5 s at most).
JOIN_TIMEOUT = 10.0


class EmbeddedNvmlProvider:
    """Load NVML, start the provider thread (`start`), stop it and release NVML (`stop`)."""

    def __init__(
        self,
        address: str,
        loader: NvmlLoader,
        *,
        ignored_xids: Collection[int] = (),
        node_name: str = "",
        wait_timeout_ms: int = 5000,
        xid_overrides: str = "",
        health_poll_interval: float = DEFAULT_HEALTH_POLL_INTERVAL,
        nvml_call_timeout: float = DEFAULT_NVML_CALL_TIMEOUT,
    ) -> None:
        """`xid_overrides`: the site's XID override file (the server's `--xid-overrides`), read at start."""
        self.address = address
        self.loader = loader
        self.ignored_xids = tuple(ignored_xids)
        self.node_name = node_name
        self.wait_timeout_ms = wait_timeout_ms
        self.xid_overrides = xid_overrides
        self.health_poll_interval = health_poll_interval
        self.nvml_call_timeout = nvml_call_timeout
        self.provider: Any = None
        self._client: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Blocking (NVML init may take a while): call through `asyncio.to_thread`.

        Raises RuntimeError with a one-line reason when NVML cannot be loaded or initialised.
        """
        from nvsentinel.node.client import DeviceApiClient
        from nvsentinel.node.nvml.provider import NvmlInitError, NvmlProvider
        from nvsentinel.xid import load_catalog

        try:
            catalog = load_catalog(self.xid_overrides or None)
        except Exception as exc:  # noqa: BLE001 - override file errors come in many types
            raise RuntimeError(f"--xid-overrides: {type(exc).__name__}: {exc}") from None
        try:
            library = self.loader.load()
        except NvmlLibraryError as exc:
            raise RuntimeError(f"--enable-nvml-provider: {exc}") from None
        self._client = DeviceApiClient(self.address, timeout=5.0)
        provider = NvmlProvider(self._client, wait_timeout_ms=self.wait_timeout_ms,
                                ignored_xids=self.ignored_xids, catalog=catalog, node_name=self.node_name,
                                resetter=self.loader.resetter(), health_poll_interval=self.health_poll_interval,
                                call_timeout=self.nvml_call_timeout)
        try:
            provider.init_nvml()
        except NvmlInitError as exc:
            provider.shutdown_nvml()
            self._client.close()
            self._client = None
            raise RuntimeError(f"--enable-nvml-provider: {self.loader.init_failure(library, exc)}") from None
        self.provider = provider
        self._thread = threading.Thread(target=self._run, name="nvml-provider", daemon=True)
        self._thread.start()
        resetter = provider.resetter.description if provider.resetter is not None else "disabled"
        logger.info("embedded nvml provider started", extra={"kv": {
            "library": library, "address": self._client.address, "gpus": len(provider.gpus),
            "ignored_xids": ",".join(map(str, self.ignored_xids)), "resetter": resetter}})

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
