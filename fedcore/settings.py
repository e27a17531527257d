"""Local-training settings: one type from the scenario file to the device's trainer.

A scenario's ``[train]`` table validates into `TrainSettings`; the server sends it in every
train message (flattened into the ``ConfigRecord``, see ``fedcore.protocol``); the device
validates what arrives into the same type (a message is untrusted) and hands it to
``client_runtime.trainer.train_local``. Adding a setting is one field here plus its use.

A plain frozen dataclass, checked by hand (`Limits` per field), because a device installs
numpy and cryptography only: no pydantic. Its messages read like the scenario's other errors
(``batch_size: must be > 0, got 0``); ``simulations.scenario`` puts its table's name in front.

Fields marked ``from_strategy`` are set by the strategy (FedProx's ``proximal_mu``) or another
table (``local_test`` comes from ``[evaluation]``), not by a scenario's ``[train]`` table nor by
``fedcore runs set``; ``set_by`` names where they are set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


class SettingsError(ValueError):
    """Settings that do not validate: ``key`` names the first bad field, ``message`` says what
    is wrong with it, ``more`` counts the other problems found."""

    def __init__(self, key: str, message: str, more: int = 0) -> None:
        self.key, self.message, self.more = key, message, more
        tail = f" (and {more} more)" if more else ""
        super().__init__(f"{key}: {message}{tail}")


@dataclass(frozen=True)
class Limits:
    """What a field accepts: its kind, bounds, choices or length, and who sets it."""

    kind: type  # int, float or str
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    max_length: int | None = None
    from_strategy: bool = False  # set by the strategy or another table, not by [train]
    set_by: str = ""  # where a from_strategy field is set (a dotted scenario key)
    for_the_run: bool = False  # the run is defined by it: no operator changes it mid-run

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` (None: nothing)."""
        if self.kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            return f"expected an integer, got {describe(value)}"
        if self.kind is float and not (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            return f"expected a number, got {describe(value)}"
        if self.kind is str:
            if not isinstance(value, str):
                return f"expected a string, got {describe(value)}"
            if not value:
                return "must not be empty"
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters, got {len(value)}"
            if self.choices and value not in self.choices:
                known = " or ".join(repr(c) for c in self.choices)
                return f"expected {known}, got {describe(value)}"
            return None
        assert isinstance(value, int | float)
        if self.kind is float and not math.isfinite(value):
            return f"must be a finite number, got {describe(value)}"
        for bound, sign, ok in (
            (self.gt, ">", lambda b: value > b),
            (self.ge, ">=", lambda b: value >= b),
            (self.lt, "<", lambda b: value < b),
        ):
            if bound is not None and not ok(bound):
                return f"must be {sign} {bound:g}, got {describe(value)}"
        return None


def _setting(default: Any, **limits: Any) -> Any:
    """A dataclass field with its default and its `Limits`."""
    return field(default=default, metadata={"limits": Limits(**limits)})


_FOR_THE_RUN = {"for_the_run": True}  # set by the scenario, not changed by an operator mid-run


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one client's local training in one round (minibatch SGD)."""

    local_epochs: int = _setting(1, kind=int, gt=0)
    batch_size: int = _setting(32, kind=int, gt=0)
    learning_rate: float = _setting(0.1, kind=float, gt=0)
    momentum: float = _setting(0.0, kind=float, ge=0, lt=1)
    # sgd: L2 added to the gradient; adam: AdamW's decay
    weight_decay: float = _setting(0.0, kind=float, ge=0)
    # what is minimised: cross_entropy | mse | a fedcore.losses name | package.module:fn
    loss: str = _setting("cross_entropy", kind=str, max_length=200, **_FOR_THE_RUN)
    # adam: AdamW (decoupled weight decay)
    optimizer: str = _setting("sgd", kind=str, choices=("sgd", "adam"), **_FOR_THE_RUN)
    # clip each step's gradient to this L2 norm (0: off)
    max_grad_norm: float = _setting(0.0, kind=float, ge=0)
    # rows a micro-batch: each batch's forward and backward in micro-batches, gradients added
    # (less memory, the same step up to float rounding; fedcore.nn.shards.train_step); 0: off
    micro_batch: int = _setting(0, kind=int, ge=0)
    # FedProx: after each step, p -= lr * mu * (p - p_start)
    proximal_mu: float = _setting(
        0.0, kind=float, ge=0, from_strategy=True, set_by="federation.strategy_options"
    )
    # the share of its examples a client holds out for federated evaluation (not trained on)
    local_test: float = _setting(
        0.0, kind=float, ge=0, lt=1, from_strategy=True, set_by="evaluation.local_test"
    )

    LIMITS: ClassVar[dict[str, Limits]]

    def __post_init__(self) -> None:
        problems = [
            (name, text)
            for name, limits in self.LIMITS.items()
            if (text := limits.problem(getattr(self, name))) is not None
        ]
        if problems:
            raise SettingsError(*problems[0], more=len(problems) - 1)
        for name, limits in self.LIMITS.items():  # 1 and 1.0 are the same learning rate
            if limits.kind is float:
                object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Every field, in order."""
        return tuple(cls.LIMITS)

    @classmethod
    def default(cls, name: str) -> Any:
        """Field ``name``'s default."""
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def settable(cls) -> tuple[str, ...]:
        """Fields a scenario's ``[train]`` table and an operator may set (not the strategy's)."""
        return tuple(name for name, lim in cls.LIMITS.items() if not lim.from_strategy)

    @classmethod
    def operator_settable(cls) -> tuple[str, ...]:
        """Fields ``fedcore runs set`` may change between rounds (numbers; not the loss or
        the optimizer, which the run is defined by)."""
        return tuple(name for name in cls.settable() if not cls.LIMITS[name].for_the_run)

    @classmethod
    def from_strategy(cls) -> tuple[str, ...]:
        """Fields the strategy sets (``Strategy.client_options``)."""
        return tuple(name for name, lim in cls.LIMITS.items() if lim.from_strategy)

    @classmethod
    def set_by(cls, name: str) -> str:
        """Where a ``from_strategy`` field is set (a dotted scenario key)."""
        return cls.LIMITS[name].set_by

    @classmethod
    def from_table(cls, table: object) -> TrainSettings:
        """A ``[train]`` table (untrusted) validated: every key known, every value checked;
        `SettingsError` naming the first bad key (``""``: the table itself) otherwise."""
        if not isinstance(table, Mapping):
            raise SettingsError("", f"expected a table, got {describe(table)}")
        unknown = [key for key in table if key not in cls.LIMITS]
        if unknown:
            allowed = ", ".join(cls.LIMITS)
            raise SettingsError(str(unknown[0]), f"unknown key (allowed: {allowed})")
        return cls(**table)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Validate the known fields among ``values`` (a message's flat config: other keys are
        ignored, missing ones take their defaults); `SettingsError` if bad."""
        return cls(**{k: values[k] for k in cls.LIMITS if k in values})

    def with_values(self, values: Mapping[str, Any]) -> TrainSettings:
        """These settings with ``values`` laid over them, validated again."""
        return type(self).from_table({**self.as_dict(), **values})

    def as_dict(self) -> dict[str, Any]:
        """Every field by name (what a train message carries)."""
        return dataclasses.asdict(self)


TrainSettings.LIMITS = {f.name: f.metadata["limits"] for f in dataclasses.fields(TrainSettings)}


def describe(value: object) -> str:
    """A value as an error message shows it (short)."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
