"""Runs in the store: start one, apply operators' commands between rounds, resume after a stop.

``run_scenario`` records a new run; ``resume_run`` continues a paused or crashed one from its
last committed round (checkpointed model and server state, same seed), so it ends with the same
final model as an uninterrupted run. Commands queued with ``fedcore runs pause|abort|set`` are
applied by ``StoreHooks.before_round`` at the next round boundary, as is an interrupt
(``simulations.interrupts``): a run stopped by a signal or Ctrl-C is ``paused``, never lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aggregator.rounds import FederationConfig, RoundOutcome, StopRun
from fedcore.settings import SettingsError, TrainSettings
from simulations.harness import Resume, SimulationResult
from simulations.harness import simulate as simulate_prepared
from simulations.prepare import PreparedScenario, prepare_scenario
from simulations.scenario import Scenario, scenario_from_dict

if TYPE_CHECKING:  # SQLAlchemy is imported only by a run that is stored
    from aggregator.store import Store
    from simulations.interrupts import Interrupts

# ``fedcore runs set`` keys: the training settings an operator may change, and the round size
SETTABLE = (*TrainSettings.operator_settable(), "clients_per_round")


def check_settings(values: Mapping[str, str | int | float]) -> dict[str, int | float]:
    """An operator's ``set`` values (text or numbers) checked as a scenario's ``[train]`` and
    ``federation.clients_per_round`` are; ``ValueError`` with one line naming the key."""
    out: dict[str, int | float] = {}
    for key, value in values.items():
        if key not in SETTABLE:
            raise ValueError(f"cannot set {key!r}; settable: {', '.join(SETTABLE)}")
        number = _number(key, value)
        if key == "clients_per_round":
            if not isinstance(number, int) or number <= 0:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        else:
            try:
                TrainSettings.from_table({key: number})
            except SettingsError as error:
                raise ValueError(str(error)) from None
        out[key] = number
    return out


def _number(key: str, value: str | int | float) -> int | float:
    """``value`` as a number: an int when it is written as one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    raise ValueError(f"{key}: expected a number, got {value!r}")


def apply_settings(config: FederationConfig, settings: dict[str, Any]) -> FederationConfig:
    """A round config with an operator's ``set`` values applied (keys from ``SETTABLE``)."""
    settings = check_settings(settings)
    train = {k: v for k, v in settings.items() if k in TrainSettings.operator_settable()}
    if train:
        new = config.train.settings.with_values(train)
        config = replace(config, train=replace(config.train, settings=new))
    if "clients_per_round" in settings:
        config = replace(config, clients_per_round=int(settings["clients_per_round"]))
    return config


class StoreHooks:
    """Round callbacks that commit each round and apply queued commands (and interrupts)."""

    def __init__(
        self,
        store: Store,
        run_id: int,
        on_round: Callable[[RoundOutcome], None] | None,
        interrupts: Interrupts | None = None,
    ) -> None:
        self.store, self.run_id, self.on_round = store, run_id, on_round
        self.interrupts = interrupts
        if interrupts is not None:
            interrupts.run_id = run_id

    def record(self, outcome: RoundOutcome) -> None:
        """Commit the round (checkpoint first), then tell the caller."""
        self.store.record_round(self.run_id, outcome)
        if self.on_round is not None:
            self.on_round(outcome)

    def before_round(self, number: int, config: FederationConfig) -> FederationConfig:
        """Apply the commands queued since the last round: set, then pause or abort."""
        for control in self.store.take_controls(self.run_id, number - 1):
            if control.command == "set":
                settings = control.payload or {}
                config = apply_settings(config, settings)
                train_keys = TrainSettings.operator_settable()
                train = {k: v for k, v in settings.items() if k in train_keys}
                federation = {k: v for k, v in settings.items() if k not in train_keys}
                for section, values in (("train", train), ("federation", federation)):
                    if values:
                        self.store.update_run_config(self.run_id, section, values)
            elif control.command in ("pause", "abort"):
                status = "paused" if control.command == "pause" else "aborted"
                raise StopRun(status, f"run {self.run_id} {status} before round {number}")
        signal = None if self.interrupts is None else self.interrupts.signal
        if signal is not None:
            raise StopRun("paused", f"run {self.run_id} paused before round {number} ({signal})")
        return config

    def stop_if_asked(self, number: int, config: FederationConfig) -> None:
        """Between rounds' waits (e.g. for devices to connect): apply a queued pause or abort,
        or an interrupt, now rather than at the next round (raises ``StopRun``)."""
        interrupted = self.interrupts is not None and self.interrupts.signal is not None
        if interrupted or self.store.pending_stop(self.run_id):
            self.before_round(number, config)


