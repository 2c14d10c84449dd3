"""Server side: TLS credentials (with a client CA, mutual TLS) and the bearer-token interceptor with its roles."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter

from shardsearch.security.channels import CLIENT_SETTINGS, client_factory_of
from shardsearch.security.files import ROLES, SecurityConfigError, load_token_roles, load_tokens, read_secret_file

logger = logging.getLogger(__name__)

AUTH_HEADER = "authorization"
MISSING_CREDENTIALS = "missing credentials: send metadata 'authorization: Bearer <token>'"
MALFORMED_CREDENTIALS = "malformed credentials: the authorization metadata must be 'Bearer <token>'"
INVALID_TOKEN = "invalid bearer token"
# Health probes and `grpcurl list` carry no token (TLS, if on, still applies to them).
EXEMPT_SERVICES = (
    "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection",
)


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


def check_files(settings: Any, client_prefix: str) -> None:
    """Reads every certificate, key and token file a server config names (its port's and its calls' to
    `client_prefix` peers), so that a missing or bad one stops the start with one line naming it, before serving."""
    server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    if settings.auth_token_file:
        load_tokens(settings.auth_token_file)
    if any(getattr(settings, client_prefix + name) for name in CLIENT_SETTINGS):
        client_factory_of(settings, client_prefix)


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
