"""Client side: the `address -> grpc.aio.Channel` factory with the configured TLS and token, that the coordinator uses
for its shards, the shards for their peers and the tools for the coordinator, and the settings that configure it."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Sequence

import grpc

from shardsearch import config
from shardsearch.client_channels import token_interceptors
from shardsearch.grpcserver import channel_options
from shardsearch.security.files import SecurityConfigError, load_tokens, read_secret_file

logger = logging.getLogger(__name__)

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


def client_factory_of(settings: Any, prefix: str) -> ChannelFactory:
    """The channel factory for the `client_settings(prefix, ...)` fields of `settings`."""
    values = [getattr(settings, prefix + name) for name in CLIENT_SETTINGS]
    return client_channel_factory(*values)


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
