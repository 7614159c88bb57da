from __future__ import annotations

import pytest
from apiserver import ThreadServer, temp_socket_dir, make_settings

from nvsentinel.node.client import DeviceApiClient


@pytest.fixture
def sock_dir():
    with temp_socket_dir() as d:
        yield d


@pytest.fixture
def make_server(sock_dir):
    servers = []

    def make(**overrides) -> ThreadServer:
        server = ThreadServer(make_settings(sock_dir, **overrides)).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture(params=["tcp", "unix"])
def client(request, server):
    c = DeviceApiClient(getattr(server, request.param), timeout=10)
    yield c
    c.close()
