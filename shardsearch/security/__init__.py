"""TLS and bearer tokens for every gRPC port, configured by files (as Kubernetes mounts secrets).

Server side (`server`): `server_credentials` (TLS; with a client CA, mutual TLS) and `TokenAuthInterceptor` (an
`authorization: Bearer <token>` header checked against a token file; UNAUTHENTICATED without it). Health checking and
reflection stay open so probes and `grpcurl list` work without a token. Client side (`channels`):
`client_channel_factory` builds the `address -> grpc.aio.Channel` callable that the coordinator uses for its shards
and the tools use for the coordinator. The files (`files`): reading certificates, keys and token files.

Nothing read from a token or key file ever goes into a log line or an error message: errors name the path only.
"""

from shardsearch.client_channels import token_interceptors
from shardsearch.security.channels import (
    CLIENT_SETTINGS,
    ChannelFactory,
    ClientSecurity,
    client_channel_factory,
    client_factory_of,
    client_settings,
)
from shardsearch.security.files import ROLES, SecurityConfigError, load_token_roles, load_tokens, read_secret_file
from shardsearch.security.server import (
    AUTH_HEADER,
    EXEMPT_SERVICES,
    INVALID_TOKEN,
    MALFORMED_CREDENTIALS,
    METHOD_ROLES,
    MISSING_CREDENTIALS,
    AuthMetrics,
    ServerSecurity,
    TokenAuthInterceptor,
    check_files,
    required_role,
    server_credentials,
    server_security,
)

__all__ = [
    "AUTH_HEADER", "CLIENT_SETTINGS", "EXEMPT_SERVICES", "INVALID_TOKEN", "MALFORMED_CREDENTIALS", "METHOD_ROLES",
    "MISSING_CREDENTIALS", "ROLES", "AuthMetrics", "ChannelFactory", "ClientSecurity", "SecurityConfigError",
    "ServerSecurity", "TokenAuthInterceptor", "check_files", "client_channel_factory", "client_factory_of",
    "client_settings", "load_token_roles", "load_tokens", "read_secret_file", "required_role", "server_credentials",
    "server_security", "token_interceptors",
]
