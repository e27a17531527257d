"""What a device pays to take part in a deployment: memory, time per round, install size.

``python -m benchmarks.deploy [--rounds 3] [--skip-secagg] [--json FILE]``

Real processes on loopback: ``fedcore server`` with the digits example and ``fedcore client``
devices (each a stock ``flower-supernode`` running fedcore's ClientApp), plain with 2 devices
and with SecAgg+ with 3 (SecAgg+ needs a threshold t > k/2). For each it reports

- *idle RSS*: the first device's whole process tree (``fedcore client``, ``flower-supernode``,
  ``flower-superexec`` and their children, summed from ``/proc``) while it waits for the run to
  start (the server waits for the last device, started ``--idle`` s later);
- *peak RSS*: the largest tree total of any device during the run;
- *added time per round*: a round's wall time minus its slowest device's training time (from
  the store), median over the rounds, and per message exchange (1 plain, 4 with SecAgg+);
- *install size*: the files of fedcore's base dependency closure in this environment (what a
  device installs today: ``pip install fedcore`` pulls ``flwr`` and its server stack).

Only the stock SuperNode column exists: the lean device agent it is meant to be compared with
is not built yet (see README, Deploying on devices). Targets for a device: idle <= 48 MiB,
peak <= 96 MiB, added <= 0.3 s per exchange, install <= 120 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "digits.toml"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
MIB = 2**20


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = int(found.group(1)) * 1024 if found else 0
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class Sampler(threading.Thread):
    """Samples each device's tree RSS every ``period`` s."""

    def __init__(self, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.period, self.devices, self.samples = period, [], []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            now = time.monotonic()
            for index, process in enumerate(list(self.devices)):
                if process.poll() is None:
                    self.samples.append((now, index, tree_rss(process.pid)))
            self.stopped.wait(self.period)


def fedcore(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        env=ENV,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_mode(secagg: bool, rounds: int, idle: float, work: Path) -> dict:
    """One deployment; its memory and time figures."""
    from aggregator.store import Store
    from deploy.processes import free_port

    devices = 3 if secagg else 2
    text = EXAMPLE.read_text().replace("rounds = 2", f"rounds = {rounds}")
    text = text.replace("num_clients = 2", f"num_clients = {devices}")
    text = text.replace("clients_per_round = 2", f"clients_per_round = {devices}")
    if secagg:
        text = text.replace('strategy = "fedavg"', 'strategy = "fedavg"\nsecagg = true')
    scenario, db = work / "scenario.toml", work / "runs.db"
    scenario.write_text(text)
    address = f"127.0.0.1:{free_port()}"
    server = fedcore("server", str(scenario), "--address", address, "--db", str(db), "--json",
                     log=work / "server.log")  # fmt: skip
    sampler, started = Sampler(), []
    try:
        deadline = time.monotonic() + 120
        while "waiting for" not in (work / "server.log").read_text(errors="replace"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "server.log").read_text(errors="replace"))
            time.sleep(0.2)
        sampler.start()
        for i in range(devices):
            if i == devices - 1:
                idle_from = time.monotonic() + idle / 2  # the first device has settled
                time.sleep(idle)
                idle_to = time.monotonic()
            device = fedcore("client", "--stock-supernode", "--superlink", address,
                             "--dataset", "digits",
                             "--partition-id", str(i), "--max-wait", "2",
                             log=work / f"device{i}.log")  # fmt: skip
            started.append(device)
            sampler.devices.append(device)
        if server.wait(timeout=900) != 0:
            raise RuntimeError((work / "server.log").read_text(errors="replace"))
    finally:
        sampler.stopped.set()
        for process in [*started, server]:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
    first = [rss for t, i, rss in sampler.samples if i == 0 and idle_from <= t <= idle_to]
    run = Store(str(db)).get_run(1)
    added = [r.seconds - max(c.seconds or 0.0 for c in r.clients) for r in run.rounds]
    exchanges = 4 if secagg else 1
    return {
        "mode": "SecAgg+" if secagg else "plain",
        "devices": devices,
        "idle_rss_mib": statistics.median(first) / MIB if first else None,
        "peak_rss_mib": max(rss for _, _, rss in sampler.samples) / MIB,
        "round_seconds": statistics.median(r.seconds for r in run.rounds),
        "added_seconds_per_round": statistics.median(added),
        "added_seconds_per_exchange": statistics.median(added) / exchanges,
    }


def install_bytes(root: str = "fedcore") -> int:
    """Bytes of the installed files of ``root``'s base dependency closure (no extras)."""
    seen, stack, total = set(), [root], 0
    while stack:
        name = re.split(r"[<>=!~ ;\[]", stack.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                stack.append(requirement)
        if name == root:
            continue  # fedcore itself is an editable checkout here
        for file in dist.files or []:
            try:
                total += Path(dist.locate_file(file)).stat().st_size
            except OSError:
                pass
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the first device idles")
    parser.add_argument("--skip-secagg", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rows = []
    for secagg in (False, True)[: 1 if args.skip_secagg else 2]:
        with tempfile.TemporaryDirectory(prefix="fedcore-bench-deploy-") as folder:
            rows.append(run_mode(secagg, args.rounds, args.idle, Path(folder)))
    install = install_bytes() / 1e6
    print("device side: stock flower-supernode + fedcore ClientApp (lean agent: not built)")
    print(f"{'mode':8} {'devices':>7} {'idle MiB':>9} {'peak MiB':>9} {'round s':>8} "
          f"{'added s/round':>14} {'added s/exchange':>17}")  # fmt: skip
    for r in rows:
        idle = f"{r['idle_rss_mib']:.0f}" if r["idle_rss_mib"] is not None else "-"
        print(f"{r['mode']:8} {r['devices']:>7} {idle:>9} {r['peak_rss_mib']:>9.0f} "
              f"{r['round_seconds']:>8.2f} {r['added_seconds_per_round']:>14.2f} "
              f"{r['added_seconds_per_exchange']:>17.2f}")  # fmt: skip
    print(f"install: {install:.0f} MB (fedcore's base dependency closure)")
    print("targets for a device: idle <= 48 MiB, peak <= 96 MiB, <= 0.3 s per exchange, "
          "install <= 120 MB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "install_mb": install}, indent=1))


if __name__ == "__main__":
    main()
