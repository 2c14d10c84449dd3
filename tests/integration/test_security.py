"""A secured cluster: TLS everywhere, mutual TLS and a token from coordinator to shards, a client token at the front.

Real processes and real certificates (a throwaway CA from tests.pki). Tokens are random per run, so finding one in a
log or an error message can only mean it leaked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shardsearch import codec, security
from shardsearch.client import AsyncClient
from shardsearch.tools import cli
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import running_cluster
from tests.pki import Pki, make_pki

DIM = 8
CLIENT_TOKEN = f"client-{secrets.token_hex(16)}"
OLD_CLIENT_TOKEN = f"old-{secrets.token_hex(16)}"
SHARD_TOKEN = f"shard-{secrets.token_hex(16)}"
READ_TOKEN = f"read-{secrets.token_hex(16)}"
WRITE_TOKEN = f"write-{secrets.token_hex(16)}"
SECRETS = (CLIENT_TOKEN, OLD_CLIENT_TOKEN, SHARD_TOKEN, READ_TOKEN, WRITE_TOKEN)


@dataclass
class Secured:
    cluster: LocalCluster
    pki: Pki
    files: Path

    def token_file(self, name: str, token: str) -> str:
        path = self.files / name
        path.write_text(f"{token}\n")
        return str(path)

    def client(self, token: str | None = None, **tls: Any) -> grpc.aio.Channel:
        """A channel to the coordinator through the same factory the tools use (TLS trusting the test CA)."""
        token_file = self.token_file("client-token", token) if token else ""
        return security.client_channel_factory(ca_file=str(self.pki.ca), token_file=token_file, **tls)(
            self.cluster.address
        )

    def shard(
        self, token: str | None = None, cert: bool = True, foreign: bool = False, index: int = 0
    ) -> grpc.aio.Channel:
        """A direct channel to a shard process (shard-0-0 by default), with the coordinator's client certificate
        (or another CA's, or none)."""
        pair = self.pki.foreign_client if foreign else self.pki.client
        return security.client_channel_factory(
            ca_file=str(self.pki.ca), cert_file=str(pair.cert) if cert else "", key_file=str(pair.key) if cert else "",
            token_file=self.token_file("shard-token", token) if token else "",
        )(self.cluster.shard_procs[index].address)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    pki = make_pki(root / "pki")
    # Two bare tokens (admin: a rotation under way), and one each with the roles read and write.
    (root / "client-tokens").write_text(
        f"\n{OLD_CLIENT_TOKEN}\n  {CLIENT_TOKEN}  \n{READ_TOKEN} read\n{WRITE_TOKEN}   write\n")
    (root / "shard-tokens").write_text(f"{SHARD_TOKEN}\n")
    server_tls = ["--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key)]
    shard_args = [
        *server_tls, "--tls-client-ca-file", str(pki.ca), "--auth-token-file", str(root / "shard-tokens"),
        # Replicas catch up from each other over mutual TLS with the shard token too.
        "--peer-tls-ca-file", str(pki.ca), "--peer-tls-cert-file", str(pki.server.cert),
        "--peer-tls-key-file", str(pki.server.key), "--peer-tls-server-name", "localhost",
        "--peer-token-file", str(root / "shard-tokens"),
    ]
    coordinator_args = [
        *server_tls, "--auth-token-file", str(root / "client-tokens"),
        "--shard-tls-ca-file", str(pki.ca), "--shard-tls-cert-file", str(pki.client.cert),
        "--shard-tls-key-file", str(pki.client.key), "--shard-tls-server-name", "localhost",
        "--shard-token-file", str(root / "shard-tokens"),
    ]
    probe = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes())
    with running_cluster(request, shards=2, replicas=2, run_dir=root / "run", durable=False, shard_args=shard_args,
                         coordinator_args=coordinator_args, probe_credentials=probe) as cluster:
        yield Secured(cluster, pki, root)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert not any(secret in (err.value.details() or "") for secret in SECRETS)
    return err.value


async def test_a_client_with_the_ca_and_a_token_can_write_and_search(secured: Secured) -> None:
    vectors = np.random.default_rng(0).standard_normal((200, DIM)).astype(np.float32)
    async with secured.client(CLIENT_TOKEN) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        await stub.CreateCollection(
            search_pb2.CreateCollectionRequest(name="sec", dim=DIM, metric=search_pb2.METRIC_L2), timeout=10
        )
        await stub.Upsert(search_pb2.UpsertRequest(collection="sec", items=[
            search_pb2.Item(id=f"id{i}", vector_f32=codec.pack(v)) for i, v in enumerate(vectors)
        ]), timeout=10)
        query = search_pb2.SearchRequest(collection="sec", vector_f32=codec.pack(vectors[7]), k=3, request_id="q")
        reply = await stub.Search(query, timeout=10)
        assert reply.hits[0].id == "id7" and not reply.partial
        stream = stub.StreamSearch()
        await stream.write(query)
        streamed = await stream.read()
        await stream.done_writing()
        assert streamed.request_id == "q" and streamed.response.hits[0].id == "id7"


async def test_each_token_may_do_what_its_role_allows_and_no_more(secured: Secured) -> None:
    vectors = np.random.default_rng(2).standard_normal((10, DIM)).astype(np.float32)
    items = [search_pb2.Item(id=f"r{i}", vector_f32=codec.pack(v)) for i, v in enumerate(vectors)]
    query = search_pb2.SearchRequest(collection="roles", vector_f32=codec.pack(vectors[0]), k=1)
    async with secured.client(CLIENT_TOKEN) as channel:  # admin
        await search_pb2_grpc.SearchServiceStub(channel).CreateCollection(
            search_pb2.CreateCollectionRequest(name="roles", dim=DIM, metric=search_pb2.METRIC_L2), timeout=10)
    async with secured.client(WRITE_TOKEN) as channel:
        stub, admin = search_pb2_grpc.SearchServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)
        await stub.Upsert(search_pb2.UpsertRequest(collection="roles", items=items), timeout=10)
        assert (await stub.Search(query, timeout=10)).hits[0].id == "r0"
        denied = [
            stub.DropCollection(search_pb2.DropCollectionRequest(name="roles"), timeout=5),
            stub.CreateCollection(search_pb2.CreateCollectionRequest(name="x", dim=DIM), timeout=5),
            admin.AddShard(admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(
                name="evil", addresses=["127.0.0.1:1"])), timeout=5),
            admin.RemoveShard(admin_pb2.RemoveShardRequest(name="shard-0"), timeout=5),
            admin.Retrain(admin_pb2.RetrainRequest(collection="roles"), timeout=5),
        ]
        for call in denied:
            err = await refused(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "needs a token with role 'admin'" in \
                err.details() and "role 'write'" in err.details()
    async with secured.client(READ_TOKEN) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        assert (await stub.Search(query, timeout=10)).hits[0].id == "r0"
        assert len((await stub.Get(search_pb2.GetRequest(collection="roles", ids=["r1"]), timeout=10)).items) == 1
        await stub.ListIds(search_pb2.ListIdsRequest(collection="roles"), timeout=10)
        await stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name="roles"), timeout=10)
        for call in (stub.Upsert(search_pb2.UpsertRequest(collection="roles", items=items[:1]), timeout=5),
                     stub.Delete(search_pb2.DeleteRequest(collection="roles", ids=["r1"]), timeout=5)):
            err = await refused(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "needs a token with role 'write'" in err.details()
        err = await refused(stub.DropCollection(search_pb2.DropCollectionRequest(name="roles"), timeout=5))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        stream = stub.StreamSearch()  # a read: streams are searches too
        await stream.write(query)
        assert (await stream.read()).response.hits[0].id == "r0"
        await stream.done_writing()
    async with secured.client(READ_TOKEN) as channel:
        assert len((await search_pb2_grpc.SearchServiceStub(channel).Get(
            search_pb2.GetRequest(collection="roles", ids=["r1"]), timeout=10)).items) == 1  # the delete never ran


def test_a_coordinator_never_sends_its_shard_token_to_a_shard_it_cannot_verify(tmp_path: Path) -> None:
    """Plaintext to the shards with a shard token: AddShard would hand the token (and a share of every collection)
    to any address a caller names, so it is refused; shards listed in the flags still work."""
    tokens = tmp_path / "shard-tokens"
    tokens.write_text(f"{SHARD_TOKEN}\n")
    with LocalCluster(shards=1, durable=False, shard_args=["--auth-token-file", str(tokens)],
                      coordinator_args=["--shard-token-file", str(tokens)]) as cluster:
        with grpc.insecure_channel(cluster.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                admin.AddShard(admin_pb2.AddShardRequest(shard=admin_pb2.ShardSpec(
                    name="shard-9", addresses=["127.0.0.1:1"])), timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "shard_tls_ca_file" in err.value.details() and SHARD_TOKEN not in err.value.details()
            assert len(admin.GetTopology(admin_pb2.GetTopologyRequest(), timeout=10).shards) == 1
            search_pb2_grpc.SearchServiceStub(channel).ListCollections(search_pb2.ListCollectionsRequest(), timeout=10)


@pytest.fixture(scope="module")
def bench_collection(secured: Secured) -> str:
    """A collection of its own for the load generator's tests (each passes alone)."""
    vectors = np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32)

    async def make() -> None:
        async with secured.client(CLIENT_TOKEN) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            await stub.CreateCollection(
                search_pb2.CreateCollectionRequest(name="sec-bench", dim=DIM, metric=search_pb2.METRIC_L2), timeout=10)
            await stub.Upsert(search_pb2.UpsertRequest(collection="sec-bench", items=[
                search_pb2.Item(id=f"id{i}", vector_f32=codec.pack(v)) for i, v in enumerate(vectors)]), timeout=10)

    asyncio.run(make())
    return "sec-bench"


@pytest.mark.parametrize("call", ["unary", "stream"])
def test_the_load_generator_drives_a_secured_coordinator(secured: Secured, bench_collection: str, call: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = secured.files / f"bench-{call}.json"
    flags = ["bench", "--address", secured.cluster.address, "--collection", bench_collection, "--call", call,
             "--requests", "40",
             "--concurrency", "4", "--quiet", "--json", str(out), "--tls-ca-file", str(secured.pki.ca),
             "--tls-server-name", "localhost"]
    cli.main([*flags, "--token-file", secured.token_file("bench-token", CLIENT_TOKEN)])
    assert json.loads(out.read_text())["answered"] == 40
    with pytest.raises(SystemExit) as exit_:  # without the token it cannot even read the collection's dimension
        cli.main(flags)
    assert exit_.value.code == 2 and f"UNAUTHENTICATED: {security.MISSING_CREDENTIALS}" in capsys.readouterr().err


def test_the_admin_command_and_the_async_clients_channel_carry_tls_and_the_token(
        secured: Secured, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["admin", "--coordinator", secured.cluster.address, "--tls-ca-file", str(secured.pki.ca),
             "--tls-server-name", "localhost"]
    cli.main([*flags, "--token-file", secured.token_file("admin-token", CLIENT_TOKEN), "topology"])
    assert json.loads(capsys.readouterr().out)["shards"]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*flags, "topology"])
    assert exit_.value.code == 1 and "UNAUTHENTICATED" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # settings that cannot work: named, exit 2
        cli.main(["admin", "--coordinator", secured.cluster.address, "--tls-server-name", "localhost", "topology"])
    assert exit_.value.code == 2 and "a TLS server name needs TLS" in capsys.readouterr().err

    async def raw() -> None:  # a stub the client does not wrap, on its channel: the token goes along
        async with AsyncClient(secured.cluster.address, ca_file=str(secured.pki.ca), server_name="localhost",
                               token=CLIENT_TOKEN) as client:
            topology = await admin_pb2_grpc.AdminServiceStub(client.channel).GetTopology(
                admin_pb2.GetTopologyRequest(), timeout=10)
            assert topology.shards
            await client.list_collections()  # and its own calls

    asyncio.run(raw())


async def test_no_token_or_a_wrong_one_is_unauthenticated(secured: Secured) -> None:
    request = search_pb2.ListCollectionsRequest()
    for token, message in ((None, security.MISSING_CREDENTIALS), ("not-the-token", security.INVALID_TOKEN),
                           (SHARD_TOKEN, security.INVALID_TOKEN)):
        async with secured.client(token) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            err = await refused(stub.ListCollections(request, timeout=5))
            assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)
        assert stream_refusal(secured, token) == (grpc.StatusCode.UNAUTHENTICATED, message)


def stream_refusal(secured: Secured, token: str | None) -> tuple[grpc.StatusCode, str]:
    """StreamSearch, refused as it opens. With the blocking client: grpc.aio's can report its own INTERNAL instead when
    the refusal lands while its first write is still being sent (a client-side race)."""
    credentials = grpc.ssl_channel_credentials(secured.pki.ca.read_bytes())
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    request = search_pb2.SearchRequest(collection="sec", vector_f32=codec.pack(np.zeros(DIM)), k=1)
    with grpc.secure_channel(secured.cluster.address, credentials) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(search_pb2_grpc.SearchServiceStub(channel).StreamSearch(iter([request]), metadata=metadata, timeout=5))
    assert not any(secret in err.value.details() for secret in SECRETS)
    return err.value.code(), err.value.details()


async def test_plaintext_is_refused(secured: Secured) -> None:
    async with grpc.aio.insecure_channel(secured.cluster.address) as channel:
        err = await refused(search_pb2_grpc.SearchServiceStub(channel).ListCollections(
            search_pb2.ListCollectionsRequest(), timeout=5, metadata=(("authorization", f"Bearer {CLIENT_TOKEN}"),)))
        assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_and_reflection_need_no_token(secured: Secured) -> None:
    check = health_pb2.HealthCheckRequest(service="shardsearch.v1.SearchService")
    async with secured.client(server_name="localhost") as channel:
        assert (await health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)).status == \
            health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        services = [s.name async for reply in listing for s in reply.list_services_response.service]
        assert "shardsearch.v1.SearchService" in services
    async with secured.shard() as channel:  # a shard: mutual TLS still applies, the token does not
        assert (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)).status == \
            health_pb2.HealthCheckResponse.SERVING


