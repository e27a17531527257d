"""MNIST-5k and word-level Shakespeare: shapes, dtypes, ranges, splits, tokenization."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.datasets import DATASETS, load_dataset
from simulations.datasets.mnist import read_mnist5k
from simulations.datasets.shakespeare import (
    EOS,
    MIN_SEQUENCES,
    UNK,
    build_vocab,
    encode,
    read_speeches,
    role_words,
    roles,
    tokenize,
    windows,
)

# --- MNIST-5k ----------------------------------------------------------------------------------


def test_mnist5k_file() -> None:
    images, labels = read_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and np.array_equal(np.bincount(labels), np.full(10, 500))
    assert images.min() == 0 and images.max() == 255


def test_mnist5k_shapes_dtypes_ranges_and_split() -> None:
    d = load_dataset("mnist5k")
    assert d.name == "mnist5k" and d.num_classes == 10 and d.input_shape == (28, 28, 1)
    assert d.x_train.shape == (4000, 784) and d.x_test.shape == (1000, 784)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert not d.sequence_targets and d.vocab is None and d.groups_train is None
    # Stratified: 100 test images of each digit, and train + test are the whole file.
    assert np.array_equal(np.bincount(d.y_test), np.full(10, 100))
    images, _ = read_mnist5k()
    pixels = np.concatenate([d.x_train, d.x_test]) * 255
    restored = np.sort(pixels.round().astype(np.uint8).reshape(-1, 28, 28), axis=0)
    assert np.array_equal(restored, np.sort(images, axis=0))


def test_mnist5k_deterministic_and_seed_dependent() -> None:
    a = DATASETS["mnist5k"](test_fraction=0.2, seed=4)
    b = DATASETS["mnist5k"](test_fraction=0.2, seed=4)
    c = DATASETS["mnist5k"](test_fraction=0.2, seed=5)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


# --- tokenization -------------------------------------------------------------------------------


def test_tokenize_lowercases_keeps_inner_apostrophes_and_drops_punctuation() -> None:
    text = "O'er the hills, 'tis MY lord's--to-night! I' the end?"
    assert tokenize(text) == [
        "o'er", "the", "hills", "tis", "my", "lord's", "to", "night", "i", "the", "end"
    ]  # fmt: skip


def test_build_vocab_ranks_by_count_then_alphabet() -> None:
    speeches = [["b", "a", "c", EOS], ["a", "b", "d", EOS], ["a", EOS]]
    assert build_vocab(speeches, 5) == (UNK, EOS, "a", "b", "c")
    assert build_vocab(speeches, 6) == (UNK, EOS, "a", "b", "c", "d")
    with pytest.raises(ValueError, match=r"vocab_size must be in \[3, 6\], got 7"):
        build_vocab(speeches, 7)
    with pytest.raises(ValueError, match="vocab_size"):
        build_vocab(speeches, 2)


def test_encode_maps_unknown_words_to_unk() -> None:
    vocab = (UNK, EOS, "the", "king")
    ids = encode(["the", "king", "is", "dead", EOS], vocab)
    assert ids.dtype == np.int64 and ids.tolist() == [2, 3, 0, 0, 1]


def test_windows_targets_are_inputs_shifted_by_one() -> None:
    ids = np.arange(11, dtype=np.int64)
    x, y = windows(ids, 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    x, y = windows(ids[:4], 3)  # exactly one window needs seq_len + 1 tokens
    assert x.tolist() == [[0, 1, 2]] and y.tolist() == [[1, 2, 3]]
    assert windows(ids[:3], 3)[0].shape == (0, 3)


# --- Shakespeare --------------------------------------------------------------------------------


def test_vendored_corpus() -> None:
    speeches = read_speeches()
    assert len(speeches) > 9000
    assert len({play for play, _, _ in speeches}) == 10
    assert speeches[0][:2] == ("hamlet", "BERNARDO") and speeches[0][2] == "Who's there?"
    words = sum(len(tokenize(text)) for _, _, text in speeches)
    assert 200_000 < words < 250_000
    assert not any(c in text for _, _, text in speeches for c in "[]_*\t")


def test_shakespeare_shapes_vocab_and_targets() -> None:
    d = load_dataset("shakespeare", 0.2, 0, num_clients=4, vocab_size=500, seq_len=12)
    assert d.name == "shakespeare" and d.sequence_targets
    assert d.num_classes == 500 and d.input_shape == (12,)
    assert d.vocab is not None and len(d.vocab) == 500 and d.vocab[:3] == (UNK, EOS, "the")
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.dtype == np.int64 and y.dtype == np.int64
        assert x.shape == y.shape and x.shape[1] == 12
        assert x.min() >= 0 and x.max() < 500 and y.min() >= 0 and y.max() < 500
    # Each role's stream is cut into consecutive windows: y[i] = x[i] shifted by one, and the
    # last target of a window is the first input of the next window of the same role.
    x, y = np.concatenate([d.x_train, d.x_test]), np.concatenate([d.y_train, d.y_test])
    assert np.array_equal(x[:, 1:], y[:, :-1])
    ids = encode(role_words()[roles(1, 12)[0]], d.vocab)
    hamlet_x, hamlet_y = windows(ids, 12)
    pooled = np.concatenate([d.x_train[d.groups_train == 0], d.x_test[d.groups_test == 0]])
    assert sorted(map(tuple, pooled)) == sorted(map(tuple, hamlet_x))
    assert np.array_equal(hamlet_y[:-1, -1], hamlet_x[1:, 0])
    # Rare words are <unk>: with 500 words about a quarter of the tokens.
    assert 0.1 < (d.y_train == 0).mean() < 0.4


def test_shakespeare_clients_are_the_most_talkative_roles() -> None:
    assert roles(3) == [
        ("hamlet", "HAMLET"), ("othello", "IAGO"), ("antony-and-cleopatra", "MARK ANTONY")
    ]  # fmt: skip
    d = load_dataset("shakespeare", 0.25, 1, num_clients=6, seq_len=10)
    assert d.groups_train is not None and d.groups_test is not None
    train_per_role = np.bincount(d.groups_train, minlength=6)
    test_per_role = np.bincount(d.groups_test, minlength=6)
    total = train_per_role + test_per_role
    assert np.all(np.abs(test_per_role - 0.25 * total) <= 1)  # stratified by role
    assert np.all(np.diff(total) <= 0)  # ranked by words, most first
    assert len(role_words()) == 428


def test_shakespeare_deterministic_and_seed_dependent() -> None:
    a = DATASETS["shakespeare"](test_fraction=0.2, seed=3, num_clients=3, seq_len=8)
    b = DATASETS["shakespeare"](test_fraction=0.2, seed=3, num_clients=3, seq_len=8)
    c = DATASETS["shakespeare"](test_fraction=0.2, seed=4, num_clients=3, seq_len=8)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_test, c.x_test)
    # The vocabulary comes from the whole corpus: the same whatever the roles or split.
    assert a.vocab == c.vocab == load_dataset("shakespeare", num_clients=1, seq_len=8).vocab


def test_shakespeare_option_errors() -> None:
    limit = r"num_clients must be <= \d+ \(the roles with at least 5 windows of 20 words\)"
    with pytest.raises(ValueError, match=rf"{limit}, got 5000"):
        load_dataset("shakespeare", num_clients=5000)
    with pytest.raises(ValueError, match="vocab_size must be in"):
        load_dataset("shakespeare", num_clients=2, vocab_size=10**6)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        load_dataset("shakespeare", num_clients=2, seq_len=0)
    assert MIN_SEQUENCES == 5
