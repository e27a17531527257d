"""The types a round is described with: its config, each client's outcome, the round's outcome.

Shared by the round loop (``aggregator.rounds``), selection (``aggregator.select``) and the
collectors (``aggregator.collect``), which import this module and never each other's callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from aggregator.decode import DEFAULT_MAX_EXAMPLES
from aggregator.secagg.config import SecAggConfig
from fedcore import protocol

if TYPE_CHECKING:  # the asynchronous loop imports these types; its config is only named here
    from aggregator.evaluation import EvaluationConfig, FederatedEvaluation
    from aggregator.staleness import AsyncConfig

ClientDirectory = Callable[[int], Mapping[int, int]]

#: ``RoundOutcome.metrics`` key of a secure round: the bound (``[secagg] clip``) every summed
#: update was clipped to per coordinate on its device before masking, and the decoded sum was
#: checked against. Such a round's updates were validated by that bound, not by the norm
#: guard, which cannot judge updates the server never sees.
SECAGG_CLIP = "secagg_clip"


@dataclass(frozen=True)
class FederationConfig:
    """What the server needs to drive a run (independent of any scenario file format)."""

    num_rounds: int
    clients_per_round: int
    train: protocol.TrainInstructions  # ``round`` and ``seed`` are filled per client
    seed: int
    timeout: float | None = None
    min_nodes: int = 0  # wait for this many nodes before the first round (0: clients_per_round)
    connect_timeout: float = 120.0
    secagg: SecAggConfig | None = None  # secure aggregation (SecAgg+) for every round
    # Who may be selected in round n, ``{client_id: node_id}``, when the server knows its
    # clients (a simulated population); None: ask every connected node once (``query``).
    directory: ClientDirectory | None = None
    over_selection: float = 1.0  # select ceil(k * this), keep the first k replies
    max_examples: int = DEFAULT_MAX_EXAMPLES  # the most examples one reply may claim
    # buffered asynchronous training (FedBuff): ``num_rounds`` counts server steps
    asynchrony: AsyncConfig | None = None
    evaluation: EvaluationConfig | None = None  # federated evaluation on the clients' data


@dataclass(frozen=True)
class ClientOutcome:
    """One selected client's part in a round."""

    client_id: int
    node_id: int
    accepted: bool
    num_examples: int = 0
    train_loss: float | None = None
    seconds: float | None = None
    reason: str | None = None
    bytes_up: int = 0  # update bytes on the wire (after compression)
    bytes_down: int = 0  # global model bytes sent to the client
    device_class: str | None = None  # as the client reported it (or a simulation assigned)
    metrics: dict[str, float] = field(default_factory=dict)  # extra numeric reply metrics


@dataclass
class RoundOutcome:
    """What one round produced; handed to ``on_round`` before the next round starts."""

    number: int
    clients: list[ClientOutcome]
    train_loss: float
    test_loss: float | None  # None: no evaluation on the server's test set
    test_accuracy: float | None
    seconds: float
    params: np.ndarray = field(repr=False)
    epsilon: float | None = None  # differential privacy spent so far, if any
    server_state: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # resumable
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. simulated seconds, energy
    evaluation: FederatedEvaluation | None = None  # the clients' evaluation, when due

    @property
    def num_accepted(self) -> int:
        """Clients whose update went into the aggregate."""
        return sum(c.accepted for c in self.clients)

    @property
    def num_selected(self) -> int:
        """Distinct clients asked to train (a duplicate reply adds an outcome, not a client)."""
        return len({c.client_id for c in self.clients})

    @property
    def bytes_up(self) -> int:
        """Update bytes received this round."""
        return sum(c.bytes_up for c in self.clients)

    @property
    def bytes_down(self) -> int:
        """Global model bytes sent this round."""
        return sum(c.bytes_down for c in self.clients)


EvaluateFn = Callable[[np.ndarray], tuple[float, float]]
OnRound = Callable[[RoundOutcome], None]
BeforeRound = Callable[[int, "FederationConfig"], "FederationConfig"]


class StopRun(Exception):
    """Raised by ``before_round``/``on_round`` to end a run early (``paused`` or ``aborted``)."""

    def __init__(self, status: str, message: str = "") -> None:
        super().__init__(message or status)
        self.status = status


class RoundFailed(RuntimeError):
    """A round could not produce a model (e.g. every update was rejected)."""
