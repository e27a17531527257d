"""``fedcore certs create``: a private CA and the SuperLink's TLS certificate (``deploy.certs``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import err_console, fail
from cli.options import Json

app = typer.Typer(no_args_is_help=True)


@app.command("create")
def create(
    out: Annotated[Path, typer.Option("--out", help="Folder for ca.pem, ca.key, server.pem/.key.")],
    host: Annotated[
        list[str],
        typer.Option(
            "--host",
            help="A DNS name or IP address devices use to reach the server (repeat for more); "
            "loopback names are always added.",
        ),
    ],
    days: Annotated[int, typer.Option("--days", help="Server certificate validity.")] = 825,
    ca_days: Annotated[int, typer.Option("--ca-days", help="CA certificate validity.")] = 3650,
    as_json: Json = False,
) -> None:
    """Make a CA and a server certificate for `fedcore server` (never overwrites files)."""
    from deploy.certs import CertError, create_certificates

    try:
        files = create_certificates(out, host, days=days, ca_days=ca_days)
    except CertError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out: cannot write in {out}: {exc.strerror or exc}")
    paths = {k: str(v) for k, v in vars(files).items()}
    if as_json:
        print(json.dumps(paths))
        return
    err_console.print(
        f"wrote {files.ca_cert} (give it to every device), {files.server_cert} and "
        f"{files.server_key} (the server's), {files.ca_key} (keep it offline).\n"
        f"  fedcore server SCENARIO --address 0.0.0.0:9092 --certs {out}"
    )
