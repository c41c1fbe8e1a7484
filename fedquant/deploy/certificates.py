"""Credentials for a secured Flower Deployment Engine: a local certificate authority (CA), the
SuperLink's TLS certificate signed by it, and one ECDSA key pair per SuperNode for SuperNode
authentication, in the formats Flower 1.41/1.42 reads:

``ca.crt``               the CA certificate (PEM): ``flower-superlink --ssl-ca-certfile``,
                         ``flower-supernode --root-certificates``, ``root-certificates`` of a
                         connection in Flower's config.toml (``flwr run``, ``flwr supernode register``)
``ca.key``               the CA's private key (PEM, 0600): only to sign more certificates; it stays
                         where the credentials were made and goes to no device
``superlink.crt/.key``   the SuperLink's certificate (PEM; subject alternative names ``localhost``,
                         ``127.0.0.1`` and every ``hosts`` entry) and private key (PEM, 0600):
                         ``--ssl-certfile`` / ``--ssl-keyfile``. The SuperLink's own SuperExec
                         reaches it on 127.0.0.1, so the loopback names are always in it
``supernode-K.key/.pub`` node K's private key (OpenSSH format, 0600:
                         ``flower-supernode --auth-supernode-private-key``) and public key
                         (OpenSSH format: ``flwr supernode register``), P-384 like Flower's docs

Private keys are created with mode 0600 before a byte is written. Existing files are never
replaced unless ``overwrite`` is set (a new CA would lock out every node that trusts the old one).
Every problem with the input raises :class:`CredentialsError` with a one-line message.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
CURVE = ec.SECP384R1
MAX_NODES = 1000
MAX_DAYS = 3650
_DNS_NAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


class CredentialsError(ValueError):
    """A one-line reason the credentials cannot be written."""


@dataclass(frozen=True)
class NodeKeys:
    private_key: Path  # OpenSSH private key, 0600
    public_key: Path  # OpenSSH public key, to register with `flwr supernode register`


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    ca_key: Path
    superlink_cert: Path
    superlink_key: Path
    nodes: tuple[NodeKeys, ...]
    hosts: tuple[str, ...]  # the names the SuperLink's certificate is valid for

    @property
    def files(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.superlink_cert, self.superlink_key,
                *(p for n in self.nodes for p in (n.private_key, n.public_key))]


def planned(out_dir: Path, nodes: int, hosts: Sequence[str] = ()) -> Credentials:
    """The files :func:`write_credentials` writes (nothing is written); checks the input."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise CredentialsError(f"--nodes must be a whole number from 1 to {MAX_NODES}, got {nodes!r}")
    names = list(dict.fromkeys([*LOOPBACK_HOSTS, *(_check_host(h) for h in hosts)]))
    d = Path(out_dir)
    return Credentials(ca_cert=d / "ca.crt", ca_key=d / "ca.key", superlink_cert=d / "superlink.crt",
                       superlink_key=d / "superlink.key",
                       nodes=tuple(NodeKeys(d / f"supernode-{k}.key", d / f"supernode-{k}.pub") for k in range(nodes)),
                       hosts=tuple(names))


def write_credentials(out_dir: Path | str, nodes: int = 2, hosts: Sequence[str] = (), days: int = 365,
                      overwrite: bool = False) -> Credentials:
    """Write a CA, the SuperLink's certificate for ``localhost``, ``127.0.0.1`` and ``hosts``
    (DNS names or IP addresses, valid for ``days``), and ``nodes`` SuperNode key pairs
    (``supernode-0`` .. ``supernode-{nodes-1}``, one per partition id) into ``out_dir``."""
    out_dir = Path(out_dir).expanduser()
    plan = planned(out_dir, nodes, hosts)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise CredentialsError(f"--days must be a whole number from 1 to {MAX_DAYS}, got {days!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise CredentialsError(f"{out_dir} is a file, not a folder")
    existing = [p.name for p in plan.files if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise CredentialsError(f"{out_dir} already holds {', '.join(existing)}: pass --force to replace them "
                               "(nodes that trust the old CA or registered the old keys will be refused)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CredentialsError(f"cannot create {out_dir}: {e.strerror or e}") from None

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)  # some clock skew
    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedquant test federation"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fedquant local CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(cert_sign=True), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA384()))

    server_key = ec.generate_private_key(CURVE())
    sans = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in plan.hosts]
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedquant test federation"),
                                            x509.NameAttribute(NameOID.COMMON_NAME, plan.hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(_key_usage(cert_sign=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                                  critical=False)
                   .sign(ca_key, hashes.SHA384()))

    pem = serialization.Encoding.PEM
    _write(plan.ca_key, _private_pem(ca_key), private=True)
    _write(plan.ca_cert, ca_cert.public_bytes(pem))
    _write(plan.superlink_key, _private_pem(server_key), private=True)
    _write(plan.superlink_cert, server_cert.public_bytes(pem))
    for node in plan.nodes:
        key = ec.generate_private_key(CURVE())
        _write(node.private_key, key.private_bytes(pem, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()), private=True)
        _write(node.public_key, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                              serialization.PublicFormat.OpenSSH) + b"\n")
    return plan


def _check_host(host: str) -> str:
    host = str(host).strip()
    if _is_ip(host):
        return str(ipaddress.ip_address(host))
    if not _DNS_NAME.match(host) or host.replace(".", "").isdigit():
        raise CredentialsError(f"--host {host!r} is neither a DNS name nor an IP address "
                               "(give the name or address the SuperNodes use for the SuperLink, without a port)")
    return host.rstrip(".").lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write through a temporary file in the same folder (0600 from its creation: mkstemp), then
    rename it over ``path``: a reader never sees half a key, and a private key is never readable
    by others, even for a moment."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise CredentialsError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CredentialsError(f"cannot write {path}: {e.strerror or e}") from None
