"""TLS and bearer tokens for every gRPC port, configured by files (as Kubernetes mounts secrets).

Server side: `server_credentials` (TLS; with a client CA, mutual TLS) and `TokenAuthInterceptor` (an
`authorization: Bearer <token>` header checked against a token file; UNAUTHENTICATED without it). Health checking and
reflection stay open so probes and `grpcurl list` work without a token. Client side: `client_channel_factory` builds the
`address -> grpc.aio.Channel` callable that the coordinator uses for its shards and the tools use for the coordinator.

Nothing read from a token or key file ever goes into a log line or an error message: errors name the path only.
"""

from __future__ import annotations

import argparse
import hmac
import logging
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter

from shardsearch import config
from shardsearch.client import token_interceptors
from shardsearch.grpcserver import channel_options

logger = logging.getLogger(__name__)

AUTH_HEADER = "authorization"
MISSING_CREDENTIALS = "missing credentials: send metadata 'authorization: Bearer <token>'"
MALFORMED_CREDENTIALS = "malformed credentials: the authorization metadata must be 'Bearer <token>'"
INVALID_TOKEN = "invalid bearer token"
# Health probes and `grpcurl list` carry no token (TLS, if on, still applies to them).
EXEMPT_SERVICES = (
    "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection",
)


class SecurityConfigError(config.ConfigError):
    """A TLS or token setting that cannot work; the message names the setting or path, never a file's contents."""


def read_secret_file(path: str, what: str) -> bytes:
    """Reads a certificate, key or token file at start-up; an unreadable one stops the server with its path named."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} file {path!r}: {exc.strerror or type(exc).__name__}") from None
    if not data.strip():
        raise SecurityConfigError(f"{what} file {path!r} is empty")
    return data


ROLES = ("read", "write", "admin")
"""What a token may do, each role including the ones before it: read (searches, Get, ListIds, listing and
describing collections), write (also Upsert and Delete), admin (also creating and dropping collections, and every
AdminService call). Shard ports serve internal calls only: every ShardService method needs admin."""


def _method_roles() -> dict[str, str]:
    from shardsearch.v1 import admin_pb2, search_pb2

    roles = {f"/shardsearch.v1.SearchService/{m.name}": "read"
             for m in search_pb2.DESCRIPTOR.services_by_name["SearchService"].methods}
    roles.update({f"/shardsearch.v1.SearchService/{name}": "write" for name in ("Upsert", "Delete")})
    roles.update({f"/shardsearch.v1.SearchService/{name}": "admin" for name in ("CreateCollection", "DropCollection")})
    roles.update({f"/shardsearch.v1.AdminService/{m.name}": "admin"
                  for m in admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods})
    return roles


METHOD_ROLES = _method_roles()


def required_role(method: str) -> str:
    """The role a call of `method` (its full gRPC path) needs; admin for anything not listed."""
    return METHOD_ROLES.get(method, "admin")


def load_token_roles(path: str) -> tuple[tuple[bytes, str], ...]:
    """The (token, role) pairs of a token file: a line is `<token> [read|write|admin]`, a token without a role is
    admin (what every token could do before roles existed); blank lines and surrounding whitespace are ignored, and
    several lines mean a rotation under way or several callers."""
    entries = []
    for number, line in enumerate(read_secret_file(path, "token").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise SecurityConfigError(f"token file {path!r}, line {number}: expected '<token> [role]', got "
                                      f"{len(fields)} fields (a token has no spaces)")
        token = fields[0]
        if any(b < 0x21 or b > 0x7E for b in token):  # a header value: printable ASCII, no inner spaces
            raise SecurityConfigError(f"token file {path!r}, line {number}: a token must be printable ASCII, no spaces")
        role = fields[1].decode("ascii", "replace") if len(fields) == 2 else "admin"
        if role not in ROLES:
            raise SecurityConfigError(f"token file {path!r}, line {number}: the role must be one of {', '.join(ROLES)}")
        entries.append((token, role))
    if not entries:
        raise SecurityConfigError(f"token file {path!r} holds no token")
    return tuple(entries)


def load_tokens(path: str) -> tuple[bytes, ...]:
    """The tokens of a token file, without their roles (see load_token_roles)."""
    return tuple(token for token, _ in load_token_roles(path))


def server_credentials(
    cert_file: str = "", key_file: str = "", client_ca_file: str = ""
) -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files, or None (plaintext) when no certificate is set.

    With `client_ca_file`, clients must present a certificate signed by that CA (mutual TLS); without, any client may
    connect (and tokens, if configured, say who it is).
    """
    if not cert_file and not key_file:
        if client_ca_file:
            raise SecurityConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return None
    if not (cert_file and key_file):
        raise SecurityConfigError("TLS needs both tls_cert_file and tls_key_file")
    chain = read_secret_file(cert_file, "TLS certificate")
    key = read_secret_file(key_file, "TLS private key")
    client_ca = read_secret_file(client_ca_file, "TLS client CA") if client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca, require_client_auth=bool(client_ca))


