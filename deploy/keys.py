"""A device's identity: an ECDSA key pair in OpenSSH format, as Flower's SuperNode auth wants.

``fedcore clients keygen --out DIR`` (or, on a device install without the ``fedcore`` command,
``python -m deploy.keys --out DIR``) writes ``node.key`` (the private key, 0600, never leaves
the device; ``flower-supernode --auth-supernode-private-key`` reads it) and ``node.pub`` (the
public key the operator enrols with ``fedcore clients enroll``). A key is named by its
fingerprint, ``SHA256:`` + base64 of the SHA-256 of its OpenSSH blob (what ``ssh-keygen -l``
prints). Light on purpose (``cryptography`` only): it runs on the device.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.certs import write_new

PRIVATE_KEY, PUBLIC_KEY = "node.key", "node.pub"
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MAX_KEY_FILE = 16 * 1024  # an OpenSSH public key line is well under 1 KiB


class KeyFileError(ValueError):
    """A key file that is missing, too large, or not an accepted public key (one line)."""


@dataclass(frozen=True)
class NodeKey:
    """A device's public key: the OpenSSH line, its fingerprint, Flower's PEM bytes."""

    openssh: str
    fingerprint: str
    flower_bytes: bytes  # what Flower's SuperLink stores and the Fleet auth header carries


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:...`` of the key's OpenSSH wire blob (as ``ssh-keygen -l`` shows it)."""
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def node_key(public_key: ec.EllipticCurvePublicKey) -> NodeKey:
    """The ``NodeKey`` of an EC public key."""
    openssh = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return NodeKey(openssh, fingerprint(public_key), pem)


def parse_public_key(data: bytes, source: str) -> NodeKey:
    """An OpenSSH ECDSA public key on a NIST curve (what ``keygen`` writes), checked."""
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{source}: not an OpenSSH public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NIST_CURVES):
        raise KeyFileError(
            f"{source}: needs an ECDSA key on P-256/384/521 (fedcore clients keygen makes one)"
        )
    return node_key(key)


def read_public_key(path: Path) -> NodeKey:
    """``parse_public_key`` of a file, read within a small budget."""
    if not path.is_file():
        raise KeyFileError(f"{path}: no such file")
    if path.stat().st_size > MAX_KEY_FILE:
        raise KeyFileError(f"{path}: {path.stat().st_size} bytes is too large for a public key")
    return parse_public_key(path.read_bytes(), str(path))


def generate_node_keys(out: Path) -> tuple[Path, Path, NodeKey]:
    """Write a new P-384 key pair to ``out``; never overwrite. Returns (key, pub, NodeKey)."""
    private_path, public_path = out / PRIVATE_KEY, out / PUBLIC_KEY
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"--out: {path} exists; refusing to overwrite (pick another --out)")
    out.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP384R1())
    key = node_key(private.public_key())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    write_new(private_path, pem, 0o600)
    write_new(public_path, (key.openssh + "\n").encode("ascii"), 0o644)
    return private_path, public_path, key


def main(argv: list[str] | None = None) -> int:
    """``python -m deploy.keys --out DIR``: ``generate_node_keys``, one line; exit 2 on a
    mistake (a key already there, a folder that cannot be written)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m deploy.keys", description="Make this device's key pair (its identity)."
    )
    parser.add_argument("--out", type=Path, required=True, help="Folder for node.key/node.pub.")
    out = parser.parse_args(argv).out
    try:
        private, public, key = generate_node_keys(out)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: --out: cannot write in {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {private} (keep it on this device) and {public} ({key.fingerprint})")
    return 0


__all__ = [
    "KeyFileError",
    "NodeKey",
    "fingerprint",
    "generate_node_keys",
    "node_key",
    "parse_public_key",
    "read_public_key",
]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
