"""Process hygiene for servers started by a launcher: die with the parent, so nothing is orphaned; free ports."""

from __future__ import annotations

import ctypes
import os
import signal
import socket

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


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (a child binds it next; tests and the local launcher)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