async def test_shards_accept_only_the_coordinators_credentials(secured: Secured) -> None:
    request = shard_pb2.ShardListCollectionsRequest()
    for token in (None, CLIENT_TOKEN):
        async with secured.shard(token) as channel:
            err = await refused(shard_pb2_grpc.ShardServiceStub(channel).ListCollections(request, timeout=5))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    for kwargs in ({"cert": False}, {"foreign": True}):  # the TLS handshake fails: no call reaches the shard
        async with secured.shard(SHARD_TOKEN, **kwargs) as channel:
            err = await refused(shard_pb2_grpc.ShardServiceStub(channel).ListCollections(request, timeout=5))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
    async with secured.shard(SHARD_TOKEN) as channel:
        await shard_pb2_grpc.ShardServiceStub(channel).ListCollections(request, timeout=5)


async def test_a_restarted_replica_catches_up_from_its_peer_over_mutual_tls(
    secured: Secured, bench_collection: str
) -> None:
    ids = [f"cu{i}" for i in range(100)]
    vectors = np.random.default_rng(4).standard_normal((100, DIM)).astype(np.float32)
    async with secured.client(CLIENT_TOKEN) as channel:
        await search_pb2_grpc.SearchServiceStub(channel).Upsert(search_pb2.UpsertRequest(
            collection=bench_collection,
            items=[search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(ids, vectors)]), timeout=10)
    async with secured.shard(SHARD_TOKEN, index=1) as channel:  # shard-0's other replica
        held = await shard_pb2_grpc.ShardServiceStub(channel).Get(
            shard_pb2.ShardGetRequest(collection=bench_collection, ids=ids))
    assert 0 < len(held.ids) < len(ids)
    # Memory only: shard-0-0 comes back empty, and is ready only once it has copied its peer (TLS + token).
    secured.cluster.restart_shard(0)
    async with secured.shard(SHARD_TOKEN) as channel:
        copied = await shard_pb2_grpc.ShardServiceStub(channel).Get(
            shard_pb2.ShardGetRequest(collection=bench_collection, ids=ids))
    assert list(copied.ids) == list(held.ids) and copied.vectors_f32 == held.vectors_f32


