"""The round loop, written once against Flower's ``Grid``: select -> collect -> aggregate ->
commit.

Every backend runs this same loop: the in-process simulation hands it a grid that calls the
ClientApp directly, Flower's simulation runtime and a real SuperLink hand it theirs. One round:

1. **select** (``aggregator.select``): sample the clients, with over-selection, from the
   connected nodes or a known population's available clients;
2. **collect** (``aggregator.collect``): one `Collector` per run - plain replies, compressed
   replies or SecAgg+ stages - yields validated contributions or recorded rejections;
3. **aggregate** (``aggregator.strategies``): the strategy's rule, wrappers and server
   optimizer, the same `RoundAggregation` whatever collected;
4. **commit**: evaluate, and hand the `RoundOutcome` to ``on_round`` (the store's hooks
   checkpoint and record it) before the next round starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from flwr.serverapp import Grid

from aggregator.asynchronous import run_async_federation
from aggregator.collect import (
    Collector,
    Contribution,
    RoundPlan,
    SecureSum,
    client_seed,
    collector_for,
    finish_round,
)
from aggregator.evaluation import run_evaluation
from aggregator.round_types import (
    SECAGG_CLIP,
    BeforeRound,
    ClientDirectory,
    ClientOutcome,
    EvaluateFn,
    FederationConfig,
    OnRound,
    RoundFailed,
    RoundOutcome,
    StopRun,
)
from aggregator.select import (
    discover,
    discover_clients,
    sample_clients,
    select_clients,
    wait_for_nodes,
)
from aggregator.strategies import Strategy
from fedcore import trace


def run_round(
    grid: Grid,
    clients: Mapping[int, int],
    params: np.ndarray,
    round_number: int,
    config: FederationConfig,
    strategy: Strategy,
    declared: Mapping[int, int] | None = None,
    collector: Collector | None = None,
) -> tuple[np.ndarray, list[ClientOutcome], dict[str, float]]:
    """Run one round of training; return the new global vector, each client's outcome and
    the round's metrics (a secure round: ``SECAGG_CLIP``, what validated its updates).

    A bad reply (client error, missing records, wrong shape or dtype, NaN/inf, oversized,
    outlier norm, a second reply from the same client) is rejected with its reason and the
    round goes on without it; ``RoundFailed`` when nothing usable came back (the previous
    model stays). ``collector``: the run's (default: a fresh one for ``config``).
    """
    collector = collector or collector_for(config)
    collector.check(strategy)
    plan = RoundPlan(
        grid,
        select_clients(clients, config, round_number),
        params,
        round_number,
        config,
        strategy.client_options,
        declared or {},
        strategy.backend,
    )
    aggregation = strategy.start_round(params, round_number)
    outcomes: list[ClientOutcome] = []
    metrics: dict[str, float] = {}
    pending: list[tuple[int, Contribution]] = []  # (index in outcomes, contribution)
    for item in collector.collect(plan):
        if isinstance(item, SecureSum):  # validated by its clip bound: the guard sees no update
            aggregation.offer_sum(item.mean_update, item.weight)
            outcomes += item.outcomes
            metrics[SECAGG_CLIP] = item.clip
            continue
        if isinstance(item, Contribution):
            pending.append((len(outcomes), item))
        outcomes.append(item.outcome)
    reasons = aggregation.offer_all([c.update for _, c in pending])
    for (index, _), reason in zip(pending, reasons, strict=True):
        outcomes[index] = replace(outcomes[index], accepted=reason is None, reason=reason)
    new = finish_round(aggregation, outcomes, f"round {round_number}", "update")
    return new, outcomes, metrics


def run_federation(
    grid: Grid,
    config: FederationConfig,
    initial: np.ndarray,
    strategy: Strategy,
    evaluate_fn: EvaluateFn | None,
    on_round: OnRound | None = None,
    first_round: int = 1,
    before_round: BeforeRound | None = None,
    resume_state: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Run rounds ``first_round..config.num_rounds``; return the final global vector.

    ``resume_state``: the server state of the checkpoint a resumed run continues from (the
    strategy has loaded its part; an asynchronous run takes its in-flight clients from it).

    ``before_round(number, config)`` may return a changed config for that round on (an
    operator's ``set`` command) or raise ``StopRun``; ``on_round`` sees each finished round.
    ``evaluate_fn`` (None: no server-side test set) scores each new model on the server;
    ``config.evaluation`` asks a sample of clients to score it on their own test splits.
    """
    clients: Mapping[int, int] = {}
    declared: dict[int, int] = {}
    if config.directory is None:
        min_nodes = config.min_nodes or config.clients_per_round
        node_ids = wait_for_nodes(grid, min_nodes, config.connect_timeout)
        clients, declared = discover(grid, node_ids, timeout=config.timeout)
    if config.asynchrony is not None:  # FedBuff: the same pieces without the round barrier
        return run_async_federation(
            grid, config, initial, strategy, evaluate_fn, on_round, first_round, clients,
            declared, before_round, resume_state,
        )  # fmt: skip
    collector = collector_for(config)  # one per run: SecAgg+ keys carry across rounds
    params = np.asarray(initial, dtype=np.float32)
    for number in range(first_round, config.num_rounds + 1):
        if before_round is not None:
            config = before_round(number, config)
        if config.directory is not None:  # the known population: who is available now
            clients = config.directory(number)
        start = time.perf_counter()
        trace.event("round.start", round=number)
        params, outcomes, metrics = run_round(
            grid, clients, params, number, config, strategy, declared, collector
        )
        trace.event("round.aggregated", round=number)
        test_loss, test_accuracy = evaluate_fn(params) if evaluate_fn else (None, None)
        evaluation = None
        if config.evaluation is not None and config.evaluation.due(number, config.num_rounds):
            evaluation = run_evaluation(
                grid, dict(clients), params, number, config.evaluation, config.seed,
                config.timeout, max_examples=config.max_examples, declared=declared,
            )
        trace.event("round.evaluated", round=number)
        accepted = [o for o in outcomes if o.accepted]
        weight = sum(o.num_examples for o in accepted)
        train_loss = sum(o.train_loss * o.num_examples for o in accepted) / weight
        outcome = RoundOutcome(
            number=number,
            clients=outcomes,
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            seconds=time.perf_counter() - start,
            params=params,
            epsilon=strategy.privacy_spent(),
            server_state=strategy.state_dict(),
            evaluation=evaluation,
            metrics=metrics,
        )
        if on_round is not None:
            on_round(outcome)
        trace.event("round.committed", round=number)
    return params


__all__ = [  # the round's types live in round_types and select; importable from here too
    "BeforeRound",
    "ClientDirectory",
    "ClientOutcome",
    "EvaluateFn",
    "FederationConfig",
    "OnRound",
    "RoundFailed",
    "RoundOutcome",
    "StopRun",
    "client_seed",
    "discover",
    "discover_clients",
    "run_federation",
    "run_round",
    "sample_clients",
    "select_clients",
    "wait_for_nodes",
]
