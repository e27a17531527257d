"""Device identities for SecAgg+'s active-adversary checks: certificates and signatures.

An identity certificate is a small X.509 certificate, signed by the operator's CA (``fedcore
certs create``; its key may stay off the server), that binds an enrolled device's name (the
common name) to its signing key (the ECDSA key it enrolled, ``fedcore clients keygen``). It
carries the fedcore device-identity extended key usage, so no other certificate of the same CA
(the SuperLink's TLS certificate, whose key the server holds) passes as one.

With identities, a client signs each key pair it advertises, and in the consistency check it
signs the round's survivor set; a neighbour verifies both against the certificate, and the
certificate against the CA, before it uses a key or reveals a share (Bonawitz et al., CCS 2017,
the active-adversary protocol). ``Authority`` verifies (caching each certificate it checked);
``Identity`` is one device's key and certificate; ``issue`` makes a certificate;
``SimulatedAuthority`` is a CA of one simulated run that derives every node's key from a run
secret, so each process of a simulation finds the same key for a node without sharing state.
Only ``cryptography``: this runs on the device.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcore.secagg.errors import ProtocolViolation

#: extended key usage of a fedcore device identity (an OID under the UUID arc, ITU-T X.667)
DEVICE_IDENTITY = x509.ObjectIdentifier("2.25.237950424616180327004936557806394061337")
MAX_CERT_BYTES = 4096  # an identity certificate is ~500 bytes
MAX_SIGNATURE_BYTES = 160  # a DER ECDSA signature on P-521 is at most 139 bytes
_KEYS = b"fedcore/secagg/v1/advertised-keys"
_SURVIVORS = b"fedcore/secagg/v1/survivor-set"


class InvalidIdentity(ProtocolViolation):
    """A certificate or signature that does not prove who sent a key or a survivor set."""


def keys_message(c_pk: bytes, s_pk: bytes) -> bytes:
    """What a client signs for one advertised key pair."""
    return _KEYS + c_pk + s_pk


def survivors_message(session: bytes, round_number: int, survivors: Sequence[int]) -> bytes:
    """What a client signs in the consistency check: the round and its survivor set U3."""
    ordered = sorted(survivors)
    return b"".join(
        (_SURVIVORS, struct.pack("<I", len(session)), session, struct.pack("<QI", round_number,
         len(ordered)), struct.pack(f"<{len(ordered)}I", *ordered))
    )


def _hash_for(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()


@dataclass(frozen=True)
class Peer:
    """A verified certificate: the enrolled name and the signing key it binds."""

    name: str
    key: ec.EllipticCurvePublicKey
    expires: datetime.datetime

    def verify(self, signature: bytes, data: bytes, what: str) -> None:
        """``InvalidIdentity`` unless ``signature`` is this peer's over ``data``."""
        if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
            raise InvalidIdentity(f"{what}: no valid signature by {self.name!r}")
        try:
            self.key.verify(signature, data, ec.ECDSA(_hash_for(self.key)))
        except InvalidSignature:
            raise InvalidIdentity(f"{what}: the signature is not {self.name!r}'s") from None


@dataclass
class Authority:
    """The CA that certifies device identities, as every participant checks against it."""

    ca: x509.Certificate
    _checked: dict[bytes, Peer] = field(default_factory=dict, repr=False)

    @classmethod
    def from_pem(cls, pem: bytes) -> Authority:
        """The authority of a PEM CA certificate (``ValueError`` if it is not one)."""
        ca = x509.load_pem_x509_certificate(pem)
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise ValueError("the certificate is not a CA certificate")
        return cls(ca)

    def verify(self, der: bytes) -> Peer:
        """The peer a DER identity certificate names; ``InvalidIdentity`` unless this CA
        signed it, it is valid now, and it is a device identity (not a TLS certificate)."""
        if not isinstance(der, bytes) or not 0 < len(der) <= MAX_CERT_BYTES:
            raise InvalidIdentity("no identity certificate (or an oversized one)")
        peer = self._checked.get(der)
        if peer is None:
            peer = self._parse(der)
            if len(self._checked) > 65536:
                self._checked.clear()
            self._checked[der] = peer
        if datetime.datetime.now(datetime.UTC) > peer.expires:
            raise InvalidIdentity(f"the identity certificate of {peer.name!r} has expired")
        return peer

    def _parse(self, der: bytes) -> Peer:
        try:
            cert = x509.load_der_x509_certificate(der)
            cert.verify_directly_issued_by(self.ca)
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise InvalidIdentity(f"identity certificate not issued by this CA ({exc})") from None
        try:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, x509.ExtensionNotFound):
            usage = x509.ExtendedKeyUsage([])
        if DEVICE_IDENTITY not in usage or not names:
            raise InvalidIdentity("the certificate is not a fedcore device identity")
        now = datetime.datetime.now(datetime.UTC)
        name = str(names[0].value)
        if now > cert.not_valid_after_utc:
            raise InvalidIdentity(f"the identity certificate of {name!r} has expired")
        if now < cert.not_valid_before_utc:
            raise InvalidIdentity(f"the identity certificate of {name!r} is not valid yet")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidIdentity(f"the identity of {name!r} is not an ECDSA key")
        return Peer(name, key, cert.not_valid_after_utc)


