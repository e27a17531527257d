"""Tables shared by the commands: one row per round, one row per run."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table


def plain(text: Any) -> str:
    """``text`` with every control or format character (escape sequences, carriage returns,
    bidirectional overrides) shown as ``?``: what a client wrote never drives the terminal."""
    return "".join(
        "?" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in str(text)
    )


def untrusted(text: Any) -> str:
    """``plain(text)`` with Rich markup escaped, for a string a client (or a device, or a
    stored error quoting one) wrote that is printed through Rich (tables, ``print``)."""
    return escape(plain(text))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP: prefix ``'``); numbers
    and booleans pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


SIM_SECONDS = "sim_round_s"  # a simulated population's round length (``simulations.world``)
ENERGY = "energy_j"  # and the energy its clients drew that round


@dataclass(frozen=True)
class RoundRow:
    """What the round table shows (built from a live outcome or a stored round).

    ``sim_seconds`` and ``energy_j`` come from a simulated population's virtual clock and
    device profiles; a run without one has neither (None).
    """

    number: int
    selected: int
    accepted: int
    train_loss: float
    test_accuracy: float | None  # None: no test set on the server
    seconds: float
    sim_seconds: float | None = None
    energy_j: float | None = None
    federated: Mapping[str, float] | None = None  # the clients' evaluation summary, when due
    metric: str = "accuracy"  # what test_accuracy and the federated figures measure

    @classmethod
    def of(cls, round_: Any) -> RoundRow:
        """From a live ``RoundOutcome`` or a stored ``Round`` row (the same fields)."""
        metric, federated = federated_summary(round_)
        return cls(
            round_.number,
            round_.num_selected,
            round_.num_accepted,
            round_.train_loss,
            round_.test_accuracy,
            round_.seconds,
            *_simulated(round_.metrics),
            federated=federated,
            metric=metric,
        )


def federated_summary(round_: Any) -> tuple[str, Mapping[str, float] | None]:
    """(metric, summary) of a round's federated evaluation: a live ``FederatedEvaluation``
    or its stored JSON; ("accuracy", None) when the round had none."""
    evaluation = getattr(round_, "evaluation", None)
    if evaluation is None:
        return "accuracy", None
    if isinstance(evaluation, Mapping):
        return str(evaluation.get("metric", "accuracy")), evaluation.get("summary") or None
    return evaluation.metric, evaluation.summary or None


def metric_text(value: float | None, metric: str) -> str:
    """``93.10 %`` for accuracy, ``0.412`` for MAE, ``-`` for nothing."""
    if value is None:
        return "-"
    return f"{100 * value:.2f} %" if metric == "accuracy" else f"{value:.4g}"


def _simulated(metrics: Mapping[str, float] | None) -> tuple[float | None, float | None]:
    """(simulated round seconds, energy in joules) from a round's metrics, None where absent."""
    metrics = metrics or {}
    sim, energy = metrics.get(SIM_SECONDS), metrics.get(ENERGY)
    return (
        float(sim) if sim is not None else None,
        float(energy) if energy is not None else None,
    )


def round_table(rows: Iterable[RoundRow], title: str | None = None) -> Table:
    """The per-round table: round, clients, train loss, test accuracy, seconds, and for a
    simulated population also the simulated round time and the clients' energy."""
    rows = list(rows)
    simulated = any(r.sim_seconds is not None for r in rows)
    energy = any(r.energy_j is not None for r in rows)
    server = any(r.test_accuracy is not None for r in rows)
    federated = any(r.federated for r in rows)
    name = "acc" if all(r.metric == "accuracy" for r in rows) else "MAE"
    table = Table(title=title, title_justify="left")
    table.add_column("round", justify="right")
    table.add_column("clients", justify="right")
    table.add_column("train loss", justify="right")
    if server or not federated:
        table.add_column(f"test {name}", justify="right")
    if federated:
        table.add_column(f"fed {name}", justify="right")  # the clients' weighted mean
        table.add_column("p10-p90", justify="right", no_wrap=True)
        table.add_column("worst", justify="right")  # the worst decile's mean
    table.add_column("seconds", justify="right")
    if simulated:
        table.add_column("sim time", justify="right")
    if energy:
        table.add_column("energy J", justify="right")
    for r in rows:
        clients = f"{r.accepted}/{r.selected}" if r.accepted != r.selected else str(r.selected)
        cells = [str(r.number), clients, f"{r.train_loss:.4f}"]
        if server or not federated:
            cells.append(metric_text(r.test_accuracy, r.metric))
        if federated:
            f = r.federated or {}
            spread = _spread(f, r.metric)
            cells += [metric_text(f.get("metric"), r.metric), spread if f else "-",
                      metric_text(f.get("worst_decile"), r.metric)]
        cells.append(f"{r.seconds:.2f}")
        if simulated:
            cells.append(_duration(r.sim_seconds))
        if energy:
            cells.append(_number(r.energy_j) if r.energy_j is not None else "-")
        table.add_row(*cells)
    return table


def _spread(summary: Mapping[str, float], metric: str) -> str:
    """The clients' p10-p90 range compactly: ``71.2-92.0 %`` or ``0.31-0.58``."""
    values = [summary.get(k) for k in ("p10", "p90")]
    if any(v is None for v in values):
        return "-"
    if metric == "accuracy":
        return "-".join(f"{100 * v:.1f}" for v in values) + " %"
    return "-".join(f"{v:.3g}" for v in values)


def _number(value: float) -> str:
    """Three significant digits for small values (``0.0332``), one decimal for large ones."""
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _duration(seconds: float | None) -> str:
    """Simulated seconds as ``0.00207 s``, ``42 s``, ``3.5 min`` or ``1.2 h``; ``-`` if unknown."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{_number(seconds)} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
