"""``fedcore rounds``: the rounds of a run, and one round's clients with their outcomes."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import fail
from cli.options import Db, Json
from cli.render import RoundRow, federated_summary, metric_text, round_table, untrusted
from cli.store_access import open_store, round_dict

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)


@app.command("list")
def list_rounds(
    run_id: Annotated[int, typer.Argument(help="Run id.")], db: Db = None, as_json: Json = False
) -> None:
    """One line per committed round of a run."""
    from aggregator.store import StoreError

    try:
        run = open_store(db).get_run(run_id)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps([round_dict(r) for r in run.rounds]))
        return
    console.print(round_table([RoundRow.of(r) for r in run.rounds], title=f"run {run_id}"))


@app.command("show")
def show_round(
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    number: Annotated[int, typer.Argument(help="Round number.")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """One round: its metrics, checkpoint digest, and every selected client's outcome."""
    from aggregator.round_types import SECAGG_CLIP
    from aggregator.store import StoreError
    from aggregator.store.enrolment import device_names

    store = open_store(db)
    try:
        row = store.get_round(run_id, number)
    except StoreError as exc:
        fail(str(exc))
    data = round_dict(row, clients=True)
    names = device_names(store, run_id)  # enrolled devices of a deployment, by node id
    for c in data["clients"]:
        c["device_name"] = names.get(str(c["node_id"]))
    if as_json:
        print(json.dumps(data))
        return
    metric, federated = federated_summary(row)
    test = (f"test {metric} {metric_text(row.test_accuracy, metric)}, "
            if row.test_accuracy is not None else "")
    console.print(
        f"run {run_id} round {number}: {test}"
        f"train loss {row.train_loss:.4f}, {row.num_accepted}/{row.num_selected} accepted, "
        f"{row.seconds:.2f} s, up {row.bytes_up} B, down {row.bytes_down} B"
    )
    clip = (row.metrics or {}).get(SECAGG_CLIP)
    if clip is not None:
        console.print(
            f"secure aggregation: each update was clipped to +-{clip:g} per coordinate on its "
            "device and the sum checked against that bound; the norm guard saw no single update"
        )
    if federated:
        console.print(
            f"federated evaluation ({int(federated['clients'])} clients, "
            f"{int(federated['examples'])} examples): {metric} "
            f"{metric_text(federated['metric'], metric)} (weighted), p10 "
            f"{metric_text(federated['p10'], metric)}, median "
            f"{metric_text(federated['median'], metric)}, p90 "
            f"{metric_text(federated['p90'], metric)}, worst decile "
            f"{metric_text(federated['worst_decile'], metric)}"
        )
        table = Table(title="federated evaluation")
        for column in ("client", "examples", "loss", metric):
            table.add_column(column, justify="right")
        for client, n, loss, value in data["evaluation"]["clients"]:
            table.add_row(str(client), str(n), f"{loss:.4f}", metric_text(value, metric))
        for client, reason in data["evaluation"].get("rejected", {}).items():
            table.add_row(str(client), "-", "-", f"rejected: {untrusted(reason)}")
        console.print(table)
    console.print(f"checkpoint sha256 {row.checkpoint_sha256}")
    table = Table()
    for column in ("client", "examples", "train loss", "seconds", "bytes up", "outcome"):
        table.add_column(column, justify="left" if column == "outcome" else "right")
    for c in data["clients"]:
        loss = f"{c['train_loss']:.4f}" if c["train_loss"] is not None else "-"
        secs = f"{c['seconds']:.2f}" if c["seconds"] is not None else "-"
        verdict = f"rejected: {untrusted(c['reason'])}"
        if c["accepted"]:
            verdict = "accepted" if clip is None else "accepted (in the secure sum)"
        who = str(c["client_id"]) + (f" ({c['device_name']})" if c["device_name"] else "")
        table.add_row(who, str(c["num_examples"]), loss, secs, str(c["bytes_up"]), verdict)
    console.print(table)
