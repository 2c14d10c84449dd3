"""`shardsearch local` as scripts call it: prints endpoints when healthy, and leaves no orphans when stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from shardsearch.v1 import search_pb2, search_pb2_grpc


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        time.sleep(0.1)


def start_launcher(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardsearch.cli", "local", "--shards", "2", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    address = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("coordinator"):
            address = line.split()[1]
        if line.startswith("ready"):
            return proc, address
    raise AssertionError(f"launcher exited with {proc.wait()} before it was ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_launcher_serves_then_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    launcher, address = start_launcher(tmp_path)
    try:
        children = children_of(launcher.pid)
        assert len(children) == 3  # two shards and a coordinator
        with grpc.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            stub.CreateCollection(search_pb2.CreateCollectionRequest(name="l", dim=2, metric=search_pb2.METRIC_L2))
            assert [c.name for c in stub.ListCollections(search_pb2.ListCollectionsRequest()).collections] == ["l"]
        os.kill(launcher.pid, sig)
        launcher.wait(timeout=20)
        wait_gone(children)
    finally:
        if launcher.poll() is None:
            launcher.kill()
