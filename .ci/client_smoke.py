"""The client library alone, as `pip install shardsearch` installs it: none of the servers' dependencies are there,
and the README's quickstart runs against a cluster (started by the given `shardsearch` command of a full install).
Usage: CLIENT_VENV/bin/python .ci/client_smoke.py FULL_VENV/bin/shardsearch (run from outside the source tree)."""

from __future__ import annotations

import importlib.util
import signal
import sys

from smoke import launch

SERVER_ONLY = ("faiss", "tritonclient", "PIL", "redis", "prometheus_client", "tqdm", "grpc_health", "grpc_reflection")


def main(shardsearch: str) -> None:
    present = [name for name in SERVER_ONLY if importlib.util.find_spec(name) is not None]
    assert not present, f"a client-only install brought {present}"
    import numpy as np

    from shardsearch.client import Client, NotFound, match

    launcher, address = launch(shardsearch, echo=False)  # .ci/smoke.py, beside this file (no server imports)
    try:
        vectors = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
        with Client(address) as client:
            client.create_collection("photos", dim=16, metric="l2")
            client.upsert("photos", [f"p{i}" for i in range(500)], vectors,
                          fields=[{"kind": "cat" if i % 2 else "dog"} for i in range(500)])
            hits = client.search("photos", vectors[7], k=3)
            assert hits[0].id == "p7", hits
            assert all(int(h.id[1:]) % 2 for h in client.search("photos", vectors[8], k=5, filter=match("kind", "cat")))
            assert [item.id for item in client.get("photos", ["p1", "nope"])] == ["p1"]
            client.delete("photos", ["p7"])
            assert client.search("photos", vectors[7], k=1)[0].id != "p7"
            client.drop_collection("photos")
            try:
                client.describe("photos")
                raise AssertionError("a dropped collection is still described")
            except NotFound:
                pass
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    print("client smoke: the client alone (no server dependencies) ran the quickstart")


if __name__ == "__main__":
    main(sys.argv[1])
