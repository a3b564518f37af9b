"""torchrun's c10d rendezvous, with every TCP store it hosts bound to one address.

torch's TCPStore server listens on all interfaces whatever host it is given, and torchrun's agent
hosts two of them (the rendezvous store, and the store its workers share). On the embedded default
that would open two unauthenticated ports to the network. This handler is torchrun's own c10d
rendezvous; it only hands each store a socket already bound to the address the store is reached at:
the rendezvous endpoint's host, and the node's ``--local-addr``. torchrun finds it through the
``torchrun.handlers`` entry point as ``--rdzv-backend=c10d-bound``. Only torchrun imports this
module: importing torch's rendezvous package loads the entry points, this one included.
"""

from __future__ import annotations

import errno
import socket
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import DEFAULT_PORT, C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler, RendezvousTimeout
from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname, parse_rendezvous_endpoint

from recsys_core.io.network import RENDEZVOUS_BACKEND


def bound_store(host: str, port: int, timeout: timedelta) -> dist.TCPStore:
    """A TCPStore server listening on ``host`` only (port 0: one the system picks)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(socket.SOMAXCONN)
        bound_port = listener.getsockname()[1]
        # The store takes over the descriptor; our socket object must not close it.
        return dist.TCPStore(
            host, bound_port, is_master=True, multi_tenant=True, timeout=timeout, master_listen_fd=listener.detach()
        )
    finally:
        listener.close()


def _rendezvous_store(params: RendezvousParameters) -> dist.TCPStore:
    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=DEFAULT_PORT)
    timeout = timedelta(seconds=params.get_as_int("read_timeout", 60) or 60)
    is_host = params.get_as_bool("is_host")
    if is_host is None:
        is_host = _matches_machine_hostname(host)
    if is_host:
        try:
            return bound_store(host, port, timeout)
        except OSError as error:
            # Another node on this machine (two nodes on loopback) hosts it already: join it.
            if error.errno != errno.EADDRINUSE or params.get_as_bool("is_host"):
                raise
    return dist.TCPStore(host, port, is_master=False, multi_tenant=True, timeout=timeout)


class BoundRendezvousHandler(DynamicRendezvousHandler):
    """The store the node's workers share listens on the address the node advertises to them."""

    def _create_tcp_store_server(self, master_addr: str, master_port: int) -> dist.TCPStore:
        return bound_store(master_addr, master_port, timedelta(seconds=60))

    def get_backend(self) -> str:
        return RENDEZVOUS_BACKEND  # torchrun checks that the handler is the backend it asked for


def create_bound_handler(params: RendezvousParameters) -> RendezvousHandler:
    """The handler torchrun's ``c10d`` backend builds, taking the same ``--rdzv-conf`` keys."""

    def seconds(key: str) -> timedelta | None:
        value = params.get_as_int(f"{key}_timeout")
        return None if value is None else timedelta(seconds=value)

    store = _rendezvous_store(params)
    return BoundRendezvousHandler.from_backend(
        params.run_id,
        store,
        C10dRendezvousBackend(store, params.run_id),
        params.min_nodes,
        params.max_nodes,
        params.local_addr,
        RendezvousTimeout(seconds("join"), seconds("last_call"), seconds("close"), seconds("heartbeat")),
        keep_alive_interval=params.get_as_int("keep_alive_interval", 5) or 5,
        keep_alive_max_attempt=params.get_as_int("keep_alive_max_attempt", 3) or 3,
    )


def handler_factory():
    """The ``torchrun.handlers`` entry point: torchrun calls it and registers what it returns."""
    return create_bound_handler
