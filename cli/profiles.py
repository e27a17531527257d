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
        print(json.dumps([p.as_dict() for p in profiles]))
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
    data = profile.as_dict()
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


@app.command("calibrate")
def calibrate_clock(
    write: Annotated[
        bool, typer.Option("--write", help="Store the figures where the virtual clock reads them.")
    ] = False,
    family: Annotated[
        list[str] | None, typer.Option("--family", help="Only this family (repeatable).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Measure the engine's training speed per model family against this machine's matmul.

    The virtual clock divides a client's FLOPs by its device class's GEMM speed times this
    efficiency. Run it on a quiet machine; --write stores it in device_profiles/efficiency.toml.
    """
    from fedcore.engine.parallel import get_num_threads
    from simulations.calibrate import REFERENCES, calibrate
    from simulations.calibrate import write as store

    unknown = [f for f in family or [] if f not in REFERENCES]
    if unknown:
        fail(f"--family: unknown {unknown[0]!r} (known: {', '.join(REFERENCES)})")
    if write and family:
        fail("--write stores every family: leave out --family")
    measurements = calibrate(family or None)
    if as_json:
        print(json.dumps([{"family": m.family, "model": m.what, "train_gflops": m.train_gflops,
                           "matmul_gflops": m.matmul_gflops, "efficiency": m.efficiency}
                          for m in measurements]))
    else:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("family", "model", "train GFLOP/s", "matmul GFLOP/s", "efficiency"):
            table.add_column(column)
        for m in measurements:
            table.add_row(m.family, m.what, f"{m.train_gflops:.2f}", f"{m.matmul_gflops:.2f}",
                          f"{m.efficiency:.3f}")
        console.print(table)
    if write:
        path = store(measurements, get_num_threads())
        console.print(f"wrote {path}")
