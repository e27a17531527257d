"""A device's node id kept across restarts: an agent killed and started again goes on as its
node, in the next round already.

The SuperLink counts a node online until it misses two heartbeats (up to 60 s after its agent
died) and meanwhile refuses to activate its key again, as it refuses a twin. An agent given a
state folder (``fedcore-device --state-dir``) writes its node id there once it has joined;
started again and refused, it asks whether the SuperLink still counts that node online with a
heartbeat signed by its key, which the SuperLink acknowledges only for the key's own node (it
checks the pair), and goes on as that node. The file is locked (``flock``) while its agent
runs: a second agent with the same key on this device finds it locked, neither reads nor
writes it, and is refused as a twin; a killed agent's lock goes with its process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("fedcore.device")

MAX_BYTES = 4096
NODE_ID_RANGE = (1, 2**64 - 1)  # Flower's node ids are unsigned 64-bit, 0 is the SuperLink


class NodeFile:
    """``DIR/node-<digest>.json``: the node id of one key on one SuperLink."""

    def __init__(self, folder: Path, superlink: str, public_key: bytes) -> None:
        digest = hashlib.sha256(superlink.encode() + b"\0" + public_key).hexdigest()[:16]
        self.path = Path(folder) / f"node-{digest}.json"
        self._fd: int | None = None

    def claim(self) -> int | None:
        """Lock the file for this process; the node id it remembers (None: no file yet, an
        unreadable one, or another running agent holds it)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot keep the node id in %s (%s): a restart waits for the "
                        "SuperLink to let the old node lapse", self.path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.warning("%s is held by another agent with this key on this device",
                        self.path)
            return None
        self._fd = fd
        try:
            record = json.loads(os.pread(fd, MAX_BYTES, 0) or b"{}")
        except (OSError, ValueError):
            return None
        node_id = record.get("node_id") if isinstance(record, dict) else None
        low, high = NODE_ID_RANGE
        if isinstance(node_id, int) and not isinstance(node_id, bool) and low <= node_id <= high:
            return node_id
        return None

    def remember(self, node_id: int) -> None:
        """Write ``node_id`` (only while this process holds the file)."""
        if self._fd is None:
            return
        data = json.dumps({"node_id": int(node_id)}).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as exc:
            log.warning("cannot write the node id to %s: %s", self.path, exc)

    def release(self) -> None:
        """Unlock (the file stays: the next start of this agent reads it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["NodeFile"]
