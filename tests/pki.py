"""A throwaway PKI for tests: a CA, a server certificate, a client certificate, and one from a different CA.

Written as PEM files, as a Kubernetes TLS secret is mounted (a certificate, a key, a CA), so the servers read them as
they would in a cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    """The CA certificate that signed `server` and `client`."""
    server: KeyPair
    """For DNS localhost and IP 127.0.0.1; also usable as a client certificate (a shard calling its peers)."""
    client: KeyPair
    """A client certificate (the coordinator's, when it dials shards)."""
    foreign_ca: Path
    """Another CA, trusted by nobody here."""
    foreign_client: KeyPair
    """A client certificate signed by `foreign_ca`: servers must refuse it."""


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("shardsearch test CA")
    foreign_key, foreign_cert = _ca("some other CA")
    server_sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return Pki(
        ca=_write_cert(directory / "ca.crt", ca_cert),
        server=_leaf(directory, "server", ca_key, ca_cert, server_sans, [SERVER, CLIENT]),
        client=_leaf(directory, "coordinator", ca_key, ca_cert, [x509.DNSName("coordinator")], [CLIENT]),
        foreign_ca=_write_cert(directory / "foreign-ca.crt", foreign_cert),
        foreign_client=_leaf(directory, "foreign", foreign_key, foreign_cert, [x509.DNSName("coordinator")], [CLIENT]),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False,
        ), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(directory: Path, name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
          sans: list[x509.GeneralName], usages: list[x509.ObjectIdentifier]) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_path = directory / f"{name}.key"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    key_path.chmod(0o600)
    return KeyPair(_write_cert(directory / f"{name}.crt", cert), key_path)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
