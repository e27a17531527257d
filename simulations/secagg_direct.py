"""Drive SecAgg+ protocol objects directly, without Flower messaging (tests, scale benchmark).

The same ``SecAggClient`` and ``SecAggServer`` that the ClientApp handlers and the round loop
use, wired by plain function calls, so that 1,000 clients x 1M parameters measure the
protocol's own cost rather than the transport's. Each client's update is produced on demand
by ``update_of(i)`` and folded into the server's running sum right away, so memory stays at
a few vectors whatever n is. ``drop[stage]`` names the clients (0-based) that vanish at that
stage, i.e. never answer it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from aggregator.secagg.server import SecAggServer
from client_runtime.secagg import SecAggClient
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.params import SecAggParams

UpdateFn = Callable[[int], tuple[np.ndarray, float, float]]  # i -> (update, examples, loss)


@dataclass
class DirectRound:
    """The outcome of one directly driven round, with costs per side."""

    server: SecAggServer
    total: np.ndarray | None  # the unmasked uint32 sum (None if aborted)
    error: Exception | None
    server_seconds: float
    client_seconds: np.ndarray  # per client, summed over its stages
    client_bytes: np.ndarray  # per client, payload bytes sent
    stage_seconds: dict[str, float] = field(default_factory=dict)


def payload_bytes(reply: object) -> int:
    """Bytes a reply carries: byte strings at length, ints at 8, the vector at 4 per word."""
    size = 0
    for value in vars(reply).values():
        if isinstance(value, bytes):
            size += len(value)
        elif isinstance(value, np.ndarray):
            size += value.nbytes
        elif isinstance(value, tuple):
            size += sum(len(v) if isinstance(v, bytes) else 8 for v in value)
        elif isinstance(value, int):
            size += 8
    return size


def run_direct(
    n: int,
    vector_size: int,
    update_of: UpdateFn,
    params: SecAggParams,
    encoding: FixedPoint,
    drop: Mapping[str, set[int]] | None = None,
    tamper: Callable[[str, int, object], object] | None = None,
) -> DirectRound:
    """Run one round among clients 0..n-1 (node id = i + 1000); see the module docstring.

    ``tamper(stage, i, reply)`` may replace client i's reply before the server sees it.
    """
    drop = drop or {}
    nodes = [i + 1000 for i in range(n)]
    server = SecAggServer(nodes, params, encoding, vector_size)
    clients = [SecAggClient(node) for node in nodes]
    client_seconds = np.zeros(n)
    client_bytes = np.zeros(n, dtype=np.int64)
    server_seconds = 0.0
    stage_seconds: dict[str, float] = {}

    def answer(i: int, request: object) -> object:
        client = clients[i]
        stage = server.stage
        if stage == "advertise":
            return client.advertise(request)
        if stage == "share":
            return client.share_keys(request)
        if stage == "masked":
            return client.masked_input(request, lambda: update_of(i))
        return client.unmask(request)

    try:
        for stage in ("advertise", "share", "masked", "unmask"):
            start = time.perf_counter()
            requests = server.requests()
            server_seconds += time.perf_counter() - start
            for node, request in requests.items():
                i = node - 1000
                if i in drop.get(stage, set()):
                    continue
                tick = time.perf_counter()
                try:
                    reply = answer(i, request)
                except Exception as exc:  # a refusing client is a dropped client
                    client_seconds[i] += time.perf_counter() - tick
                    server.fail(node, f"client error: {exc}")
                    continue
                client_seconds[i] += time.perf_counter() - tick
                client_bytes[i] += payload_bytes(reply)
                if tamper is not None:
                    reply = tamper(stage, i, reply)
                tick = time.perf_counter()
                server.receive(node, reply)
                server_seconds += time.perf_counter() - tick
            tick = time.perf_counter()
            server.close_stage()
            server_seconds += time.perf_counter() - tick
            stage_seconds[stage] = time.perf_counter() - start
        tick = time.perf_counter()
        total = server.result()
        server_seconds += time.perf_counter() - tick
        stage_seconds["result"] = time.perf_counter() - tick
    except Exception as exc:  # Aborted, mostly: report it with the costs so far
        return DirectRound(
            server, None, exc, server_seconds, client_seconds, client_bytes, stage_seconds
        )
    return DirectRound(
        server, total, None, server_seconds, client_seconds, client_bytes, stage_seconds
    )
