"""Checkpoints: the global model (and the server optimizer's state) after each round.

One ``safetensors`` file per round, written to a temporary name, fsynced and renamed, so a
checkpoint is either complete or absent; its SHA-256 goes into the round row, and the row is
committed only after the file is durable. Reading checks the digest before trusting the bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARAMS = "params"
SERVER_PREFIX = "server/"
FORMAT = "fedcore-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match its recorded SHA-256."""


@dataclass(frozen=True)
class Checkpoint:
    """A round's global vector plus named server-optimizer arrays."""

    params: np.ndarray
    server_state: dict[str, np.ndarray]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path(root: Path, run_id: int, round_number: int) -> Path:
    """Where round ``round_number`` of run ``run_id`` is kept under ``root``."""
    return root / f"run-{run_id}" / f"round-{round_number:05d}.safetensors"


def write_checkpoint(
    path: Path, params: np.ndarray, server_state: dict[str, np.ndarray] | None = None
) -> str:
    """Write durably (tmp file, fsync, rename, fsync dir); return the file's SHA-256."""
    from safetensors.numpy import save

    tensors = {PARAMS: np.ascontiguousarray(params)}
    for name, value in (server_state or {}).items():
        tensors[SERVER_PREFIX + name] = np.ascontiguousarray(value)
    payload = save(tensors, metadata={"format": FORMAT})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return hashlib.sha256(payload).hexdigest()


def read_checkpoint(path: Path, expected_sha256: str | None) -> Checkpoint:
    """Load a checkpoint, refusing one whose digest differs from ``expected_sha256``; a
    missing digest (a NULL in the store) is an error too, never a reason to skip the check."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not isinstance(expected_sha256, str) or len(expected_sha256) != 64:
        raise CheckpointError(f"checkpoint {path} has no recorded checksum; refusing to load it")
    try:
        payload = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing") from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} does not match its checksum "
            f"(recorded {expected_sha256[:12]}…, file {actual[:12]}…)"
        )
    try:
        tensors = load(payload)
    except SafetensorError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from None
    if PARAMS not in tensors:
        raise CheckpointError(f"checkpoint {path} has no {PARAMS!r} tensor")
    server = {
        k.removeprefix(SERVER_PREFIX): v for k, v in tensors.items() if k.startswith(SERVER_PREFIX)
    }
    return Checkpoint(tensors[PARAMS], server)
