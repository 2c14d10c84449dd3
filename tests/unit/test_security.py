"""Token files, the auth interceptor's decisions, config errors, and the client factory against an in-process server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from shardsearch import grpcserver, security
from shardsearch.errors import from_rpc_error
from shardsearch.security import SecurityConfigError, TokenAuthInterceptor

TOKEN = "tok-1a2b3c4d5e6f"
OLD_TOKEN = "tok-old-9z8y7x"


def write(tmp_path: Path, text: str, name: str = "tokens") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_token_file_ignores_blank_lines_and_whitespace_and_keeps_every_token(tmp_path: Path) -> None:
    path = write(tmp_path, f"\n  {TOKEN}  \n\n\t{OLD_TOKEN}\r\n")
    assert security.load_tokens(path) == (TOKEN.encode(), OLD_TOKEN.encode())


@pytest.mark.parametrize("text, expected", [("", "is empty"), ("\n  \n", "is empty"), ("a b\n", "line 1")])
def test_bad_token_files_name_the_path_never_the_contents(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SecurityConfigError, match=expected) as err:
        security.load_tokens(path)
    assert path in str(err.value) and (not text.strip() or "a b" not in str(err.value))


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    for build in (lambda: security.load_tokens(missing), lambda: security.server_credentials(missing, missing),
                  lambda: security.client_channel_factory(ca_file=missing)):
        with pytest.raises(SecurityConfigError, match="cannot read .*nope.pem"):
            build()


def test_half_configured_tls_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecurityConfigError, match="both"):
        security.server_credentials(cert_file="x.crt")
    with pytest.raises(SecurityConfigError, match="needs tls_cert_file"):
        security.server_credentials(client_ca_file="ca.crt")
    with pytest.raises(SecurityConfigError, match="both"):
        security.client_channel_factory(cert_file="x.crt")
    with pytest.raises(SecurityConfigError, match="needs TLS"):
        security.client_channel_factory(server_name="localhost")
    assert security.server_credentials() is None


def interceptor(registry: CollectorRegistry | None = None) -> TokenAuthInterceptor:
    return TokenAuthInterceptor([TOKEN.encode(), OLD_TOKEN.encode()],
                                security.AuthMetrics(registry) if registry else None)


@pytest.mark.parametrize("metadata, reason", [
    ((), "missing"),
    ((("x-other", "1"),), "missing"),
    ((("authorization", TOKEN),), "malformed"),
    ((("authorization", f"Basic {TOKEN}"),), "malformed"),
    ((("authorization", "Bearer "),), "malformed"),
    ((("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")), "malformed"),
    ((("authorization", "Bearer wrong-token"),), "invalid"),
    ((("authorization", f"Bearer {TOKEN}x"),), "invalid"),
    ((("authorization", f"Bearer {TOKEN}"),), None),
    ((("authorization", f"bearer  {OLD_TOKEN} "),), None),  # any accepted token: rotation
])
def test_decisions(metadata: tuple[tuple[str, str], ...], reason: str | None) -> None:
    refusal = interceptor().check("/shardsearch.v1.SearchService/Search", metadata)
    assert (refusal and refusal[0]) == reason
    if refusal:
        assert TOKEN not in refusal[1] and "wrong-token" not in refusal[1]


@pytest.mark.parametrize("method", [
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
])
def test_probes_and_reflection_need_no_token(method: str) -> None:
    assert interceptor().check(method, ()) is None
    assert interceptor().check("/grpc.health.v1.HealthX/Check", ()) is not None


def test_client_interceptors_do_not_show_the_token() -> None:
    assert all(TOKEN not in repr(i) for i in security.token_interceptors(TOKEN.encode()))


def test_refused_shard_credentials_are_not_the_callers_fault() -> None:
    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details=security.INVALID_TOKEN)
    mapped = from_rpc_error(exc, "shard shard-0 (127.0.0.1:1)")
    assert mapped.code == grpc.StatusCode.INTERNAL and "invalid bearer token" in str(mapped)


# In-process: each call kind through the server interceptor and the client factory's token interceptors.

async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield request
    yield request


async def _stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


async def _stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def _register(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
    }),))


async def _each_kind(channel: grpc.aio.Channel) -> list[object]:
    """Calls every kind; returns the replies, or the status code of each failed call."""
    async def one(call: object) -> object:
        try:
            return await call()  # type: ignore[operator]
        except grpc.aio.AioRpcError as exc:
            assert TOKEN not in (exc.details() or "")
            return exc.code()

    async def collect(call: grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall) -> list[bytes]:
        return [reply async for reply in call]

    return [
        await one(lambda: channel.unary_unary("/test.Echo/Unary")(b"a")),
        await one(lambda: collect(channel.unary_stream("/test.Echo/UnaryStream")(b"b"))),
        await one(lambda: channel.stream_unary("/test.Echo/StreamUnary")(iter([b"c", b"d"]))),
        await one(lambda: collect(channel.stream_stream("/test.Echo/StreamStream")(iter([b"e", b"f"])))),
    ]


def _refusals(address: str, metadata: tuple[tuple[str, str], ...]) -> list[object]:
    """Every kind from a blocking client with the given metadata; the status code of each call. (grpc.aio may
    report its own INTERNAL for a streaming call refused while it still writes: the server's answer is what counts.)"""
    def code(call: object) -> object:
        try:
            call()  # type: ignore[operator]
        except grpc.RpcError as exc:
            assert TOKEN not in (exc.details() or "")  # type: ignore[attr-defined]
            return exc.code()  # type: ignore[attr-defined]
        return grpc.StatusCode.OK

    with grpc.insecure_channel(address) as channel:
        return [
            code(lambda: channel.unary_unary("/test.Echo/Unary")(b"a", metadata=metadata)),
            code(lambda: list(channel.unary_stream("/test.Echo/UnaryStream")(b"b", metadata=metadata))),
            code(lambda: channel.stream_unary("/test.Echo/StreamUnary")(iter([b"c", b"d"]), metadata=metadata)),
            code(lambda: list(channel.stream_stream("/test.Echo/StreamStream")(iter([b"e"]), metadata=metadata))),
        ]


async def _bidi(channel: grpc.aio.Channel) -> bytes:
    """The write/read style of StreamSearch clients, through the interceptors. (Not used for refusals: grpc.aio may
    report its own INTERNAL when a refusal lands during its first write.)"""
    call = channel.stream_stream("/test.Echo/StreamStream")()
    await call.write(b"x")
    reply = await call.read()
    await call.done_writing()
    return reply


async def test_every_call_kind_needs_the_token_and_health_does_not(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    tokens = write(tmp_path, f"{OLD_TOKEN}\n{TOKEN}\n")
    port_security = security.server_security(token_file=tokens, registry=registry)
    server = await grpcserver.start_server("127.0.0.1:0", [_register], ["test.Echo"],
                                           interceptors=port_security.interceptors)
    address = f"127.0.0.1:{server.port}"
    try:
        good = security.client_channel_factory(token_file=write(tmp_path, f"\n{TOKEN}\n", "client"))(address)
        bad = security.client_channel_factory(token_file=write(tmp_path, "not-it\n", "bad"))(address)
        bare = security.client_channel_factory()(address)
        assert await _each_kind(good) == [b"a", [b"b", b"b"], b"cd", [b"e", b"f"]]
        assert await _bidi(good) == b"x"
        refused = [grpc.StatusCode.UNAUTHENTICATED] * 4
        assert await asyncio.to_thread(_refusals, address, (("authorization", "Bearer not-it"),)) == refused
        assert await asyncio.to_thread(_refusals, address, ()) == refused
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bare.unary_unary("/test.Echo/Unary")(b"a")
        assert err.value.details() == security.MISSING_CREDENTIALS
        reply = await health_pb2_grpc.HealthStub(bare).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert registry.get_sample_value("shardsearch_auth_failures_total", {"reason": "invalid"}) == 4
        assert registry.get_sample_value("shardsearch_auth_failures_total", {"reason": "missing"}) == 5
        for channel in (good, bad, bare):
            await channel.close()
    finally:
        await server.stop(0)


def test_token_lines_carry_roles_and_a_bare_token_is_admin(tmp_path: Path) -> None:
    path = write(tmp_path, f"{TOKEN} read\n{OLD_TOKEN}\n  writer-token   write \n")
    assert security.load_token_roles(path) == (
        (TOKEN.encode(), "read"), (OLD_TOKEN.encode(), "admin"), (b"writer-token", "write"))
    for text in (f"{TOKEN} reader\n", f"{TOKEN} read extra\n"):
        with pytest.raises(SecurityConfigError, match="line 1") as err:
            security.load_token_roles(write(tmp_path, text))
        assert TOKEN not in str(err.value)


@pytest.mark.parametrize("role, method, allowed", [
    ("read", "/shardsearch.v1.SearchService/Search", True),
    ("read", "/shardsearch.v1.SearchService/StreamSearch", True),
    ("read", "/shardsearch.v1.SearchService/ListIds", True),
    ("read", "/shardsearch.v1.SearchService/DescribeCollection", True),
    ("read", "/shardsearch.v1.SearchService/Upsert", False),
    ("write", "/shardsearch.v1.SearchService/Upsert", True),
    ("write", "/shardsearch.v1.SearchService/Delete", True),
    ("write", "/shardsearch.v1.SearchService/DropCollection", False),
    ("write", "/shardsearch.v1.AdminService/AddShard", False),
    ("write", "/shardsearch.v1.AdminService/GetTopology", False),
    ("admin", "/shardsearch.v1.AdminService/AddShard", True),
    ("admin", "/shardsearch.v1.SearchService/CreateCollection", True),
    ("write", "/shardsearch.v1.ShardService/Upsert", False),  # shard ports: internal calls need admin
    ("admin", "/shardsearch.v1.ShardService/Upsert", True),
])
def test_a_call_beyond_its_tokens_role_is_denied_naming_the_role_it_needs(role: str, method: str, allowed: bool) -> None:
    check = TokenAuthInterceptor([(TOKEN.encode(), role)]).check(method, (("authorization", f"Bearer {TOKEN}"),))
    if allowed:
        assert check is None
    else:
        assert check is not None and check[0] == "role"
        assert f"needs a token with role '{security.required_role(method)}'" in check[1] and TOKEN not in check[1]
