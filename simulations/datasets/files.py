"""A user's own data: ``.npz`` files (``[data] dataset = "files"``) or a loader callable.

``files``: ``path`` is a folder or a glob of ``.npz`` files with arrays ``x`` and ``y`` (read by
`fedcore.datafiles.read_xy`, never unpickled). Several files are the natural partition, one
client per file (its stem is the client's name, in sorted order); one file is a pool that the
scenario's partition cuts, as for the vendored data sets. A ``test.npz`` beside them is the
server's test set; without one, ``test_fraction`` of each client's examples is held out.

``loader``: a callable ``(partition_id, num_partitions, seed) -> (x, y)`` named
``package.module:load`` or by an entry point of group ``fedcore.datasets`` (`DATA_LOADERS`);
it is called once per client, and its arrays are checked like a file's.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedcore.datafiles import DataFileError, check_xy, read_xy
from fedcore.resolve import Registry
from simulations.datasets.base import Dataset, stratified_split

__all__ = ["DATA_LOADERS", "TEST_FILE", "data_files", "load_files", "load_from_loader"]

LoaderFn = Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]

#: user data loaders by name: registered ones and the ``fedcore.datasets`` entry points
DATA_LOADERS: Registry[LoaderFn] = Registry("fedcore.datasets", "data loader")

TEST_FILE = "test.npz"
MAX_FILES = 100_000  # a glob that matches more is a mistake, not a federation


def data_files(path: str) -> tuple[list[Path], Path | None]:
    """The client files ``path`` (a folder or a glob) names, sorted, and its ``test.npz``."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        found = sorted(folder.glob("*.npz"))
    elif folder.is_file():
        found = [folder]
    else:
        found = sorted(Path(p) for p in glob.glob(str(folder)) if Path(p).is_file())
    test = next((f for f in found if f.name == TEST_FILE), None)
    if test is None and folder.is_dir() and (folder / TEST_FILE).is_file():
        test = folder / TEST_FILE
    clients = [f for f in found if f.name != TEST_FILE]
    if not clients:
        raise DataFileError(f"{path}: no .npz files (besides {TEST_FILE}) found there")
    if len(clients) > MAX_FILES:
        raise DataFileError(f"{path}: {len(clients)} files; at most {MAX_FILES}")
    return clients, test


def load_files(test_fraction: float = 0.2, seed: int = 0, *, path: str) -> Dataset:
    """The examples of the ``.npz`` files at ``path`` (see the module docstring)."""
    clients, test = data_files(path)
    parts = [read_xy(f) for f in clients]
    held_out = read_xy(test) if test is not None else None
    name = f"files:{path}"
    return _assemble(name, parts, held_out, test_fraction, seed, [str(f) for f in clients])


def load_from_loader(
    test_fraction: float = 0.2, seed: int = 0, *, loader: str, num_clients: int
) -> Dataset:
    """``num_clients`` clients' examples from the loader ``loader`` names (natural split)."""
    fn = DATA_LOADERS.get(loader)
    if not callable(fn):
        raise DataFileError(f"data loader {loader!r} is a {type(fn).__name__}, not a callable")
    parts = []
    for pid in range(num_clients):
        where = f"data loader {loader!r} (partition {pid})"
        try:
            result = fn(pid, num_clients, seed)
        except Exception as exc:  # the user's code failed: one line, naming it
            text = " ".join(str(exc).split())
            raise DataFileError(f"{where} raised {type(exc).__name__}: {text}") from None
        if not (isinstance(result, tuple) and len(result) == 2):
            raise DataFileError(f"{where}: must return a tuple (x, y), got {type(result).__name__}")
        parts.append(check_xy(result[0], result[1], where))
    sources = [f"data loader {loader!r} (partition {pid})" for pid in range(num_clients)]
    return _assemble(f"loader:{loader}", parts, None, test_fraction, seed, sources)


def _assemble(
    name: str,
    parts: list[tuple[np.ndarray, np.ndarray]],
    held_out: tuple[np.ndarray, np.ndarray] | None,
    test_fraction: float,
    seed: int,
    sources: list[str],
) -> Dataset:
    """One pool from per-client arrays (groups = client index when there are several)."""
    first_x, first_y = parts[0]
    shape, y_tail, kind = first_x.shape[1:], first_y.shape[1:], first_y.dtype.kind
    checked = [*zip(parts, sources, strict=True), *([(held_out, TEST_FILE)] if held_out else [])]
    for (x, y), source in checked:
        if x.shape[1:] != shape:
            raise DataFileError(f"{source}: rows of shape {x.shape[1:]}, others {shape}")
        if y.shape[1:] != y_tail or y.dtype.kind != kind:
            raise DataFileError(
                f"{source}: y of {y.dtype} shape {y.shape[1:]}, others {first_y.dtype} {y_tail}"
            )
    x = np.concatenate([p[0] for p in parts]).reshape(-1, int(np.prod(shape, dtype=np.int64)))
    y = np.concatenate([p[1] for p in parts])
    groups = np.concatenate([np.full(len(p[1]), i, np.int64) for i, p in enumerate(parts)])
    labels = [y] if held_out is None else [y, held_out[1]]
    if kind == "f":
        num_classes = 1 if y.ndim == 1 else int(y.shape[1])
    else:
        num_classes = int(max(int(v.max()) for v in labels)) + 1
    input_shape = tuple(int(n) for n in shape)
    natural = groups if len(parts) > 1 else None
    if held_out is not None:
        hx, hy = held_out
        return Dataset(name, x, y, hx.reshape(len(hx), -1), hy, num_classes, input_shape,
                       groups_train=natural)
    strata = groups if kind == "f" or y.ndim > 1 else groups * num_classes + y
    split = stratified_split(strata, test_fraction, seed)
    return Dataset.from_split(name, x, y, split, num_classes, input_shape, groups=natural)
