"""A live round table with a progress bar, and the end-of-run summary, for simulate and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.render import RoundRow, metric_text, round_table

console = Console(highlight=False)


class RoundProgress:
    """Context manager: shows rounds as they finish; ``on_round`` is the round callback."""

    def __init__(self, title: str, total: int, done: int = 0, quiet: bool = False) -> None:
        self.rows: list[RoundRow] = []
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        )
        self.task = self.progress.add_task(title, total=total, completed=done)
        self.live = None if quiet else Live(self._view(), console=console, refresh_per_second=4)

    def _view(self) -> Group:
        return Group(round_table(self.rows), self.progress)

    def on_round(self, outcome: Any) -> None:
        """Add a finished round (an ``aggregator.rounds.RoundOutcome``)."""
        self.add(RoundRow.of(outcome))

    def add(self, row: RoundRow) -> None:
        """Add a finished round's row (e.g. a stored round another process committed)."""
        self.rows.append(row)
        self.progress.advance(self.task)
        if self.live is not None:
            self.live.update(self._view())

    def __enter__(self) -> RoundProgress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            if not console.is_terminal:
                console.print()  # Live leaves the cursor after the bar when not a terminal


def run_summary(
    run: Any,
    db_url: str,
    seconds: float,
    language_model: bool = False,
    initial_test_loss: float | None = None,
) -> dict[str, Any]:
    """What a run reports when it ends, read from its stored row (``Store.get_run``): the same
    keys for ``fedcore simulate``, ``fedcore runs resume`` and ``fedcore server``."""
    rounds = sorted(run.rounds, key=lambda r: r.number)
    last = rounds[-1] if rounds else None
    summary: dict[str, Any] = {
        "run_id": run.id,
        "status": run.status,
        "scenario": run.name,
        "runtime": run.runtime,
        "rounds": len(rounds),
        "last_round": last.number if last else None,
        "final_test_accuracy": last.test_accuracy if last else None,
        "final_test_loss": last.test_loss if last else None,
        "final_federated": _final_federated(rounds),
        "seconds": round(seconds, 3),
        "db": db_url,
    }
    if language_model and last is not None and last.test_loss is not None:
        from fedcore.evaluate import perplexity

        summary["final_test_perplexity"] = perplexity(last.test_loss)
        if initial_test_loss is not None:
            summary["initial_test_perplexity"] = perplexity(initial_test_loss)
    return summary


def _final_federated(rounds: list[Any]) -> dict[str, Any] | None:
    """The last stored federated evaluation's summary (with ``metric_name``), or None."""
    for r in reversed(rounds):
        if r.evaluation and r.evaluation.get("summary"):
            metric = r.evaluation.get("metric", "accuracy")
            return {**r.evaluation["summary"], "round": r.number, "metric_name": metric}
    return None


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    """The end of a run: one JSON line for scripts, or one sentence for people."""
    if as_json:
        print(json.dumps(summary))
        return
    ppl = summary.get("final_test_perplexity")
    ppl_text = f", perplexity {ppl:.1f}" if ppl is not None else ""
    start = summary.get("initial_test_perplexity")
    if ppl is not None and start is not None:
        ppl_text = f", perplexity {start:.1f} -> {ppl:.1f}"
    accuracy = summary.get("final_test_accuracy")
    accuracy_text = f"final test accuracy {100 * accuracy:.2f} %" if accuracy is not None else ""
    federated = summary.get("final_federated")
    if federated:
        metric = federated["metric_name"]
        accuracy_text += (
            f"{'; ' if accuracy_text else ''}clients' {metric} "
            f"{metric_text(federated['metric'], metric)} (p10 "
            f"{metric_text(federated['p10'], metric)}, worst decile "
            f"{metric_text(federated['worst_decile'], metric)})"
        )
    console.print(
        f"run {summary['run_id']}: {summary['status']}; {accuracy_text}{ppl_text} "
        f"after round {summary['last_round']} in {summary['seconds']:.1f} s "
        f"(stored in {summary['db']})"
    )
    if summary.get("report"):
        console.print(f"report: {Path(summary['report'][0]).parent}")
