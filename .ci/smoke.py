"""What a user of an installed shardsearch touches first, run with that installation's Python: every module imports,
and `shardsearch local` serves (health SERVING, a collection created, written, trained and searched), then stops on
SIGTERM. Usage: VENV/bin/python .ci/smoke.py (run from outside the source tree, so the installed copy is tested)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import signal
import subprocess
import sys
import tempfile
import time

PACKAGES = ("shardsearch",)
SERVERS = ("coordinator", "shard_server", "encoder_client")  # installed inside shardsearch, never at the top


def import_everything() -> int:
    count = 0
    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
                count += 1
    for server in SERVERS:
        importlib.import_module(f"shardsearch.{server}")
        if importlib.util.find_spec(server) is not None:
            raise SystemExit(f"smoke: the install put a top-level {server!r} package on the path; it belongs in "
                             f"shardsearch.{server}")
    return count


def launch(cli: str, echo: bool = True) -> tuple[subprocess.Popen[str], str]:
    """`cli local` with 2 shards on a free port, once it says ready: the launcher and the coordinator's address."""
    launcher = subprocess.Popen(
        [cli, "local", "--shards", "2", "--port", "0", "--data-dir", tempfile.mkdtemp(prefix="smoke-")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    address = ""
    assert launcher.stdout is not None
    for line in launcher.stdout:
        if echo:
            print("  |", line, end="")
        if line.startswith("coordinator"):
            address = line.split()[1]
        if line.startswith("ready"):
            return launcher, address
    raise SystemExit(f"shardsearch local exited with {launcher.wait()} before it was ready")


def serve_and_search() -> None:
    import grpc
    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shardsearch import codec
    from shardsearch.v1 import search_pb2, search_pb2_grpc

    launcher, address = launch(os.path.join(os.path.dirname(sys.executable), "shardsearch"))
    try:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING, health
            stub = search_pb2_grpc.SearchServiceStub(channel)
            stub.CreateCollection(search_pb2.CreateCollectionRequest(
                name="smoke", dim=16, metric=search_pb2.METRIC_L2,
                index=search_pb2.IndexOptions(train_threshold=1000)), timeout=30)
            vectors = np.random.default_rng(0).standard_normal((4000, 16)).astype(np.float32)
            stub.Upsert(search_pb2.UpsertRequest(collection="smoke", items=[
                search_pb2.Item(id=str(i), vector_f32=codec.pack(v)) for i, v in enumerate(vectors)]), timeout=60)
            deadline = time.monotonic() + 120
            while not all(s.trained and not s.training for s in stub.DescribeCollection(
                    search_pb2.DescribeCollectionRequest(name="smoke"), timeout=10).shards):
                assert time.monotonic() < deadline, "the shards did not train in 120 s"
                time.sleep(0.2)
            reply = stub.Search(search_pb2.SearchRequest(collection="smoke", vector_f32=codec.pack(vectors[7]), k=3),
                                timeout=10)
            assert reply.hits[0].id == "7", reply
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0, "shardsearch local did not stop cleanly on SIGTERM"
    finally:
        if launcher.poll() is None:
            launcher.kill()


if __name__ == "__main__":
    print(f"smoke: {import_everything()} modules import")
    serve_and_search()
    print("smoke: shardsearch local served, trained, searched and stopped")
