"""``fedcore data split``: cut one ``.npz`` file into one file per client, like a scenario would.

The files it writes (``DIR/client-0000.npz`` ...) are what ``[data] dataset = "files"`` and a
device's ``fedcore client --data FILE`` read; a summary table shows each client's label counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import fail
from cli.options import Json

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)
SPLITS = ("iid", "dirichlet")
MAX_SHOWN_CLASSES = 20  # the table shows each label's count up to this many classes


@app.command("split")
def split(
    source: Annotated[Path, typer.Argument(help=".npz file with arrays x and y.")],
    clients: Annotated[int, typer.Option("--clients", "-n", help="Number of clients.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write client files to.")],
    scheme: Annotated[str, typer.Option("--partition", "-p", help="iid or dirichlet.")] = "iid",
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="Dirichlet concentration (dirichlet only).")
    ] = None,
    min_size: Annotated[
        int, typer.Option("--min-size", help="Fewest examples a client may get (dirichlet).")
    ] = 10,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Also hold out this share as test.npz.")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the split.")] = 0,
    as_json: Json = False,
) -> None:
    """Split SOURCE into one .npz per client (iid or Dirichlet label skew) in OUT."""
    import numpy as np

    from fedcore.datafiles import DataFileError, read_xy, write_xy
    from simulations.datasets.base import stratified_split
    from simulations.partition import partition

    if scheme not in SPLITS:
        fail(f"--partition: expected one of {', '.join(SPLITS)}, got {scheme!r}")
    if scheme == "dirichlet" and alpha is None:
        fail("--alpha: the dirichlet partition needs it")
    if scheme != "dirichlet" and alpha is not None:
        fail(f"--alpha: only used by the dirichlet partition, not {scheme!r}")
    if alpha is not None and not alpha > 0:
        fail(f"--alpha: must be > 0, got {alpha}")
    if clients < 1:
        fail(f"--clients: must be >= 1, got {clients}")
    if not 0.0 <= test_fraction < 1.0:
        fail(f"--test-fraction: must be in [0, 1), got {test_fraction}")
    if out.exists() and not out.is_dir():
        fail(f"--out: not a folder: {out}")
    if out.is_dir() and any(out.glob("*.npz")):
        fail(f"--out: {out} already holds .npz files (choose an empty folder)")
    try:
        x, y = read_xy(source)
    except DataFileError as exc:
        fail(str(exc))
    classification = y.dtype.kind in "iu" and y.ndim == 1
    if scheme == "dirichlet" and not classification:
        fail(f"{source}: the dirichlet partition needs one integer label per row")
    strata = y if classification else np.zeros(len(y), np.int64)
    train = np.arange(len(y))
    test = None
    if test_fraction > 0:
        try:
            train, test = stratified_split(strata, test_fraction, seed)
        except ValueError as exc:
            fail(f"--test-fraction: {exc}")
    try:
        parts = partition(strata[train], scheme, clients, seed, alpha=alpha, min_size=min_size)
    except ValueError as exc:
        fail(f"--partition: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(clients - 1)))
    names = []
    for i, part in enumerate(parts):
        name = f"client-{i:0{width}d}"
        write_xy(out / f"{name}.npz", x[train[part]], y[train[part]])
        names.append(name)
    if test is not None:
        write_xy(out / "test.npz", x[test], y[test])
    num_classes = int(y.max()) + 1 if classification else 0
    rows = [
        {
            "client": name,
            "examples": len(part),
            "labels": np.bincount(y[train[part]], minlength=num_classes).tolist()
            if classification else None,
        }
        for name, part in zip(names, parts, strict=True)
    ]
    if as_json:
        print(json.dumps({"out": str(out), "clients": rows,
                          "test": None if test is None else len(test)}))
        return
    _print_table(rows, num_classes)
    held = f", test.npz ({len(test)} examples)" if test is not None else ""
    console.print(f"wrote {len(parts)} client files to {out}{held}")


def _print_table(rows: list[dict], num_classes: int) -> None:
    table = Table(title="examples per client and label")
    table.add_column("client")
    table.add_column("examples", justify="right")
    shown = min(num_classes, MAX_SHOWN_CLASSES)
    for label in range(shown):
        table.add_column(str(label), justify="right")
    if num_classes > shown:
        table.add_column(f"{shown}..{num_classes - 1}", justify="right")
    for row in rows:
        counts = row["labels"] or []
        cells = [str(c) for c in counts[:shown]]
        if num_classes > shown:
            cells.append(str(sum(counts[shown:])))
        table.add_row(row["client"], str(row["examples"]), *cells)
    console.print(table)
