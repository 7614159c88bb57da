"""What both ends of the node's Device API agree on besides the proto: where it listens by default
and the metadata a client reads to notice a server restart."""
from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_UNIX_SOCKET", "DEFAULT_GRPC_ADDRESS", "ADDRESS_ENV", "EPOCH_KEY"]

DEFAULT_UNIX_SOCKET: Final = "/var/run/device-api/device.sock"
#: The API is unauthenticated: loopback only by default (SPEC §4).
DEFAULT_GRPC_ADDRESS: Final = "127.0.0.1:50051"
#: Environment variable a client reads for the server's address.
ADDRESS_ENV: Final = "NVSENTINEL_DEVICE_API"
#: Initial-metadata key naming the store's incarnation. The store lives in memory, so a restarted
#: server counts RVs from 0 again; a client that sees a new epoch must relist instead of resuming.
EPOCH_KEY: Final = "nvsentinel-store-epoch"
