"""Dataset registry and the cached `load_dataset` entry point."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache

from simulations.datasets.base import Dataset
from simulations.datasets.digits import load_digits
from simulations.datasets.files import load_files, load_from_loader
from simulations.datasets.mnist import load_mnist5k
from simulations.datasets.shakespeare import load_shakespeare
from simulations.datasets.synthetic import load_synthetic

Loader = Callable[..., Dataset]

# name -> loader(test_fraction, seed, **options). Options are keyword-only loader parameters.
DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "files": load_files,  # the user's .npz files (path = folder or glob)
    "loader": load_from_loader,  # the user's loader callable: a scenario's [data] loader key
    "mnist5k": load_mnist5k,
    "shakespeare": load_shakespeare,
    "synthetic": load_synthetic,
}


#: the names a scenario's ``[data] dataset`` takes ("loader" comes from ``[data] loader``)
DATASET_NAMES: tuple[str, ...] = tuple(sorted(n for n in DATASETS if n != "loader"))


def dataset_options(name: str) -> tuple[str, ...]:
    """Names of the keyword options dataset ``name`` accepts besides test_fraction and seed."""
    loader = _loader(name)
    params = inspect.signature(loader).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def load_dataset(
    name: str, test_fraction: float = 0.2, seed: int = 0, **options: object
) -> Dataset:
    """Load dataset ``name`` with a seeded stratified train/test split (test = server side).

    Results are cached per (name, test_fraction, seed, options), so every simulated client in a
    process shares one read-only copy. Unknown names or options raise ``ValueError``.
    """
    known = dataset_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(known) if known else "none"
        raise ValueError(f"dataset {name!r} has no option {unknown[0]!r} (options: {accepted})")
    return _load_cached(name, float(test_fraction), int(seed), tuple(sorted(options.items())))


@lru_cache(maxsize=16)
def _load_cached(
    name: str, test_fraction: float, seed: int, options: tuple[tuple[str, object], ...]
) -> Dataset:
    return DATASETS[name](test_fraction=test_fraction, seed=seed, **dict(options))


def _loader(name: str) -> Loader:
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r} (known: {known})") from None
