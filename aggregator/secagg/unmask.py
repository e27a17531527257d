"""Unmasking: rebuild secrets from shares (batched Lagrange) and strip masks from the sum.

Reconstruction is vectorised over all owners at once (``shamir.reconstruct``) and checked:
a self-mask seed against the commitment its owner sent, a secret key against its public
key. A check that fails (a lying share holder) is retried on the other cyclic windows of t
shares when there are more than t (so one liar is always outvoted); otherwise the round
aborts. Mask removal is one AES-CTR keystream and one in-place uint32 add per mask over the
whole vector: for n survivors and m dropouts, n + (about) m * k keystreams, no Python loop
over elements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedcore.secagg import keys, shamir
from fedcore.secagg.errors import Aborted, InvalidKey
from fedcore.secagg.fixedpoint import TAIL
from fedcore.secagg.prg import apply_mask

if TYPE_CHECKING:
    from aggregator.secagg.server import SecAggServer

RETRIES = 64


def _valid(server: SecAggServer, owner: int, secret: bytes | None, is_seed: bool) -> bool:
    if secret is None:
        return False
    if is_seed:
        return keys.commitment(server.session, owner, secret) == server.known.commitments[owner]
    try:
        return keys.public_of(secret) == server.known.s_pk[owner]
    except InvalidKey:  # pragma: no cover - any 32 bytes are an X25519 private key
        return False


def _batch(shares: list[list[tuple[int, bytes]]]) -> list[bytes | None]:
    xs = np.array([[x for x, _ in rows] for rows in shares], dtype=np.int64)
    ys = np.frombuffer(b"".join(y for rows in shares for _, y in rows), "<u4")
    ys = ys.reshape(len(shares), -1, shamir.CHUNKS)
    return shamir.reconstruct(xs, ys)


def reconstruct(
    server: SecAggServer, survivors: frozenset[int], dropped: frozenset[int]
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Self-mask seeds of ``survivors`` and secret keys of ``dropped``, checked; ``Aborted``
    names the clients whose secrets cannot be rebuilt."""
    t = server.params.t
    owners = sorted(survivors | dropped)
    short = {u: len(server.known.shares.get(u, [])) for u in owners}
    short = {u: c for u, c in short.items() if c < t}
    if short:
        listing = ", ".join(f"client {u}: {c}" for u, c in list(short.items())[:8])
        raise Aborted(
            f"secure aggregation aborted: fewer than t = {t} shares to unmask "
            f"{len(short)} client(s) ({listing})"
        )
    if not owners:
        return {}, {}
    first = [server.known.shares[u][:t] for u in owners]
    secrets = dict(zip(owners, _batch(first), strict=True))
    for owner in owners:
        is_seed = owner in survivors
        pool = server.known.shares[owner]
        shift = 0
        while not _valid(server, owner, secrets[owner], is_seed):
            shift += 1  # next cyclic window of t shares: one liar among > t is always skipped
            if shift >= len(pool) or shift > RETRIES:
                kind = "self-mask seed" if is_seed else "secret key"
                raise Aborted(
                    f"secure aggregation aborted: the shares of client {owner}'s {kind} are "
                    f"inconsistent (a share holder lied or a share was corrupted)"
                )
            window = (pool[shift:] + pool[:shift])[:t]
            secrets[owner] = _batch([window])[0]
    seeds = {u: s for u, s in secrets.items() if u in survivors and s is not None}
    secret_keys = {u: s for u, s in secrets.items() if u in dropped and s is not None}
    return seeds, secret_keys


def masks_to_remove(
    server: SecAggServer, seeds: dict[int, bytes], secret_keys: dict[int, bytes]
) -> np.ndarray:
    """The sum (host uint32) of the survivors' self masks and of the pairwise masks they
    share with dropped clients, as the survivors added them: subtract it from the total."""
    correction = np.zeros(server.vector_size + TAIL, dtype=np.uint32)
    scratch = np.empty(correction.size + 4, dtype=np.uint32)
    session = server.session
    for owner, seed in seeds.items():
        key = keys.derive_key(seed, session, keys.PURPOSE_SELF, owner.to_bytes(4, "big"))
        apply_mask(correction, key, +1, scratch)
    masked = server.survivors["masked"]
    for owner, secret in secret_keys.items():
        for peer in sorted(server.neighbours[owner] & masked):
            key = keys.agree(secret, server.known.s_pk[peer], session, keys.PURPOSE_PAIRWISE)
            # the survivor added +mask if its index is lower than the dropped client's
            apply_mask(correction, key, +1 if peer < owner else -1, scratch)
    return correction
