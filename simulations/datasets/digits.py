"""The UCI 8x8 handwritten digits (vendored, see ``data/README.md``): small, offline, 10 classes."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

from simulations.datasets.base import Dataset, stratified_split

NUM_PIXELS = 64
MAX_INTENSITY = 16.0


def read_digits_csv() -> tuple[np.ndarray, np.ndarray]:
    """Read the vendored CSV: (pixels as int64 of shape (1797, 64) in 0..16, labels 0..9)."""
    source = resources.files("simulations.datasets").joinpath("data/digits.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    return table[:, :NUM_PIXELS], table[:, NUM_PIXELS]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Digits as flat 64-feature rows scaled to [0, 1], stratified by label into train/test."""
    pixels, labels = read_digits_csv()
    x = (pixels / MAX_INTENSITY).astype(np.float32)
    train, test = stratified_split(labels, test_fraction, seed)
    return Dataset.from_split("digits", x, labels, (train, test), 10, (NUM_PIXELS,))