@dataclass
class Identity:
    """One device's signing key and its identity certificate (DER)."""

    key: ec.EllipticCurvePrivateKey
    cert: bytes
    name: str

    def sign(self, data: bytes) -> bytes:
        """An ECDSA signature over ``data``."""
        return self.key.sign(data, ec.ECDSA(_hash_for(self.key)))

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> Identity:
        """A device's identity from its key (``node.key``: OpenSSH or PEM) and certificate."""
        raw = key_path.read_bytes()[:16384]
        if raw.lstrip().startswith(b"-----BEGIN OPENSSH"):
            key = serialization.load_ssh_private_key(raw, None)
        else:
            key = serialization.load_pem_private_key(raw, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an ECDSA private key")
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes()[:MAX_CERT_BYTES * 2])
        if cert.public_key() != key.public_key():
            raise ValueError(f"{cert_path} certifies another key than {key_path}")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        return cls(key, cert.public_bytes(serialization.Encoding.DER), name)


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    name: str,
    key: ec.EllipticCurvePublicKey,
    days: float = 365,
) -> x509.Certificate:
    """An identity certificate binding ``name`` to ``key``, signed by the CA."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)  # clock skew
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcore"),
            x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
        ]))
        .issuer_name(ca.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([DEVICE_IDENTITY]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def make_ca(name: str = "fedcore CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh self-signed CA (a simulation's, or a test's; ``fedcore certs create`` makes
    the operator's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True)
class SimulatedAuthority:
    """The CA of one simulated run; node ``i``'s key comes from the run's secret (picklable:
    Flower's simulation workers each rebuild the same keys, and issue their own certificates).
    """

    ca_key_pem: bytes
    ca_pem: bytes
    secret: bytes

    @classmethod
    def create(cls) -> SimulatedAuthority:
        """A fresh CA and secret."""
        key, cert = make_ca("fedcore simulated CA")
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(pem, cert.public_bytes(serialization.Encoding.PEM), os.urandom(32))

    def authority(self) -> Authority:
        """What every participant verifies against (one per process)."""
        return _authorities(self.ca_pem)

    def credentials(self, partition: int) -> Credentials:
        """What simulated node ``partition`` takes into SecAgg+."""
        return Credentials(self.identity(partition), self.authority())

    def identity(self, partition: int) -> Identity:
        """Simulated node ``partition``'s identity (name ``node-<partition>``)."""
        cached = _IDENTITIES.get((self.secret, partition))
        if cached is not None:
            return cached
        order = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
        digest = hmac.new(self.secret, b"node-key" + struct.pack("<Q", partition),
                          hashlib.sha512).digest()
        key = ec.derive_private_key(int.from_bytes(digest, "big") % (order - 1) + 1,
                                    ec.SECP256R1())
        ca_key = serialization.load_pem_private_key(self.ca_key_pem, None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(self.ca_pem)
        name = f"node-{partition}"
        cert = issue(ca_key, ca, name, key.public_key(), days=2)
        identity = Identity(key, cert.public_bytes(serialization.Encoding.DER), name)
        if len(_IDENTITIES) > 4096:
            _IDENTITIES.clear()
        _IDENTITIES[(self.secret, partition)] = identity
        return identity


@dataclass(frozen=True)
class Credentials:
    """What a device with an identity takes into SecAgg+: its identity and the CA it trusts."""

    identity: Identity
    authority: Authority


_IDENTITIES: dict[tuple[bytes, int], Identity] = {}
_AUTHORITIES: dict[bytes, Authority] = {}


def _authorities(pem: bytes) -> Authority:
    if pem not in _AUTHORITIES:
        _AUTHORITIES[pem] = Authority.from_pem(pem)
    return _AUTHORITIES[pem]


__all__ = [
    "DEVICE_IDENTITY",
    "Authority",
    "Credentials",
    "Identity",
    "InvalidIdentity",
    "Peer",
    "SimulatedAuthority",
    "issue",
    "keys_message",
    "make_ca",
    "survivors_message",
]

