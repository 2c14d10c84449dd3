"""`shardsearch local` as scripts call it: prints endpoints when healthy, leaves no orphans when stopped, restarts
with its data, and supervises its children."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from shardsearch import codec
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


def start_launcher(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardsearch.tools.cli", "local", "--shards", "2", "--port", "0", "--data-dir", str(tmp_path),
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    address = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("coordinator"):
            address = line.split()[1]
        if line.startswith("ready"):
            return proc, address
    raise AssertionError(f"launcher exited with {proc.wait()} before it was ready")


def read_until(proc: subprocess.Popen[str], text: str, seen: list[str]) -> str:
    """Reads the launcher's output (into `seen`) until a line containing `text`; the pytest timeout bounds it."""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"launcher exited with {proc.wait()} without printing {text!r}:\n{''.join(seen)}")


def shard_pids(launcher: subprocess.Popen[str]) -> dict[str, int]:
    """The launcher's shard children by name (from their command lines)."""
    found = {}
    for pid in children_of(launcher.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"shardsearch.shard_server" in argv:
            found[argv[argv.index(b"--name") + 1].decode()] = pid
    return found


ITEMS = [f"item-{i}" for i in range(40)]


def write_items(address: str) -> np.ndarray:
    vectors = np.random.default_rng(5).standard_normal((len(ITEMS), 8)).astype(np.float32)
    with grpc.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        stub.CreateCollection(search_pb2.CreateCollectionRequest(name="kept", dim=8, metric=search_pb2.METRIC_L2))
        stub.Upsert(search_pb2.UpsertRequest(collection="kept", items=[
            search_pb2.Item(id=i, vector_f32=codec.pack(v), payload=i.encode()) for i, v in zip(ITEMS, vectors)
        ]), timeout=30)
    return vectors


def assert_items_served(address: str, vectors: np.ndarray) -> None:
    """Every acknowledged item is there: Get returns it as written and a search for it finds it first."""
    with grpc.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        got = stub.Get(search_pb2.GetRequest(collection="kept", ids=ITEMS), timeout=30)
        assert sorted(item.id for item in got.items) == sorted(ITEMS)
        for item in got.items:
            assert np.array_equal(codec.unpack(item.vector_f32, 8)[0], vectors[ITEMS.index(item.id)])
        answer = stub.BatchSearch(search_pb2.BatchSearchRequest(
            collection="kept", vectors_f32=codec.pack(vectors), k=1), timeout=30)
        assert [r.hits[0].id for r in answer.results] == ITEMS


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL of the process group"])
def test_a_local_cluster_with_a_data_dir_restarts_with_everything_it_acknowledged(tmp_path: Path, how: str) -> None:
    launcher, address = start_launcher(tmp_path)
    try:
        vectors = write_items(address)
        if how == "SIGINT":
            launcher.send_signal(signal.SIGINT)
            assert launcher.wait(timeout=30) == 0
        else:
            children = children_of(launcher.pid)
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and every child at once
            launcher.wait(timeout=10)
            wait_gone(children)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    again, address = start_launcher(tmp_path)  # new ephemeral ports, the same data
    try:
        assert_items_served(address, vectors)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)


def test_the_launcher_restarts_a_shard_that_died(tmp_path: Path) -> None:
    launcher, address = start_launcher(tmp_path)
    seen: list[str] = []
    try:
        vectors = write_items(address)
        victim = shard_pids(launcher)["shard-1"]
        port = json.loads((tmp_path / "shard-1.ports.json").read_text())["grpc"]
        os.kill(victim, signal.SIGKILL)
        assert "shard-1 exited with signal SIGKILL; restarting it on port" in read_until(launcher, "exited", seen)
        assert f"serving on 127.0.0.1:{port}" in read_until(launcher, "restarted", seen)
        assert not alive(victim)  # reaped, not a zombie
        assert shard_pids(launcher)["shard-1"] != victim
        assert_items_served(address, vectors)
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=30)


def test_the_launcher_gives_up_on_a_crash_loop_with_the_log_tail(tmp_path: Path) -> None:
    launcher, _ = start_launcher(tmp_path, "--max-restarts", "2")
    seen: list[str] = []
    try:
        children = children_of(launcher.pid)
        data = tmp_path / "shard-0-data"
        shutil.rmtree(data)
        data.write_text("not a directory")  # the shard cannot start any more
        os.kill(shard_pids(launcher)["shard-0"], signal.SIGKILL)
        assert launcher.wait(timeout=120) == 1
        assert launcher.stdout is not None
        output = "".join(seen) + launcher.stdout.read()
        assert "shard-0 exited with signal SIGKILL; restarting it" in output
        assert "giving up" in output and "shard-0-data" in output, output  # the shard's own error, from its log
        wait_gone(children)
    finally:
        if launcher.poll() is None:
            launcher.kill()


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
