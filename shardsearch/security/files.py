"""The files security is configured by (as Kubernetes mounts secrets): certificates, keys and token files.

Nothing read from them ever goes into a log line or an error message: errors name the path only."""

from __future__ import annotations

from shardsearch import config
from shardsearch.client_channels import read_secret


class SecurityConfigError(config.ConfigError):
    """A TLS or token setting that cannot work; the message names the setting or path, never a file's contents."""


def read_secret_file(path: str, what: str) -> bytes:
    """Reads a certificate, key or token file at start-up; an unreadable one stops the server with its path named."""
    return read_secret(path, what, SecurityConfigError)


ROLES = ("read", "write", "admin")
"""What a token may do, each role including the ones before it: read (searches, Get, ListIds, listing and
describing collections), write (also Upsert and Delete), admin (also creating and dropping collections, and every
AdminService call). Shard ports serve internal calls only: every ShardService method needs admin."""


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
