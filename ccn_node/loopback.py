"""Free TCP ports on 127.0.0.1, for the benchmarks and tests that start local servers.

Benchmarks and tests only ever listen on the loopback address (never another one), and the
ports are chosen by the kernel so that parallel runs do not collide.
"""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all held open until all are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]
