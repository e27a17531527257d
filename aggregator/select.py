"""Select: who trains in a round, and who the connected nodes are.

Sampling is reproducible from the run seed; over-selection asks ``ceil(k * factor)`` clients
and keeps the first ``k`` contributions; a known population (``FederationConfig.directory``)
may offer fewer than ``k`` available clients, and then all of them are asked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from aggregator.decode import decode_client_info
from aggregator.round_types import FederationConfig, RoundFailed
from aggregator.updates import Rejected


@dataclass(frozen=True)
class Selection:
    """The clients asked to train in one round: ``chosen`` (sorted client ids), their nodes,
    and ``keep``, how many contributions count (the first ``keep`` to arrive)."""

    chosen: list[int]
    nodes: dict[int, int]  # client id -> node id, for the chosen
    keep: int

    @property
    def over_selected(self) -> bool:
        """More clients were asked than contributions count."""
        return len(self.chosen) > self.keep


def select_clients(
    clients: Mapping[int, int], config: FederationConfig, round_number: int
) -> Selection:
    """Sample this round's clients: ``clients_per_round`` of them, ``over_selection`` more,
    all available ones when a known population offers fewer."""
    k = config.clients_per_round
    wanted = max(k, math.ceil(k * config.over_selection))
    # A population may have fewer available clients than k this round: take them all.
    floor = 0 if config.directory is not None else k
    wanted = min(wanted, max(floor, len(clients)))
    chosen = sample_clients(clients, wanted, config.seed, round_number)
    return Selection(chosen, {c: clients[c] for c in chosen}, min(k, wanted))


def sample_clients(client_ids: Iterable[int], k: int, seed: int, round_number: int) -> list[int]:
    """Choose ``k`` distinct clients for a round, reproducibly from the run seed."""
    ids = sorted(client_ids)
    if k > len(ids):
        raise RoundFailed(
            f"round {round_number} needs {k} clients but only {len(ids)} are connected"
        )
    rng = np.random.default_rng([seed, round_number])
    return sorted(int(i) for i in rng.choice(ids, size=k, replace=False))


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float, poll: float = 0.2) -> list[int]:
    """Poll until ``min_nodes`` nodes are connected; ``RoundFailed`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        node_ids = list(grid.get_node_ids())
        if len(node_ids) >= min_nodes:
            return node_ids
        if time.monotonic() >= deadline:
            raise RoundFailed(
                f"only {len(node_ids)} of the {min_nodes} nodes needed "
                f"connected within {timeout:g} s"
            )
        time.sleep(poll)


def discover_clients(
    grid: Grid, node_ids: list[int], timeout: float | None = None
) -> dict[int, int]:
    """Ask each node who it is; return ``{client_id: node_id}`` (see ``discover``)."""
    return discover(grid, node_ids, timeout)[0]


def discover(
    grid: Grid, node_ids: list[int], timeout: float | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """Ask each node who it is; return ``{client_id: node_id}`` and ``{client_id: examples
    it declares}`` (a reply's ``num_examples`` may never exceed what its client declared).

    Two nodes claiming one client id (two devices started with the same partition) keep the
    lower node id and log a warning naming both. A malformed reply leaves that node out.
    Raises ``RoundFailed`` with the first client error when no node answers properly.
    """
    queries = [Message(RecordDict(), node_id, "query", group_id="discover") for node_id in node_ids]
    clients: dict[int, int] = {}
    declared: dict[int, int] = {}
    errors: list[str] = []
    for reply in grid.send_and_receive(queries, timeout=timeout):
        try:
            client, count = decode_client_info(reply)
        except Rejected as exc:
            errors.append(str(exc))
            continue
        node = reply.metadata.src_node_id
        if client in clients:
            kept, dropped = sorted((clients[client], node))
            log(
                WARNING,
                "fedcore: nodes %d and %d both claim client %d; node %d is left out",
                kept,
                dropped,
                client,
                dropped,
            )
            if node != kept:
                continue
        clients[client] = node
        if count is None:
            declared.pop(client, None)
        else:
            declared[client] = count
    if not clients and node_ids:
        detail = f": {errors[0]}" if errors else ""
        raise RoundFailed(f"none of the {len(node_ids)} nodes answered the query{detail}")
    return clients, declared
