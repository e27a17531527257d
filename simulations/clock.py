"""The virtual clock: device profiles turn a client's FLOPs and bytes into seconds and joules.

A client's local time = FLOPs it trained (reported by ``client_runtime.device``) / (its device's
sustained FLOP/s x the engine's measured efficiency for the model's family, see
``device_profiles.efficiency``) + bytes up and down / its bandwidth. A round lasts until its
slowest accepted client reports, or until the deadline when someone missed it.
``SimulatedNetwork`` is what the simulated grid (``simulations.runtimes.simulated``)
consults around each train message: it drops clients out mid-round, stamps each reply with its
simulated times and energy, and turns replies later than the deadline into errors; the grid
orders replies by simulated arrival (so
over-selection keeps the first that report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.common.constant import ErrorCode

from device_profiles import FAMILIES
from fedcore import protocol
from fedcore.secagg.messages import TYPES
from simulations.population import NodeMap, Population

DEADLINE = "missed the deadline"
TRAINING = ("train", TYPES["masked"])  # messages a client trains on: plain, or SecAgg+'s masked
DROPPED = "dropped out mid-round"


@dataclass(frozen=True)
class ClientTime:
    """One client's simulated round: seconds computing and transferring, energy drawn."""

    compute_s: float
    network_s: float
    energy_j: float

    @property
    def total_s(self) -> float:
        """Seconds from receiving the global model to the server having the update."""
        return self.compute_s + self.network_s

    def metrics(self) -> dict[str, float]:
        """As reply metrics (``sim_*`` keys)."""
        return {
            "sim_seconds": self.total_s,
            "sim_compute_s": self.compute_s,
            "sim_network_s": self.network_s,
            "energy_j": self.energy_j,
        }


def client_time(
    device: str, flops: float, bytes_up: float, bytes_down: float, family: str | None = None
) -> ClientTime:
    """Simulated time and energy of one client on device class ``device``, training a
    ``family`` model (its FLOPs run at the engine's measured share of the device's speed).

    Energy: the device's training power over compute and transfer time (radios and SoC both
    busy; a conservative single-power model).
    """
    from device_profiles import get_profile

    profile = get_profile(device)
    compute = profile.compute_seconds(flops, family)
    network = profile.transfer_seconds(bytes_up, bytes_down)
    return ClientTime(compute, network, profile.energy_joules(compute + network))


@dataclass
class VirtualClock:
    """Simulated seconds since the run started, and the time of day they correspond to."""

    start_hour: float = 0.0
    now_s: float = 0.0
    history: list[float] = field(default_factory=list)  # each round's simulated length

    @property
    def hour(self) -> float:
        """Simulated time of day, 0 <= hour < 24."""
        return (self.start_hour + self.now_s / 3600.0) % 24.0

    def advance(self, seconds: float) -> None:
        """Move on by one round of ``seconds``."""
        self.history.append(seconds)
        self.now_s += seconds


def _bytes(record: Any) -> int:
    return sum(len(array.data) for array in record.values())


class SimulatedNetwork:
    """Dropouts, simulated timing and the deadline, applied around each train message.

    Clients that drop out or miss the deadline still drew energy: a drop-out trains (so its
    FLOPs are known) and drops at a seeded random point of its round, a late client computes
    until the deadline, when the server stops waiting. Their joules wait in ``spent``, keyed by
    (round, client), for ``World.annotate`` to put on the rejected clients (a list: an
    asynchronous client may drop out twice from the same model version, in order).
    """

    def __init__(
        self,
        population: Population,
        deadline_s: float | None = None,
        nodes: NodeMap | None = None,
    ) -> None:
        self.population = population
        self.deadline_s = deadline_s
        self.nodes = nodes or NodeMap()
        self.spent: dict[tuple[int, int], list[float]] = {}

    def _drops_at(self, msg: Message) -> float | None:
        """The share of its round after which the addressee drops out, or None if it stays."""
        if msg.metadata.message_type not in TRAINING or not msg.metadata.group_id.isdigit():
            return None
        number, client = int(msg.metadata.group_id), self.nodes.client(msg.metadata.dst_node_id)
        if not self.population.drops_out(number, client):
            return None
        return float(np.random.default_rng([self.population.seed, 5, number, client]).random())

    def _lost(self, msg: Message, device: str, seconds: float, reason: str) -> Message:
        from device_profiles import get_profile

        key = (int(msg.metadata.group_id), self.nodes.client(msg.metadata.dst_node_id))
        self.spent.setdefault(key, []).append(get_profile(device).energy_joules(seconds))
        return Message(Error(ErrorCode.NODE_UNAVAILABLE, reason), reply_to=msg)

    def take_spent(self, number: int, client: int) -> float | None:
        """Joules a rejected client drew in round ``number`` (each loss once, oldest first;
        an asynchronous run's ``number`` is the step its model was sent for), or None."""
        losses = self.spent.get((number, client))
        if not losses:
            return None
        joules = losses.pop(0)
        if not losses:
            del self.spent[(number, client)]
        return joules

    def stamp(self, msg: Message, reply: Message) -> tuple[Message, float]:
        """Add simulated times to a train reply; return it (or a deadline error) and its
        simulated arrival in seconds after the round started."""
        if msg.metadata.message_type not in TRAINING or reply.has_error():
            return reply, 0.0
        metrics = protocol.record(reply.content, protocol.METRICS, MetricRecord)
        info = protocol.record(reply.content, protocol.CLIENT_INFO, ConfigRecord)
        drops_at = self._drops_at(msg)
        if metrics is None or info is None or "flops" not in metrics:
            if drops_at is not None:
                reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, DROPPED), reply_to=msg)
            return reply, 0.0
        down = _bytes(msg.content[protocol.GLOBAL])
        up = sum(_bytes(r) for r in reply.content.values() if isinstance(r, ArrayRecord))
        family = info.get("model_family")
        family = family if isinstance(family, str) and family in FAMILIES else None
        timing = client_time(str(info["device_class"]), float(metrics["flops"]), up, down, family)
        for key, value in timing.metrics().items():
            metrics[key] = value
        device = str(info["device_class"])
        deadline = self.deadline_s
        if drops_at is not None and (deadline is None or drops_at * timing.total_s <= deadline):
            seconds = drops_at * timing.total_s
            return self._lost(msg, device, seconds, DROPPED), seconds
        if deadline is not None and timing.total_s > deadline:
            reason = f"{DEADLINE} ({timing.total_s:.3g} s > {deadline:g} s)"
            return self._lost(msg, device, deadline, reason), timing.total_s
        return reply, timing.total_s