def _run_stored(
    store: Store,
    run_id: int,
    prepared: PreparedScenario,
    backend: str,
    on_round: Callable[[RoundOutcome], None] | None,
    resume: Resume | None = None,
    interrupts: Interrupts | None = None,
    **options: Any,
) -> SimulationResult:
    """Simulate stored run ``run_id`` (from after ``resume`` if given) with its store hooks,
    and record how it ended: completed, paused (also when interrupted), aborted or failed."""
    hooks = StoreHooks(store, run_id, on_round, interrupts)
    try:
        result = simulate_prepared(
            prepared,
            backend,
            hooks.record,
            resume_from=resume,
            before_round=hooks.before_round,
            **options,
        )
    except StopRun as stop:
        store.finish_run(run_id, stop.status)
        raise
    except KeyboardInterrupt as exc:  # stopped at once: resumable from the last commit
        store.finish_run(run_id, "paused", error=f"interrupted: {exc}" if str(exc) else None)
        raise
    except BaseException as exc:
        store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    store.finish_run(run_id, "completed")
    result.run_id = run_id
    return result


def create_stored_run(store: Store, prepared: PreparedScenario, backend: str) -> int:
    """Record a new run of ``prepared`` on ``backend`` (its scenario and model spec)."""
    spec = prepared.scenario
    return store.create_run(
        spec.name,
        backend,
        spec.seed,
        spec.model_dump(mode="json"),
        {
            "name": prepared.spec.name,
            "kwargs": prepared.spec.kwargs,
            "input_shape": list(prepared.data.input_shape),
        },
    )


def run_scenario(
    scenario: Scenario | PreparedScenario,
    backend: str = "inprocess",
    on_round: Callable[[RoundOutcome], None] | None = None,
    store: Store | None = None,
    flower_verbose: bool = False,
    device: str | None = None,
    interrupts: Interrupts | None = None,
) -> SimulationResult:
    """Run ``scenario`` on ``backend``; with a ``store``, record the run and every round
    (and pause it at the next round boundary when ``interrupts`` catches a signal).

    Nothing is stored for a scenario that ``prepare_scenario`` rejects.
    """
    prepared = scenario if isinstance(scenario, PreparedScenario) else prepare_scenario(scenario)
    if store is None:
        return simulate_prepared(
            prepared, backend, on_round, device=device, flower_verbose=flower_verbose
        )
    run_id = create_stored_run(store, prepared, backend)
    return _run_stored(
        store,
        run_id,
        prepared,
        backend,
        on_round,
        interrupts=interrupts,
        device=device,
        flower_verbose=flower_verbose,
    )


def prepare_stored_run(store: Store, run_id: int) -> tuple[PreparedScenario, Resume | None]:
    """Rebuild a stored run's scenario and find where it stopped (None: before round 1)."""
    run = store.get_run(run_id)
    prepared = prepare_scenario(scenario_from_dict(run.config, source=f"run {run_id}"))
    if not run.rounds:
        return prepared, None
    last, checkpoint = store.load_checkpoint(run_id)
    if prepared.world is not None:  # the virtual clock goes on from the stored sim_clock_s
        done = sorted((r for r in run.rounds if r.number <= last.number), key=lambda r: r.number)
        prepared.world.restore_clock([r.metrics for r in done])
    return prepared, Resume(last.number, checkpoint.params, checkpoint.server_state)


def resume_run(
    store: Store,
    run_id: int,
    backend: str | None = None,
    on_round: Callable[[RoundOutcome], None] | None = None,
    flower_verbose: bool = False,
    device: str | None = None,
    interrupts: Interrupts | None = None,
) -> SimulationResult:
    """Continue a paused or interrupted run from its last committed round."""
    from aggregator.store import StoreError

    run = store.claim_run(run_id, backend or store.get_run(run_id).backend)
    prepared, resume = prepare_stored_run(store, run_id)
    if resume is not None and resume.round >= prepared.config.num_rounds:
        store.finish_run(run_id, "completed")  # it crashed after its last commit
        raise StoreError(f"run {run_id} had already run all {resume.round} rounds")
    return _run_stored(
        store,
        run_id,
        prepared,
        run.backend,
        on_round,
        resume,
        interrupts,
        device=device,
        flower_verbose=flower_verbose,
    )
