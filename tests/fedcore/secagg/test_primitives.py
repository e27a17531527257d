"""Key agreement, masks, Shamir, AEAD and the neighbour graph (seeded random loops)."""

import os
import random

import numpy as np
import pytest

from fedcore.secagg import aead, graph, keys, shamir
from fedcore.secagg.errors import DecryptionFailed, InvalidKey
from fedcore.secagg.prg import apply_mask, expand_mask

SESSION = bytes(16)


def test_key_agreement_is_symmetric_and_separated_by_session_and_purpose():
    a, b, c = keys.KeyPair.generate(), keys.KeyPair.generate(), keys.KeyPair.generate()
    ab = keys.agree(a.private, b.public, SESSION, keys.PURPOSE_PAIRWISE)
    assert ab == keys.agree(b.private, a.public, SESSION, keys.PURPOSE_PAIRWISE)
    assert ab == keys.agree(keys.load_private(b.private), a.public, SESSION, keys.PURPOSE_PAIRWISE)
    assert ab != keys.agree(a.private, c.public, SESSION, keys.PURPOSE_PAIRWISE)
    assert ab != keys.agree(a.private, b.public, b"x" * 16, keys.PURPOSE_PAIRWISE)
    assert ab != keys.agree(a.private, b.public, SESSION, keys.PURPOSE_SHARES)
    assert keys.public_of(a.private) == a.public


def test_malformed_and_low_order_keys_are_refused():
    a = keys.KeyPair.generate()
    with pytest.raises(InvalidKey, match="32 bytes"):
        keys.agree(a.private, b"short", SESSION, keys.PURPOSE_SHARES)
    with pytest.raises(InvalidKey, match="key agreement failed"):
        keys.agree(a.private, bytes(32), SESSION, keys.PURPOSE_SHARES)  # the zero point


def test_masks_are_deterministic_per_key_and_look_uniform():
    key = os.urandom(32)
    mask = expand_mask(key, 200_000)
    assert mask.dtype == np.uint32 and mask.shape == (200_000,)
    np.testing.assert_array_equal(mask, expand_mask(key, 200_000))
    np.testing.assert_array_equal(mask[:1000], expand_mask(key, 1000))  # a prefix, same stream
    assert np.mean(mask == expand_mask(os.urandom(32), 200_000)) < 1e-3
    counts = np.bincount((mask >> 28).astype(np.int64), minlength=16)  # top 4 bits
    chi2 = float(((counts - mask.size / 16) ** 2 / (mask.size / 16)).sum())
    assert chi2 < 60  # 15 degrees of freedom: p < 1e-6 if uniform
    assert abs(mask.astype(np.float64).mean() / 2**32 - 0.5) < 0.005


def test_apply_mask_adds_and_removes_mod_2_32():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    acc = x.copy()
    key = os.urandom(32)
    apply_mask(acc, key, +1)
    assert not np.array_equal(acc, x)
    apply_mask(acc, key, -1, np.empty(1004, np.uint32))
    np.testing.assert_array_equal(acc, x)
    with pytest.raises(ValueError, match="scratch"):
        expand_mask(key, 1000, np.empty(1000, np.uint32))


def test_shamir_any_t_shares_reconstruct_and_fewer_do_not():
    rng = random.Random(1)
    for _ in range(40):
        holders = rng.randint(1, 30)
        t = rng.randint(1, holders)
        xs = rng.sample(range(1, shamir.MAX_HOLDERS + 1), holders)
        secrets = [os.urandom(32) for _ in range(rng.randint(1, 3))]
        shares = shamir.split(secrets, xs, t)
        assert shares.shape == (len(secrets), holders, shamir.CHUNKS)
        assert shares.dtype == np.uint32 and int(shares.max()) < shamir.PRIME
        pick = sorted(rng.sample(range(holders), t))
        points = np.array([[xs[j] for j in pick]] * len(secrets))
        got = shamir.reconstruct(points, shares[:, pick, :])
        assert got == secrets
        if t > 1:  # t - 1 shares interpolate some other polynomial
            fewer = shamir.reconstruct(points[:, :-1], shares[:, pick[:-1], :])
            assert all(f != s for f, s in zip(fewer, secrets, strict=True))


def test_shamir_rejects_bad_points_and_flags_impossible_secrets():
    with pytest.raises(ValueError, match="distinct"):
        shamir.split([bytes(32)], [1, 1, 2], 2)
    with pytest.raises(ValueError, match="1..65536"):
        shamir.split([bytes(32)], [0, 1], 2)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split([bytes(32)], [1, 2], 3)
    secret = os.urandom(32)
    shares = shamir.split([secret], [1, 2, 3], 3)
    bad = shares.copy()
    bad[0, 0, 0] = (int(bad[0, 0, 0]) + 1) % shamir.PRIME
    assert shamir.reconstruct(np.array([[1, 2, 3]]), bad)[0] != secret  # caught by the caller
    impossible = np.full((1, 1, shamir.CHUNKS), 65536)  # a constant no 16-bit chunk can be
    assert shamir.reconstruct(np.array([[4]]), impossible) == [None]
    with pytest.raises(ValueError, match="field elements"):
        shamir.reconstruct(np.array([[4]]), impossible + 1)


def test_aead_binds_round_sender_and_recipient():
    key = os.urandom(32)
    ad = aead.associated_data(SESSION, 3, 7)
    sealed = aead.seal(key, b"shares", ad)
    assert aead.open_sealed(key, sealed, ad) == b"shares"
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    for bad_key, bad_sealed, bad_ad in [
        (key, bytes(tampered), ad),  # altered ciphertext
        (key, sealed, aead.associated_data(b"y" * 16, 3, 7)),  # replayed in another round
        (key, sealed, aead.associated_data(SESSION, 3, 8)),  # forwarded to the wrong client
        (os.urandom(32), sealed, ad),
        (key, sealed[:10], ad),
    ]:
        with pytest.raises(DecryptionFailed):
            aead.open_sealed(bad_key, bad_sealed, bad_ad)


@pytest.mark.parametrize("n,k", [(2, 1), (5, 2), (10, 9), (10, 20), (50, 8), (101, 7), (64, 6)])
def test_graph_is_regular_symmetric_and_seeded(n, k):
    seed = os.urandom(32)
    table = graph.neighbours(n, k, seed)
    degree = graph.effective_degree(n, k)
    assert table.shape == (n, degree)  # complete graphs (degree n - 1) included
    assert degree % 2 == 0 or degree == n - 1
    assert all(len(set(table[i].tolist())) == degree for i in range(n))  # distinct neighbours
    adjacency = {(i, int(j)) for i in range(n) for j in table[i]}
    assert all((j, i) in adjacency for i, j in adjacency)
    assert all(i not in table[i] for i in range(n))
    np.testing.assert_array_equal(table, graph.neighbours(n, k, seed))
    for i in (0, n // 2, n - 1):
        np.testing.assert_array_equal(graph.neighbours_of(i, n, k, seed), table[i])
    if degree < n - 1:  # small graphs have few labellings: some other seed must differ
        others = [graph.neighbours(n, k, bytes([b]) * 32) for b in range(8)]
        assert any(not np.array_equal(table, other) for other in others)
