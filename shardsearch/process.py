"""Process hygiene for servers started by a launcher: die with the parent, so nothing is orphaned; free ports."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
from pathlib import Path

DIE_WITH_PARENT_ENV = "SHARDSEARCH_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent_if_asked() -> None:
    """If the launcher set SHARDSEARCH_DIE_WITH_PARENT=<its pid>, get SIGTERM when it dies (Linux only).

    Done in the child rather than in a preexec_fn: a preexec_fn forces a real fork(), whose gRPC fork handlers
    can abort the child before exec when the parent uses gRPC (grpc/grpc#43055).
    """
    parent = os.environ.get(DIE_WITH_PARENT_ENV)
    if not parent:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != int(parent):  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def exec_with_parent_death(argv: list[str]) -> None:
    """`python -m shardsearch.process PROGRAM ARGS...`: exec PROGRAM so that it dies with the launcher.

    For children that are not ours to edit (redis-server): the death signal set here survives exec.
    """
    die_with_parent_if_asked()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    import sys

    exec_with_parent_death(sys.argv[1:])


_handed_out: set[int] = set()
_FIRST_FIXED_PORT = 20000  # well clear of the registered services below it that a machine may run


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, for a child to bind next (tests and the local launcher).

    Taken below the kernel's ephemeral range when there is room: a port from that range (what bind to port 0
    gives) can be taken meanwhile as the source port of any outgoing connection or by another bind to 0, and the
    child then fails with "Address already in use" (seen in CI: replicas start on ports picked up front, while their
    peers already connect out). Below the range only an explicit bind can take it. Not handed out twice by one
    process."""
    low, _ = _ephemeral_range()
    candidates = [random.randrange(_FIRST_FIXED_PORT, low) for _ in range(64)] if low > _FIRST_FIXED_PORT + 1000 else []
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
