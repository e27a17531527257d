"""Identity certificates and signatures (``fedcore.secagg.identity``)."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcore.secagg.identity import (
    DEVICE_IDENTITY,
    Authority,
    InvalidIdentity,
    SimulatedAuthority,
    make_ca,
    survivors_message,
)


def _cert(ca_key, ca, name, key, start, end, usage=True):
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([DEVICE_IDENTITY]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_expired_garbled_oversized_and_foreign_certificates_are_refused():
    ca_key, ca = make_ca()
    authority = Authority(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    good = _cert(ca_key, ca, "dev", key, now - day, now + day)
    assert authority.verify(good).name == "dev"
    cases = {
        "expired": _cert(ca_key, ca, "dev", key, now - 3 * day, now - day),
        "not valid yet": _cert(ca_key, ca, "dev", key, now + day, now + 2 * day),
        "device identity": _cert(ca_key, ca, "dev", key, now - day, now + day, usage=False),
        "not issued by this CA": good[:-3] + b"\0\0\0",
        "oversized": b"\x30" * 5000,
        "no identity certificate": b"",
    }
    other_key, other = make_ca("other")
    cases["not issued by this CA "] = _cert(other_key, other, "dev", key, now - day, now + day)
    for why, der in cases.items():
        with pytest.raises(InvalidIdentity) as caught:
            authority.verify(der)
        assert why.strip() in str(caught.value) or why == "oversized", (why, caught.value)


def test_simulated_identities_are_the_same_key_in_every_process():
    authority = SimulatedAuthority.create()
    again = SimulatedAuthority(authority.ca_key_pem, authority.ca_pem, authority.secret)
    one, two = authority.identity(3), again.identity(3)
    assert one.key.private_numbers() == two.key.private_numbers()
    assert authority.identity(4).key.private_numbers() != one.key.private_numbers()
    peer = authority.authority().verify(one.cert)
    peer.verify(one.sign(b"m"), b"m", "test")
    with pytest.raises(InvalidIdentity):
        peer.verify(one.sign(b"m"), b"n", "test")


def test_a_survivor_set_signs_as_one_ordered_set():
    assert survivors_message(b"s" * 16, 3, (3, 1, 2)) == survivors_message(b"s" * 16, 3, (1, 2, 3))
    assert survivors_message(b"s" * 16, 3, (1, 2)) != survivors_message(b"s" * 16, 4, (1, 2))
