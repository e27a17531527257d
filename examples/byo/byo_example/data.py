"""The example's data: one CSV file per site (features..., label), made by ``make_data.py``.

``load`` is the loader a scenario names (``[data] loader = "byo_example.data:load"``): fedcore
calls it once per client with ``(partition_id, num_partitions, seed)`` and trains client
``partition_id`` on what it returns. The files are read from ``$BYO_DATA`` (default ``data``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

FEATURES = 8
CLASSES = 4


def data_dir() -> Path:
    """Where the site files are."""
    return Path(os.environ.get("BYO_DATA", "data"))


def load(partition_id: int, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Site ``partition_id``'s examples: float32 features and int64 labels."""
    path = data_dir() / f"site-{partition_id:02d}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} (run make_data.py --sites {num_partitions} first)")
    with path.open(newline="") as file:
        rows = [[float(v) for v in row] for row in csv.reader(file) if row]
    table = np.asarray(rows, dtype=np.float64)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def make_sites(folder: Path, sites: int, seed: int = 0) -> list[Path]:
    """Write ``sites`` CSV files of a 4-class problem; each site sees its own label mix and a
    shifted feature distribution (non-IID, as real sites are)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, size=(CLASSES, FEATURES))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for site in range(sites):
        n = int(rng.integers(80, 160))
        mix = rng.dirichlet(np.full(CLASSES, 1.0))
        y = rng.choice(CLASSES, size=n, p=mix)
        shift = rng.normal(0.0, 0.3, size=FEATURES)
        x = centers[y] + shift + rng.normal(0.0, 1.0, size=(n, FEATURES))
        path = folder / f"site-{site:02d}.csv"
        with path.open("w", newline="") as file:
            csv.writer(file).writerows([[f"{v:.5f}" for v in row] + [int(label)]
                                        for row, label in zip(x, y, strict=True)])
        paths.append(path)
    return paths
