"""The `Dataset` container; every loader splits it with `fedcore.split.stratified_split`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcore.split import stratified_split

__all__ = ["Dataset", "stratified_split"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A centralised dataset: the training pool that partitioners split among clients, and a
    test split that the server holds out for evaluation.

    Arrays are read-only because loaded datasets are cached and shared by every client in a
    process; copy before changing them. ``x_*`` have one flat row per example: float32
    features for classifiers, int64 token ids ``(N, T)`` for language models; ``input_shape``
    is the shape a row stands for (``(28, 28, 1)`` for MNIST images stored as 784 features).
    ``y_*`` are int64 in ``[0, num_classes)``: one label per example ``(N,)``, or one target
    per position ``(N, T)`` for language models (the next token; ``num_classes`` is then the
    vocabulary size and ``vocab`` its words by id). ``groups_*`` name the client that
    generated each example for datasets with a natural per-client split (``synthetic``,
    ``shakespeare``), else ``None``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    groups_train: np.ndarray | None = None
    groups_test: np.ndarray | None = None
    vocab: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for field in ("x_train", "y_train", "x_test", "y_test", "groups_train", "groups_test"):
            array = getattr(self, field)
            if array is not None:
                array.setflags(write=False)
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"dataset {self.name!r}: x and y lengths differ")

    @classmethod
    def from_split(
        cls,
        name: str,
        x: np.ndarray,
        y: np.ndarray,
        split: tuple[np.ndarray, np.ndarray],
        num_classes: int,
        input_shape: tuple[int, ...],
        groups: np.ndarray | None = None,
        vocab: tuple[str, ...] | None = None,
    ) -> Dataset:
        """Index every example array by ``split = (train_idx, test_idx)``."""
        train, test = split
        return cls(
            name=name,
            x_train=x[train],
            y_train=y[train],
            x_test=x[test],
            y_test=y[test],
            num_classes=num_classes,
            input_shape=input_shape,
            groups_train=None if groups is None else groups[train],
            groups_test=None if groups is None else groups[test],
            vocab=vocab,
        )

    @property
    def sequence_targets(self) -> bool:
        """True for language models: a target per position, ``y`` shaped ``(N, T)``."""
        return self.y_train.ndim == 2 and not self.regression

    @property
    def regression(self) -> bool:
        """True when ``y`` holds float targets (``num_classes`` is then their width)."""
        return self.y_train.dtype.kind == "f"

    @property
    def num_train(self) -> int:
        """Number of training examples (the pool that is partitioned among clients)."""
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        """Number of held-out test examples."""
        return len(self.y_test)
