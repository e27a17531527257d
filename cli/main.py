"""The ``fedcore`` command. Subcommands import what they need lazily, so ``--help`` is quick."""

from __future__ import annotations

import os

import typer

from cli import (
    certs,
    client,
    clients,
    compare,
    data,
    db,
    models,
    profiles,
    rounds,
    runs,
    server,
    simulate,
)

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_key, _value)

app = typer.Typer(
    name="fedcore",
    help="Federated learning for edge devices: simulate, deploy and manage training rounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("simulate")(simulate.simulate)
app.command("server")(server.server)
app.command("client")(client.client)
runs.app.command("compare")(compare.compare)
app.add_typer(runs.app, name="runs", help="List and inspect stored runs.")
app.add_typer(rounds.app, name="rounds", help="The rounds of a run, and one round's clients.")
app.add_typer(models.app, name="models",
              help="Export a run's model (safetensors, npz, ONNX); import an ONNX model.")
app.add_typer(data.app, name="data", help="Your own data: split a file into client files.")
app.add_typer(db.app, name="db", help="The store's schema: status and upgrade.")
app.add_typer(profiles.app, name="profiles", help="Device classes: list, show, detect.")
app.add_typer(certs.app, name="certs", help="TLS: a private CA and the server's certificate.")
app.add_typer(clients.app, name="clients", help="Device identity: keygen, enroll, list, revoke.")


if __name__ == "__main__":  # pragma: no cover
    app()
