"""Reading a user's ``.npz`` example files safely: arrays ``x`` and ``y``, never a pickle.

One reader for every place that takes a user's files (a simulation's ``[data] dataset =
"files"``, ``fedcore data split``, a device's ``--node-config data=...``). Object arrays are
refused without being unpickled (``allow_pickle=False``), and every problem is a
`DataFileError` with one line naming the file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["DataFileError", "check_xy", "read_xy", "write_xy"]


class DataFileError(ValueError):
    """An example file (or a loader's arrays) that cannot be used; the message is one line."""


def check_xy(x: object, y: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as training arrays: ``x`` float32 with a row per example; ``y`` int64 labels
    (classification) or float32 targets (regression). ``where`` starts every error message."""
    for name, array in (("x", x), ("y", y)):
        if not isinstance(array, np.ndarray):
            kind = type(array).__name__
            raise DataFileError(f"{where}: {name} must be a numpy array, got {kind}")
        if array.dtype.hasobject or array.dtype.kind not in "biuf":
            raise DataFileError(f"{where}: {name} must hold numbers, not {array.dtype}")
        if array.ndim == 0:
            raise DataFileError(f"{where}: {name} must have a row per example, got a scalar")
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    if len(x) != len(y) or len(y) == 0:
        raise DataFileError(f"{where}: x has {len(x)} rows and y {len(y)}; need equal, > 0")
    if y.ndim > 2:
        raise DataFileError(f"{where}: y must be one label or target per row, got shape {y.shape}")
    if y.dtype.kind in "biu":
        if y.ndim == 1 and y.min() < 0:
            raise DataFileError(f"{where}: y holds a negative label ({int(y.min())})")
        y_out = np.ascontiguousarray(y, dtype=np.int64)
    else:
        y_out = np.ascontiguousarray(y, dtype=np.float32)
    x_out = np.ascontiguousarray(x, dtype=np.float32)
    if not (np.isfinite(x_out).all() and np.isfinite(y_out).all()):
        raise DataFileError(f"{where}: x and y must be finite (found NaN or inf)")
    return x_out, y_out


def read_xy(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an ``.npz`` file (see `check_xy`); `DataFileError` names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataFileError(f"{path}: not an .npz archive (one array, not named 'x' and 'y')")
    with arrays:
        missing = [key for key in ("x", "y") if key not in arrays.files]
        if missing:
            found = ", ".join(arrays.files) or "none"
            raise DataFileError(
                f"{path}: needs arrays 'x' and 'y' (missing {missing[0]!r}; found: {found})"
            )
        try:
            x, y = arrays["x"], arrays["y"]
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "pickled" in str(exc):
                raise DataFileError(
                    f"{path}: holds object arrays (refused: never unpickled)"
                ) from None
            raise DataFileError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataFileError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    return check_xy(x, y, str(path))


def write_xy(path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray) -> None:
    """Write ``x`` and ``y`` to an ``.npz`` file that `read_xy` reads back."""
    np.savez(Path(path), x=x, y=y)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
