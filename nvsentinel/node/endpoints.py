"""What both ends of the node's Device API agree on besides the proto: where it listens by default
and the metadata a client reads to notice a server restart."""
from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_UNIX_SOCKET", "DEFAULT_GRPC_ADDRESS", "ADDRESS_ENV", "EPOCH_KEY", "SNAPSHOT_KEY",
           "LIST_FALLBACK_KEY"]

DEFAULT_UNIX_SOCKET: Final = "/var/run/device-api/device.sock"
#: Where a client looks for TCP when there is no unix socket. The server listens on TCP only when
#: told to (`--grpc-address`): the API is unauthenticated, so the unix socket is the default.
DEFAULT_GRPC_ADDRESS: Final = "127.0.0.1:50051"
#: Environment variable a client reads for the server's address.
ADDRESS_ENV: Final = "NVSENTINEL_DEVICE_API"
#: Initial-metadata key naming the store's incarnation. The store lives in memory, so a restarted
#: server counts RVs from 0 again; a client that sees a new epoch must relist instead of resuming.
EPOCH_KEY: Final = "nvsentinel-store-epoch"
#: Initial-metadata key of a fresh WatchGpus: "<N> <RV>", the N snapshot events (ADDED for every GPU)
#: that come before the live ones, and the RV they add up to. Reading N events of a fresh watch is
#: a list that never needs a message bigger than one GPU.
SNAPSHOT_KEY: Final = "nvsentinel-snapshot"
#: Trailing-metadata key on a ListGpus refused for its size or for the bytes of lists in flight
#: (RESOURCE_EXHAUSTED): list through a fresh watch instead.
LIST_FALLBACK_KEY: Final = "nvsentinel-list-fallback"
