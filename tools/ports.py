"""Free ports for the processes that tests, benchmarks and the chaos run start.

A port the kernel picks (binding port 0) comes from its ephemeral range, the
range every outbound connection of every process draws from too: between the
pick and the bind, or before a killed part binds its port again, a client's
connection may take it. That happened under a loaded CI: the chaos run's
gateway found its port in use. So ports are picked below the ephemeral range
(and above the fixed ports of the services here: MariaDB, NATS, Milvus'
19530), where no outbound connection lands; what is listening there already
is skipped.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOW = 20000
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
TRIES = 200


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outbound ports (Linux's default elsewhere)."""
    try:
        low, high = (int(v) for v in EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range where it
    leaves room (else one the kernel picks)."""
    low, _ = ephemeral_range()
    if low - LOW >= 1000:
        pick = random.SystemRandom()
        for _ in range(TRIES):
            port = pick.randrange(LOW, low)
            if bindable(port, host):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