CLIENT_SETTINGS = {
    "tls_ca_file": "Dial {peer} over TLS, trusting this CA (set it, or {prefix}tls_cert_file, to use TLS).",
    "tls_cert_file": "Client certificate presented to {peer} (mutual TLS), with {prefix}tls_key_file.",
    "tls_key_file": "Private key of {prefix}tls_cert_file.",
    "tls_server_name": "Check the certificates of {peer} for this name instead of the dialled host (e.g. when dialling IPs).",
    "token_file": "Bearer token sent to {peer} with every call (the file's first token).",
}


def client_settings(prefix: str, peer: str) -> type:
    """A frozen dataclass mixin with the security settings of calls to `peer`: `<prefix>tls_ca_file`,
    `<prefix>tls_cert_file`, `<prefix>tls_key_file`, `<prefix>tls_server_name`, `<prefix>token_file`. Declared once,
    here, for the coordinator (to its shards), the shards (to their peers) and the tools (to the coordinator)."""
    fields = [
        (prefix + name, str, field(default="", metadata={"help": doc.format(peer=peer, prefix=prefix)}))
        for name, doc in CLIENT_SETTINGS.items()
    ]
    return make_dataclass(f"{prefix.title().strip('_')}ClientSettings", fields, frozen=True)


def check_files(settings: Any, client_prefix: str) -> None:
    """Reads every certificate, key and token file a server config names (its port's and its calls' to
    `client_prefix` peers), so that a missing or bad one stops the start with one line naming it, before serving."""
    server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    if settings.auth_token_file:
        load_tokens(settings.auth_token_file)
    if any(getattr(settings, client_prefix + name) for name in CLIENT_SETTINGS):
        client_factory_of(settings, client_prefix)


def client_factory_of(settings: Any, prefix: str) -> ChannelFactory:
    """The channel factory for the `client_settings(prefix, ...)` fields of `settings`."""
    values = [getattr(settings, prefix + name) for name in CLIENT_SETTINGS]
    return client_channel_factory(*values)


