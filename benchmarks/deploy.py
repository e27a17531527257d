"""What a device pays to take part in a deployment: memory, time per round, install size;
Flower's stock SuperNode and fedcore's lean agent side by side, in one run.

``python -m benchmarks.deploy [--rounds 3] [--kinds stock,lean] [--skip-secagg] [--skip-install]
[--devices N] [--json FILE]``

Real processes on loopback: ``fedcore server`` with the digits example and devices of each
kind: ``fedcore client --stock-supernode`` (a stock ``flower-supernode`` running fedcore's
ClientApp, supervised by ``fedcore client``) and ``fedcore-device`` (the lean agent, one
process), plain with 2 devices and with SecAgg+ with 3 (SecAgg+ needs a threshold t > k/2;
``--devices N`` runs both modes with N, e.g. to tell what a third device costs a plain round
from what SecAgg+ costs).
For each it reports

- *idle RSS*: the first device's whole process tree (summed from ``/proc``: the stock kind's
  ``fedcore client``, ``flower-supernode``, ``flower-superexec`` and their children; the
  agent's one process) while it waits for the run to start (the server waits for the last
  device, started ``--idle`` s later);
- *peak RSS*: the largest tree total of any device during the run;
- *added time per round*: a round's wall time minus its slowest device's training time (from
  the store), median over the rounds, and per message exchange (as many as the trace shows
  a round has, median: 1 plain, 3 with SecAgg+ here; without a trace the issue's 1 and 4);
  and where a round's time goes: the server and the devices run with ``FEDCORE_TRACE``
  (``fedcore.trace``) and ``benchmarks.deploy_trace`` prints the rounds' critical path;
- *install size*: the stock kind needs Flower (``fedcore[server]``): the files of that
  dependency closure in this environment; the lean agent's: a fresh device venv built
  offline (``benchmarks.device_env``: ``pip install fedcore``), besides pip and setuptools.
  The lean devices run ``fedcore-device`` from that venv, as a device would.

Targets for a device: idle <= 48 MiB, peak <= 96 MiB, added <= 0.3 s per exchange, install
<= 120 MB. Figures from a shared machine are not a device's: rerun alone to quote them.
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
TRACE_ENV = "FEDCORE_TRACE"  # fedcore.trace.ENV


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


KINDS = ("stock", "lean")  # flower-supernode under fedcore client; fedcore-device


def fedcore(*args: str, log: Path, command: tuple[str, ...] = ()) -> subprocess.Popen:
    """``fedcore ARGS`` of this checkout (or ``command ARGS``: a device venv's agent, run
    outside this checkout so that it imports its own installed copy); each traces into
    ``trace.jsonl`` beside its log."""
    argv = [*command, *args] if command else [sys.executable, "-m", "cli.main", *args]
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"} if command else dict(ENV)
    env[TRACE_ENV] = str(log.parent / "trace.jsonl")
    return subprocess.Popen(
        argv,
        env=env,
        cwd=log.parent if command else None,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def device(kind: str, address: str, i: int, log: Path, agent: tuple[str, ...]) -> subprocess.Popen:
    """Device ``i`` of ``kind``: the stock SuperNode, or the lean agent ``agent``; its own
    examples in ``device{i}.npz`` beside its log (a device install cannot cut a vendored data
    set's shard: that is server code)."""
    data = log.parent / f"device{i}.npz"
    args = ("--superlink", address, "--data", str(data), "--partition-id", str(i),
            "--max-wait", "2")  # fmt: skip
    if kind == "stock":
        return fedcore("client", "--stock-supernode", *args, log=log)
    return fedcore(*args, log=log, command=agent)


def run_mode(
    kind: str, secagg: bool, rounds: int, idle: float, work: Path, agent: tuple[str, ...],
    devices: int | None = None,
) -> dict:
    """One deployment with ``devices`` devices of ``kind`` (default: 2 plain, 3 SecAgg+);
    its memory and time figures."""
    import numpy as np

    from aggregator.store import Store
    from deploy.node import NodeData
    from deploy.processes import free_port

    devices = devices or (3 if secagg else 2)
    text = EXAMPLE.read_text().replace("rounds = 2", f"rounds = {rounds}")
    text = text.replace("num_clients = 2", f"num_clients = {devices}")
    text = text.replace("clients_per_round = 2", f"clients_per_round = {devices}")
    if secagg:
        text = text.replace('strategy = "fedavg"', 'strategy = "fedavg"\nsecagg = true')
    scenario, db = work / "scenario.toml", work / "runs.db"
    scenario.write_text(text)
    for i in range(devices):  # each device's shard, cut as the scenario cuts the data set
        x, y = NodeData(dataset="digits", partition_id=i, num_partitions=devices).load(
            {"scenario": text})
        np.savez(work / f"device{i}.npz", x=x, y=y)
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
            process = device(kind, address, i, work / f"device{i}.log", agent)
            started.append(process)
            sampler.devices.append(process)
        if server.wait(timeout=900) != 0:
            raise RuntimeError((work / "server.log").read_text(errors="replace"))
    finally:
        sampler.stopped.set()
        for process in [*started, server]:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
    first = [rss for t, i, rss in sampler.samples if i == 0 and idle_from <= t <= idle_to]
    from benchmarks.deploy_trace import breakdown
    from fedcore.trace import read

    run = Store(str(db)).get_run(1)
    training = [max(c.seconds or 0.0 for c in r.clients) for r in run.rounds]
    added = [r.seconds - t for r, t in zip(run.rounds, training, strict=True)]
    trace = work / "trace.jsonl"
    phases = breakdown(read(trace)) if trace.exists() else {}
    exchanges = phases.get("exchanges") or (4 if secagg else 1)  # traced, else the issue's
    return {
        "kind": kind,
        "mode": "SecAgg+" if secagg else "plain",
        "devices": devices,
        "idle_rss_mib": statistics.median(first) / MIB if first else None,
        "peak_rss_mib": max(rss for _, _, rss in sampler.samples) / MIB,
        "round_seconds": statistics.median(r.seconds for r in run.rounds),
        "added_seconds_per_round": statistics.median(added),
        "added_seconds_per_exchange": statistics.median(added) / exchanges,
        "training_seconds": statistics.median(training),
        "exchanges": exchanges,
        "breakdown": phases,
    }


def install_bytes(roots: tuple[str, ...]) -> int:
    """Bytes of the installed files of ``roots``' base dependency closure (no extras; a
    ``fedcore`` root is its base requirements, not its files: an editable checkout here)."""
    seen, stack, total = set(), list(roots), 0
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
        if name == "fedcore":
            continue
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
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="which devices, comma-separated (default: stock,lean)")
    parser.add_argument("--skip-secagg", action="store_true")
    parser.add_argument("--devices", type=int, help="devices in every mode (default: 2 plain, "
                        "3 SecAgg+)")
    parser.add_argument("--skip-install", action="store_true",
                        help="no fresh device venv (about a minute): the lean agent then runs "
                        "from this environment, which has the server's packages too")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", type=Path, help="keep each deployment's logs and trace in a "
                        "new folder here (MODE-KIND)")
    args = parser.parse_args(argv)
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    if not kinds or set(args.kinds.split(",")) - set(KINDS):
        parser.error(f"--kinds: a comma-separated choice of {', '.join(KINDS)}")
    if args.devices is not None and not 2 <= args.devices <= 20:
        parser.error("--devices: 2 to 20")
    sizes: dict[str, float | None] = {"stock": install_bytes(("fedcore", "flwr")) / 1e6,
                                      "lean closure": install_bytes(("fedcore",)) / 1e6,
                                      "lean": None}  # fmt: skip
    agent: tuple[str, ...] = (sys.executable, "-m", "deploy.agent")
    agent_from = "this environment"
    with tempfile.TemporaryDirectory(prefix="fedcore-bench-env-") as envs:
        if not args.skip_install:
            from benchmarks.device_env import NoWheels, build_device_env

            try:
                env = build_device_env(Path(envs) / "venv", Path(envs))
            except NoWheels as exc:
                print(f"no fresh device venv ({exc}): the lean agent runs from this environment")
            else:
                sizes["lean"], sizes["lean venv"] = env.site_packages_size() / 1e6, env.size() / 1e6
                agent, agent_from = (str(env.bin("fedcore-device")),), "a fresh device venv"
        rows = []
        for secagg in (False, True)[: 1 if args.skip_secagg else 2]:
            for kind in kinds:
                if args.keep is not None:  # logs and traces stay for a look
                    folder = args.keep / f"{'secagg' if secagg else 'plain'}-{kind}"
                    folder.mkdir(parents=True, exist_ok=False)
                    rows.append(run_mode(kind, secagg, args.rounds, args.idle, folder, agent,
                                         args.devices))  # fmt: skip
                    continue
                with tempfile.TemporaryDirectory(prefix="fedcore-bench-deploy-") as temp:
                    rows.append(run_mode(kind, secagg, args.rounds, args.idle, Path(temp),
                                         agent, args.devices))  # fmt: skip
    print("device side: stock = flower-supernode + fedcore ClientApp under fedcore client; "
          f"lean = fedcore-device from {agent_from}")  # fmt: skip
    print(f"{'mode':8} {'kind':6} {'devices':>7} {'idle MiB':>9} {'peak MiB':>9} "
          f"{'round s':>8} {'added s/round':>14} {'exchanges':>9} "
          f"{'added s/exchange':>17}")  # fmt: skip
    for r in rows:
        idle = f"{r['idle_rss_mib']:.0f}" if r["idle_rss_mib"] is not None else "-"
        print(f"{r['mode']:8} {r['kind']:6} {r['devices']:>7} {idle:>9} "
              f"{r['peak_rss_mib']:>9.0f} {r['round_seconds']:>8.2f} "
              f"{r['added_seconds_per_round']:>14.2f} {r['exchanges']:>9g} "
              f"{r['added_seconds_per_exchange']:>17.2f}")  # fmt: skip
    for mode in ("plain", "SecAgg+"):
        pair = {r["kind"]: r for r in rows if r["mode"] == mode}
        if len(pair) < 2:
            continue
        lean, stock = pair["lean"], pair["stock"]
        ratios = [f"{key} {lean[field] / stock[field]:.2f}x"
                  for key, field in (("idle", "idle_rss_mib"), ("peak", "peak_rss_mib"),
                                     ("round", "round_seconds"))
                  if lean[field] and stock[field]]  # fmt: skip
        print(f"{mode}: lean/stock " + ", ".join(ratios))
    from benchmarks.deploy_trace import format_breakdown

    for r in rows:
        if r["breakdown"]:
            print(format_breakdown(f"{r['mode']} {r['kind']}", r["breakdown"],
                                   r["training_seconds"]))  # fmt: skip
    fresh = "-" if sizes["lean"] is None else f"{sizes['lean']:.0f} MB"
    print(f"install: stock {sizes['stock']:.0f} MB (fedcore's base + flwr closure); lean {fresh} "
          f"(fresh device venv besides pip and setuptools; closure here "
          f"{sizes['lean closure']:.0f} MB)")  # fmt: skip
    print("targets for a device: idle <= 48 MiB, peak <= 96 MiB, <= 0.3 s per exchange, "
          "install <= 120 MB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "install_mb": sizes}, indent=1))


if __name__ == "__main__":
    main()
