"""Local ports for the processes the demo, the tests and the benchmark start.

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` comes from its ephemeral range, the
same range it draws the local ports of outgoing connections from. Freed and bound again a moment
later by a child process, it may meanwhile be the local end of some Kafka connection, and the
child fails with "address already in use". The ports chosen here lie below that range, where only
another listener can take them."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # clear of the well-known and most registered service ports


def ephemeral_low(path: Path = EPHEMERAL_RANGE_FILE) -> int:
    """The lowest port of the kernel's ephemeral range (32768, Linux's default, where unreadable)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``port`` on ``host`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """The first of ``count`` consecutive ports that are free on ``host``, all below the ephemeral
    range; RuntimeError if ``attempts`` random picks found none."""
    high = ephemeral_low() - count
    if high <= LOWEST:
        raise RuntimeError(f"no room for {count} ports between {LOWEST} and the ephemeral range")
    for _ in range(attempts):
        first = random.randrange(LOWEST, high)
        if all(bindable(first + n, host) for n in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found below {high + count} after {attempts} tries")
