"""Stored runs: one lifecycle (create, run, pause or abort, finish, resume) for every runtime.

`StoredRun` owns it: ``create`` records a new run, ``reopen`` rebuilds a paused or crashed one
from its last committed round (checkpointed model and server state, same seed, the virtual
clock) so it ends with the same final model as an uninterrupted run, and ``drive`` runs the
rounds and records how the run ended. Simulations (``run_scenario``, ``resume_run`` here) and
deployments (``deploy.serverapp``) both go through it. Commands queued with ``fedcore runs
pause|abort|set`` are applied by ``StoreHooks.before_round`` at the next round boundary, as is
an interrupt (``simulations.interrupts``): a run stopped by a signal or Ctrl-C is ``paused``,
never lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

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
        owner: str | None = None,
    ) -> None:
        self.store, self.run_id, self.on_round = store, run_id, on_round
        self.interrupts, self.owner = interrupts, owner
        if interrupts is not None:
            interrupts.run_id = run_id

    def record(self, outcome: RoundOutcome) -> None:
        """Commit the round (checkpoint first), then tell the caller."""
        with deferred(self.interrupts):
            self.store.record_round(self.run_id, outcome, owner=self.owner)
        if self.on_round is not None:
            self.on_round(outcome)

    def before_round(self, number: int, config: FederationConfig) -> FederationConfig:
        """Apply the commands queued since the last round: set, then pause or abort."""
        for control in self.store.take_controls(self.run_id, number - 1, owner=self.owner):
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


T = TypeVar("T")


@dataclass
class StoredRun:
    """One run in the store, from its creation (or its reopening to resume it) to how it ended.

    Simulation (``run_scenario``, ``resume_run``) and deployment (``deploy.serverapp``) drive
    their rounds through ``drive``, so a stored run starts, commits, pauses, aborts, fails and
    resumes the same way whatever runs its rounds.
    """

    store: Store
    run_id: int
    prepared: PreparedScenario
    resume: Resume | None = None  # where it goes on: after this committed round (None: round 1)
    #: the ``host:pid`` that created or claimed the run: every write is fenced by it, so a
    #: driver whose run was taken over or stopped meanwhile cannot write (``NotOwner``)
    owner: str | None = None

    @classmethod
    def create(cls, store: Store, prepared: PreparedScenario, runtime: str) -> StoredRun:
        """Record a new run of ``prepared`` on ``runtime`` (its scenario and model spec)."""
        from aggregator.store import this_process

        spec = prepared.scenario
        run_id = store.create_run(
            spec.name,
            runtime,
            spec.seed,
            spec.model_dump(mode="json"),
            {
                "name": prepared.spec.name,
                "kwargs": prepared.spec.kwargs,
                "input_shape": list(prepared.data.input_shape),
            },
        )
        return cls(store, run_id, prepared, owner=this_process())

    @classmethod
    def reopen(
        cls,
        store: Store,
        run_id: int,
        runtime: str | None = None,
        interrupts: Interrupts | None = None,
        owner: str | None = None,
    ) -> StoredRun:
        """A paused or cut-off run rebuilt from the store: its own scenario, and its last
        checkpoint (model, server state, the virtual clock) to go on from. With ``runtime``
        this process takes the run over first (``Store.claim_run``: a finished run, or one
        still driven by a live process, is refused with ``StoreError``); without, whoever
        started this process has (``fedcore server``), and ``owner`` names that claim. A run
        that had run all its rounds is recorded ``completed`` and refused; one that cannot be
        rebuilt (its data gone, say) is left ``paused`` with the reason, to be resumed once
        that is mended."""
        from aggregator.store import StoreError, this_process

        if runtime is not None:
            store.claim_run(run_id, runtime)
            owner = this_process()
        if interrupts is not None:  # from now on an interrupt names the run
            interrupts.run_id = run_id
        try:
            prepared, resume = _rebuild(store, run_id)
        except KeyboardInterrupt as exc:
            with deferred(interrupts):
                store.finish_run(run_id, "paused", error=_interrupted(exc), owner=owner)
            raise
        except BaseException as exc:
            with deferred(interrupts):
                store.finish_run(run_id, "paused", owner=owner,
                                 error=f"cannot resume: {type(exc).__name__}: {exc}")
            raise
        if resume is not None and resume.round >= prepared.config.num_rounds:
            store.finish_run(run_id, "completed", owner=owner)  # it crashed after its last commit
            raise StoreError(f"run {run_id} had already run all {resume.round} rounds")
        return cls(store, run_id, prepared, resume, owner)

    def drive(
        self,
        federate: Callable[[StoreHooks], T],
        on_round: Callable[[RoundOutcome], None] | None = None,
        interrupts: Interrupts | None = None,
        stopped_by: str | None = None,
    ) -> T:
        """Run ``federate(hooks)`` (the rounds, committed by ``hooks.record``, operators'
        commands applied by ``hooks.before_round``) and record how the run ended: ``completed``;
        ``paused`` or ``aborted`` at a round boundary (``StopRun``, re-raised); ``paused`` when
        a signal stopped it at once (``KeyboardInterrupt`` or ``SystemExit``, re-raised; the
        error names ``stopped_by`` if given): it resumes from its last commit; else ``failed``
        with the error, re-raised. Once the run is no longer ``owner``'s (``NotOwner``: taken
        over, or recorded stopped by whoever started this driver), nothing more is written."""
        from aggregator.store import NotOwner

        hooks = StoreHooks(self.store, self.run_id, on_round, interrupts, self.owner)
        finish = partial(self.store.finish_run, self.run_id, owner=self.owner)
        try:
            result = federate(hooks)
        except NotOwner:
            raise
        except StopRun as stop:
            with deferred(interrupts):  # a second signal now must not cut the record short
                finish(stop.status)
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            error = _interrupted(exc) if stopped_by is None else f"interrupted: {stopped_by}"
            with deferred(interrupts):
                finish("paused", error=error)
            raise
        except BaseException as exc:
            with deferred(interrupts):
                finish("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        with deferred(interrupts):
            finish("completed")
        return result


def deferred(interrupts: Interrupts | None) -> AbstractContextManager[None]:
    """``interrupts.deferred()``, or nothing to defer."""
    return nullcontext() if interrupts is None else interrupts.deferred()


def _interrupted(exc: BaseException) -> str | None:
    """The error a run stopped at once by a signal is recorded with (None: no detail)."""
    return f"interrupted: {exc}" if str(exc) else None


def _rebuild(store: Store, run_id: int) -> tuple[PreparedScenario, Resume | None]:
    """A stored run's scenario prepared again, and where it stopped (None: before round 1)."""
    run = store.get_run(run_id)
    prepared = prepare_scenario(scenario_from_dict(run.config, source=f"run {run_id}"))
    if not run.rounds:
        return prepared, None
    last, checkpoint = store.load_checkpoint(run_id)
    if prepared.world is not None:  # the virtual clock goes on from the stored sim_clock_s
        done = sorted((r for r in run.rounds if r.number <= last.number), key=lambda r: r.number)
        prepared.world.restore_clock([r.metrics for r in done])
    return prepared, Resume(last.number, checkpoint.params, checkpoint.server_state)


