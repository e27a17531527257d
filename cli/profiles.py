"""``fedcore profiles``: the device catalog, one profile in full, and this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cli.errors import fail
from cli.options import Json

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)


@app.command("list")
def list_profiles(as_json: Json = False) -> None:
    """List the shipped device classes."""
    from device_profiles import ProfileError, catalog

    try:
        profiles = list(catalog().values())
    except ProfileError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps([p.model_dump() for p in profiles]))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    for column in ("RAM", "budget", "GFLOP/s", "up", "down", "W", "Wh"):
        table.add_column(column, justify="right", no_wrap=True)
    for p in profiles:
        table.add_row(
            p.name,
            p.kind,
            f"{p.ram_gib:g}",
            f"{p.memory_budget_bytes // 2**20}",
            f"{p.sustained_gflops:g}",
            f"{p.uplink_mbps:g}",
            f"{p.downlink_mbps:g}",
            f"{p.train_power_w:g}",
            f"{p.battery_wh:g}" if p.battery_powered else "-",
        )
    console.print(table)
    console.print(
        "RAM GiB · budget MiB an app may use · float32 GFLOP/s sustained · up/down Mbit/s · "
        "training W · battery Wh (- = mains)"
    )


@app.command("show")
def show_profile(
    name: Annotated[str, typer.Argument(help="Profile name (see `fedcore profiles list`).")],
    as_json: Json = False,
) -> None:
    """Show one device class with its sources."""
    from device_profiles import ProfileError, get_profile

    try:
        profile = get_profile(name)
    except ProfileError as exc:
        fail(str(exc))
    _print_profile(profile, as_json)


@app.command("detect")
def detect_profile(as_json: Json = False) -> None:
    """Describe this machine (RAM, cores, measured float32 GFLOP/s, battery)."""
    from device_profiles import detect

    _print_profile(detect(), as_json)


def _print_profile(profile, as_json: bool) -> None:  # noqa: ANN001 - a DeviceProfile
    data = profile.model_dump()
    if as_json:
        print(json.dumps(data))
        return
    table = Table(show_header=False, title=profile.display_name, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    sources = data.pop("source")
    for key, value in data.items():
        table.add_row(key, str(value))
    table.add_row("memory budget", f"{profile.memory_budget_bytes / 2**20:.0f} MiB")
    for key, value in sources.items():
        table.add_row(f"source.{key}", value)
    console.print(table)