class AuthMetrics:
    """`shardsearch_auth_failures_total{reason}`: calls refused for missing, malformed or invalid credentials, or
    (reason `role`) for a token whose role does not allow the method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "shardsearch_auth_failures", "Calls refused by token authentication, by reason.", ["reason"],
            registry=registry,
        )
        for reason in ("missing", "malformed", "invalid", "role"):
            self.failures.labels(reason)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with `authorization: Bearer <t>` for an accepted t whose role allows the method
    (UNAUTHENTICATED without a valid token, PERMISSION_DENIED naming the role needed beyond its role); exempt services
    pass as they are."""

    def __init__(self, tokens: Iterable[bytes | tuple[bytes, str]], metrics: AuthMetrics | None = None,
                 exempt: Sequence[str] = EXEMPT_SERVICES) -> None:
        self._tokens = tuple(t if isinstance(t, tuple) else (t, "admin") for t in tokens)
        if not self._tokens:
            raise SecurityConfigError("token authentication needs at least one token")
        self._metrics = metrics
        self._exempt = tuple(f"/{service}/" for service in exempt)

    @classmethod
    def from_file(cls, path: str, registry: CollectorRegistry | None = None) -> "TokenAuthInterceptor":
        return cls(load_token_roles(path), AuthMetrics(registry) if registry is not None else None)

    def check(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> tuple[str, str] | None:
        """None if the call may go on, else (reason, message): reason `role` is PERMISSION_DENIED, the others
        UNAUTHENTICATED."""
        if method.startswith(self._exempt):
            return None
        values = [value for key, value in metadata or () if key == AUTH_HEADER]
        if not values:
            return "missing", MISSING_CREDENTIALS
        raw = values[0].encode("latin-1", "replace") if isinstance(values[0], str) else bytes(values[0])
        scheme, _, token = raw.strip().partition(b" ")
        if len(values) > 1 or scheme.lower() != b"bearer" or not token.strip():
            return "malformed", MALFORMED_CREDENTIALS
        token = token.strip()
        # Every accepted token is compared, each in constant time: timing tells nothing about any of them.
        matches = [hmac.compare_digest(token, accepted) for accepted, _ in self._tokens]
        if not any(matches):
            return "invalid", INVALID_TOKEN
        role = self._tokens[matches.index(True)][1]
        needed = required_role(method)
        if ROLES.index(role) < ROLES.index(needed):
            return "role", f"permission denied: {method.rsplit('/', 1)[-1]} needs a token with role {needed!r}; " \
                           f"this token has role {role!r}"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        refusal = self.check(handler_call_details.method, handler_call_details.invocation_metadata)
        if refusal is None:
            return await continuation(handler_call_details)
        reason, message = refusal
        if self._metrics is not None:
            self._metrics.failures.labels(reason).inc()
        code = grpc.StatusCode.PERMISSION_DENIED if reason == "role" else grpc.StatusCode.UNAUTHENTICATED
        # Refuse with a handler of the method's own kind, so a streaming call is answered like one.
        return _refusal_handler(await continuation(handler_call_details), message, code)


def _refusal_handler(handler: grpc.RpcMethodHandler | None, message: str,
                     code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


@dataclass(frozen=True)
class ServerSecurity:
    """What protects a server's gRPC port: TLS credentials (None: plaintext) and interceptors (token auth)."""

    credentials: grpc.ServerCredentials | None
    interceptors: tuple[grpc.aio.ServerInterceptor, ...]
    description: str

    @classmethod
    def from_config(cls, config: Any, registry: CollectorRegistry | None = None) -> "ServerSecurity":
        """From a server config's tls_cert_file, tls_key_file, tls_client_ca_file and auth_token_file."""
        return server_security(
            config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file, config.auth_token_file, registry
        )


def server_security(cert_file: str = "", key_file: str = "", client_ca_file: str = "", token_file: str = "",
                    registry: CollectorRegistry | None = None) -> ServerSecurity:
    """Reads the files once, at start-up, and logs what is on (paths only, never a token)."""
    credentials = server_credentials(cert_file, key_file, client_ca_file)
    interceptors = (TokenAuthInterceptor.from_file(token_file, registry),) if token_file else ()
    if not cert_file:
        transport = "plaintext"
    elif client_ca_file:
        transport = f"mutual TLS (cert {cert_file}, client certificates must be signed by {client_ca_file})"
    else:
        transport = f"TLS (cert {cert_file}, no client certificates)"
    tokens = f"bearer tokens from {token_file} (health and reflection exempt)" if token_file else "no token auth"
    description = f"{transport}, {tokens}"
    logger.info("gRPC port security: %s", description)
    return ServerSecurity(credentials, interceptors, description)


class ChannelFactory:
    """`address -> grpc.aio.Channel` with the configured TLS and token; built once, so files are read once."""

    def __init__(self, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]],
                 interceptors: Sequence[grpc.aio.ClientInterceptor], description: str) -> None:
        self._credentials = credentials
        self._options = list(options)
        self._interceptors = list(interceptors) or None
        self.description = description

    def with_interceptors(self, interceptors: Sequence[grpc.aio.ClientInterceptor]) -> "ChannelFactory":
        """The same channels with `interceptors` first (tracing) and this factory's own after them."""
        return ChannelFactory(self._credentials, self._options, [*interceptors, *(self._interceptors or ())],
                              self.description)

    def __call__(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(address, options=self._options, interceptors=self._interceptors)
        return grpc.aio.secure_channel(address, self._credentials, options=self._options,
                                       interceptors=self._interceptors)


@dataclass(frozen=True)
class ClientSecurity(client_settings("", "the coordinator")):  # type: ignore[misc]
    """How a command dials the coordinator: TLS trusting `tls_ca_file`, a client certificate and key for mutual TLS,
    a server name to check instead of the dialled host, and the first token of `token_file` sent as
    `authorization: Bearer <token>` with every call."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        config.add_config_arguments(parser, ClientSecurity, title="security of the calls to the coordinator")

    def client_kwargs(self) -> dict[str, str | None]:
        """These settings as keyword arguments of shardsearch.client.Client and AsyncClient."""
        return {"ca_file": self.tls_ca_file or None, "cert_file": self.tls_cert_file or None,
                "key_file": self.tls_key_file or None, "server_name": self.tls_server_name or None,
                "token_file": self.token_file or None}

    @staticmethod
    def from_args(args: argparse.Namespace) -> dict[str, str]:
        """The fields as keyword arguments, from the flags of `add_arguments`."""
        return {name: getattr(args, name) or "" for name in ClientSecurity.__dataclass_fields__}


def client_channel_factory(
    ca_file: str = "", cert_file: str = "", key_file: str = "", server_name: str = "", token_file: str = "",
    tls: bool = False, options: Sequence[tuple[str, Any]] | None = None,
) -> ChannelFactory:
    """Channels to a shardsearch server: TLS when `tls` or any file is set (`ca_file` trusted, else the system roots),
    a client certificate for mutual TLS, and the first token of `token_file` sent with every call.

    `server_name` checks the server's certificate for that name instead of the dialled host (certificates issued to a
    DNS name, dialled by IP). Options default to grpcserver.channel_options().
    """
    options = list(channel_options() if options is None else options)
    if bool(cert_file) != bool(key_file):
        raise SecurityConfigError("a client certificate needs both its certificate and its key file")
    secure = tls or bool(ca_file or cert_file)
    credentials = None
    if secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_secret_file(ca_file, "TLS CA") if ca_file else None,
            private_key=read_secret_file(key_file, "TLS client key") if key_file else None,
            certificate_chain=read_secret_file(cert_file, "TLS client certificate") if cert_file else None,
        )
    if server_name:
        if not secure:
            raise SecurityConfigError("a TLS server name needs TLS (a CA file, a client certificate or tls)")
        options.append(("grpc.ssl_target_name_override", server_name))
    interceptors = token_interceptors(load_tokens(token_file)[0]) if token_file else []
    if token_file and not secure:
        logger.warning("bearer token from %s is sent over plaintext channels: set a CA file to use TLS", token_file)
    return ChannelFactory(credentials, options, interceptors,
                          _describe_client(secure, ca_file, cert_file, server_name, token_file))


def _describe_client(secure: bool, ca_file: str, cert_file: str, server_name: str, token_file: str) -> str:
    if not secure:
        transport = "plaintext"
    else:
        transport = f"TLS (CA {ca_file or 'system roots'}"
        transport += f", client cert {cert_file}" if cert_file else ""
        transport += f", server name {server_name})" if server_name else ")"
    return f"{transport}, {f'bearer token from {token_file}' if token_file else 'no token'}"
