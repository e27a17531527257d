"""The Flower ``ServerApp`` whose ``@app.main()`` runs our round loop.

Both simulation backends (and a deployment) execute this same ServerApp; the caller keeps the
``FederationApp`` to read the final model or the error after the app returns, since Flower's
runtimes run the app in a thread of their own and only log what it raises.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aggregator.rounds import BeforeRound, EvaluateFn, FederationConfig, OnRound, run_federation
from aggregator.strategies import Strategy


class FederationApp:
    """A ServerApp running ``run_federation``, holding its result for the caller."""

    def __init__(
        self,
        config: FederationConfig,
        initial: np.ndarray,
        strategy: Strategy,
        evaluate_fn: EvaluateFn | None,
        on_round: OnRound | None = None,
        first_round: int = 1,
        before_round: BeforeRound | None = None,
        prepare_grid: Callable[[Grid], Grid] | None = None,
        resume_state: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.config = config
        self.prepare_grid = prepare_grid  # e.g. a simulated network around the runtime's grid
        self.first_round = first_round
        self.resume_state = resume_state
        self.before_round = before_round
        self.initial = initial
        self.strategy = strategy
        self.evaluate_fn = evaluate_fn
        self.on_round = on_round
        self.final: np.ndarray | None = None
        self.error: BaseException | None = None
        self.server_app = ServerApp()
        self.server_app.main()(self._main)

    def _main(self, grid: Grid, context: Context) -> None:
        try:
            if self.prepare_grid is not None:
                grid = self.prepare_grid(grid)
            self.final = run_federation(
                grid,
                self.config,
                self.initial,
                self.strategy,
                self.evaluate_fn,
                self.on_round,
                first_round=self.first_round,
                before_round=self.before_round,
                resume_state=self.resume_state,
            )
        except BaseException as exc:  # handed back to the caller by result()
            self.error = exc

    def result(self) -> np.ndarray:
        """The final global vector; re-raises what the round loop raised."""
        if self.error is not None:
            raise self.error
        if self.final is None:
            raise RuntimeError("the server app did not run to completion")
        return self.final
