"""Addresses the platform's own listeners bind to."""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK = "127.0.0.1"
# torchrun's c10d rendezvous with its stores bound to one address (recsys_core.io.rendezvous,
# registered through the torchrun.handlers entry point).
RENDEZVOUS_BACKEND = "c10d-bound"


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback one (False if it does not resolve)."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except socket.gaierror:
        return False
