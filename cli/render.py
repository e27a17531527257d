"""Tables shared by the commands: one row per round, one row per run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.table import Table


@dataclass(frozen=True)
class RoundRow:
    """What the round table shows (built from a live outcome or a stored round)."""

    number: int
    selected: int
    accepted: int
    train_loss: float
    test_accuracy: float
    seconds: float

    @classmethod
    def of_outcome(cls, outcome: Any) -> RoundRow:
        """From a live ``RoundOutcome``."""
        return cls(
            outcome.number,
            outcome.num_selected,
            outcome.num_accepted,
            outcome.train_loss,
            outcome.test_accuracy,
            outcome.seconds,
        )

    @classmethod
    def of_stored(cls, row: Any) -> RoundRow:
        """From a stored ``Round`` row."""
        return cls(
            row.number,
            row.num_selected,
            row.num_accepted,
            row.train_loss,
            row.test_accuracy,
            row.seconds,
        )


def round_table(rows: Iterable[RoundRow], title: str | None = None) -> Table:
    """The per-round table: round, clients, train loss, test accuracy, seconds."""
    table = Table(title=title, title_justify="left")
    table.add_column("round", justify="right")
    table.add_column("clients", justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("test acc", justify="right")
    table.add_column("seconds", justify="right")
    for r in rows:
        clients = f"{r.accepted}/{r.selected}" if r.accepted != r.selected else str(r.selected)
        table.add_row(
            str(r.number),
            clients,
            f"{r.train_loss:.4f}",
            f"{100 * r.test_accuracy:.2f} %",
            f"{r.seconds:.2f}",
        )
    return table
