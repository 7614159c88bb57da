"""Device API client side: a typed sync client and an informer (list + watch + local cache).

    >>> from nvsentinel.client import DeviceApiClient, GpuInformer
    >>> client = DeviceApiClient("unix:///var/run/device-api/device.sock")
    >>> rv, gpus = client.list_gpus()
    >>> with GpuInformer(client, on_update=lambda old, new: ...) as informer:
    ...     informer.wait_for_sync(10)
"""
from nvsentinel.client.client import DeviceApiClient, GpuEvent, WatchStream, default_address, error_from_rpc, parse_address
from nvsentinel.client.informer import GpuInformer

__all__ = ["DeviceApiClient", "GpuEvent", "GpuInformer", "WatchStream", "default_address", "error_from_rpc", "parse_address"]