def _simulate_stored(
    run: StoredRun,
    runtime: str,
    on_round: Callable[[RoundOutcome], None] | None,
    interrupts: Interrupts | None,
    **options: Any,
) -> SimulationResult:
    """Simulate stored ``run`` on ``runtime`` (from after ``run.resume``) through its
    lifecycle."""

    def federate(hooks: StoreHooks) -> SimulationResult:
        return simulate_prepared(
            run.prepared,
            runtime,
            hooks.record,
            resume_from=run.resume,
            before_round=hooks.before_round,
            **options,
        )

    result = run.drive(federate, on_round, interrupts)
    result.run_id = run.run_id
    return result


def run_scenario(
    scenario: Scenario | PreparedScenario,
    runtime: str = "inprocess",
    on_round: Callable[[RoundOutcome], None] | None = None,
    store: Store | None = None,
    flower_verbose: bool = False,
    array_backend: str | None = None,
    interrupts: Interrupts | None = None,
) -> SimulationResult:
    """Run ``scenario`` on ``runtime`` (``simulations.runtimes``), averaging on
    ``array_backend`` (``aggregator.backend``: auto | cpu | gpu); with a ``store``, record
    the run and every round (and pause it at the next round boundary when ``interrupts``
    catches a signal).

    Nothing is stored for a scenario that ``prepare_scenario`` rejects.
    """
    prepared = scenario if isinstance(scenario, PreparedScenario) else prepare_scenario(scenario)
    options: dict[str, Any] = {"array_backend": array_backend, "flower_verbose": flower_verbose}
    if store is None:
        return simulate_prepared(prepared, runtime, on_round, **options)
    run = StoredRun.create(store, prepared, runtime)
    return _simulate_stored(run, runtime, on_round, interrupts, **options)


def resume_run(
    store: Store,
    run_id: int,
    runtime: str | None = None,
    on_round: Callable[[RoundOutcome], None] | None = None,
    flower_verbose: bool = False,
    array_backend: str | None = None,
    interrupts: Interrupts | None = None,
) -> SimulationResult:
    """Continue a paused or interrupted run from its last committed round (on ``runtime``,
    default the one it ran on)."""
    runtime = runtime or store.get_run(run_id).runtime
    run = StoredRun.reopen(store, run_id, runtime, interrupts)
    options: dict[str, Any] = {"array_backend": array_backend, "flower_verbose": flower_verbose}
    return _simulate_stored(run, runtime, on_round, interrupts, **options)
