"""A private CA and the SuperLink's TLS certificate, made with ``cryptography``.

``fedcore certs create --out DIR --host NAME_OR_IP ...`` writes four files: ``ca.pem`` (what
every device trusts), ``ca.key`` (keep it offline: it signs server certificates),
``server.pem`` and ``server.key`` (the SuperLink's). The server certificate names every
``--host`` in its subjectAltName (DNS names and IP addresses) plus the loopback names, since
``fedcore server`` itself reaches the SuperLink on loopback; it is for TLS servers only
(``serverAuth``, digital signature) and the CA only signs certificates (``keyCertSign``,
``cRLSign``, path length 0). Keys are ECDSA P-256; private keys are written 0600. Nothing is
ever overwritten: if any of the four files exists, nothing is written.

``issue_identity`` signs an enrolled device's identity certificate with the same CA (``fedcore
clients certify`` / ``enroll --ca-key``): its name and its signing key, for SecAgg+'s checks
against a malicious server (``fedcore.secagg.identity``). It needs ``ca.key``, so it runs
wherever the operator keeps that key; the server needs only ``ca.pem``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca.key", "server.pem", "server.key"
LOOPBACK = ("localhost", "127.0.0.1", "::1")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MAX_DAYS = 3650


class CertError(ValueError):
    """A host name, a validity or an output folder that cannot be used (one line)."""


@dataclass(frozen=True)
class CertFiles:
    """Where the four files went."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def subject_alt_name(host: str) -> x509.GeneralName:
    """``host`` as a SAN entry: an IP address, or a DNS name (checked label by label)."""
    text = host.strip().strip("[]")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise CertError(f"--host: {host!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(name)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcore"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _key_usage(**set_bits: bool) -> x509.KeyUsage:
    bits = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    bits.update(set_bits)
    return x509.KeyUsage(**bits)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``; ``FileExistsError`` rather than overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def create_certificates(
    out: Path, hosts: list[str], days: int = 825, ca_days: int = MAX_DAYS
) -> CertFiles:
    """Make the CA and the server certificate for ``hosts`` in ``out``; never overwrite."""
    if not hosts:
        raise CertError("--host: give at least one name or IP address devices use")
    for option, value in (("--days", days), ("--ca-days", ca_days)):
        if not 1 <= value <= MAX_DAYS:
            raise CertError(f"{option}: must be 1..{MAX_DAYS} days, got {value}")
    if days > ca_days:
        raise CertError(f"--days ({days}) cannot exceed the CA's --ca-days ({ca_days})")
    sans: list[x509.GeneralName] = []
    for host in [*hosts, *LOOPBACK]:
        entry = subject_alt_name(host)
        if entry not in sans:
            sans.append(entry)
    files = CertFiles(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    existing = [str(p) for p in vars(files).values() if p.exists()]
    if existing:
        raise CertError(f"--out: {existing[0]} exists; refusing to overwrite (pick another --out)")
    out.mkdir(parents=True, exist_ok=True)

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)  # clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedcore CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    first = sans[0].value
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"fedcore SuperLink {first}"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_new(files.ca_key, _pem_key(ca_key), 0o600)
    write_new(files.server_key, _pem_key(server_key), 0o600)
    write_new(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    write_new(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def load_ca(
    ca_cert: Path, ca_key: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and its key, checked to belong together (``CertError`` if not)."""
    for path in (ca_cert, ca_key):
        if not path.is_file():
            raise CertError(f"no such file: {path} (the folder of `fedcore certs create`)")
    try:
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes()[:65536])
        key = serialization.load_pem_private_key(ca_key.read_bytes()[:65536], None)
    except (ValueError, TypeError) as exc:
        raise CertError(f"{ca_cert} / {ca_key}: not a CA certificate and its key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != ca.public_key():
        raise CertError(f"{ca_key} is not the key of {ca_cert}")
    return ca, key


def issue_identity(
    ca_cert: Path, ca_key: Path, name: str, public_key: ec.EllipticCurvePublicKey, out: Path,
    days: int = 365,
) -> Path:
    """Write the identity certificate of device ``name`` (its enrolled ``public_key``) to
    ``out``, signed by the CA; never overwrite. ``CertError`` names what is wrong."""
    from fedcore.secagg.identity import issue

    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"--days: must be 1..{MAX_DAYS} days, got {days}")
    if out.exists():
        raise CertError(f"--out: {out} exists; refusing to overwrite")
    ca, key = load_ca(ca_cert, ca_key)
    cert = issue(key, ca, name, public_key, days)
    write_new(out, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out


__all__ = [
    "CertError",
    "CertFiles",
    "create_certificates",
    "issue_identity",
    "load_ca",
    "subject_alt_name",
    "write_new",
]
