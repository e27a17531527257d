"""Offline datasets for simulations: the vendored UCI digits, MNIST-5k and Shakespeare (word-level
next-word prediction, one client per role), and FedProx's SYNTHETIC(alpha, beta).

``files`` and ``loader`` read a user's own data (``simulations.datasets.files``).

``load_dataset(name, test_fraction, seed, **options)`` returns a cached, read-only `Dataset`
whose training pool is split among clients by `simulations.partition` and whose test split is
held out on the server.
"""

from simulations.datasets.base import Dataset, stratified_split
from simulations.datasets.digits import load_digits
from simulations.datasets.files import DATA_LOADERS, load_files, load_from_loader
from simulations.datasets.mnist import load_mnist5k
from simulations.datasets.registry import DATASET_NAMES, DATASETS, dataset_options, load_dataset
from simulations.datasets.shakespeare import load_shakespeare
from simulations.datasets.synthetic import load_synthetic, synthetic_client

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DATA_LOADERS",
    "Dataset",
    "dataset_options",
    "load_dataset",
    "load_digits",
    "load_files",
    "load_from_loader",
    "load_mnist5k",
    "load_shakespeare",
    "load_synthetic",
    "stratified_split",
    "synthetic_client",
]