async def test_a_coordinator_with_the_wrong_shard_token_fails_as_a_server_error(secured: Secured) -> None:
    """The shards refuse it; its clients see a server-side failure naming the cause, never UNAUTHENTICATED."""
    args = list(secured.cluster.coordinator_args)
    args[args.index("--shard-token-file") + 1] = secured.token_file("wrong-shard-token", CLIENT_TOKEN)
    secured.cluster.restart_coordinators(args)  # (the fixture's TLS health polls still apply)
    async with secured.client(CLIENT_TOKEN) as channel:
        err = await refused(search_pb2_grpc.SearchServiceStub(channel).Search(
            search_pb2.SearchRequest(collection="sec", vector_f32=codec.pack(np.zeros(DIM)), k=1), timeout=5))
    # UNAVAILABLE here: the new coordinator cannot load its catalog ("no shard reachable ...: invalid bearer token").
    assert err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    assert security.INVALID_TOKEN in err.details()


def test_no_secret_reaches_a_log(secured: Secured) -> None:
    """Runs after the refusals above; the logs say what protects each port, by path only."""
    logs = {path.name: path.read_text(errors="replace") for path in secured.cluster.run_dir.glob("*.log")}
    procs = secured.cluster.coordinator_procs + secured.cluster.shard_procs
    assert set(logs) == {f"{proc.name}.log" for proc in procs} and len(logs) == 5
    key_body = secured.pki.client.key.read_text().splitlines()[1]
    for name, text in logs.items():
        assert not any(secret in text for secret in (*SECRETS, key_body)), name
        assert ("mutual TLS" if name.startswith("shard") else "TLS (cert") in text, name
    assert "calls to the shards: TLS" in logs["coordinator.log"]

