"""Local-training settings: one type from the scenario file to the device's trainer.

A scenario's ``[train]`` table validates into `TrainSettings`; the server sends it in every
train message (flattened into the ``ConfigRecord``, see ``fedcore.protocol``); the device
validates what arrives into the same type (a message is untrusted) and hands it to
``client_runtime.trainer.train_local``. Adding a setting is one field here plus its use.

Fields marked ``from_strategy`` are set by the strategy (FedProx's ``proximal_mu``) or another
table (``local_test`` comes from ``[evaluation]``), not by a scenario's ``[train]`` table nor by
``fedcore runs set``; ``set_by`` names where they are set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from pydantic.fields import FieldInfo

Momentum = Annotated[float, Field(ge=0.0, lt=1.0)]
_FROM_STRATEGY = {"from_strategy": True, "set_by": "federation.strategy_options"}
_FROM_EVALUATION = {"from_strategy": True, "set_by": "evaluation.local_test"}
_FOR_THE_RUN = {"for_the_run": True}  # set by the scenario, not changed by an operator mid-run
LocalTest = Annotated[float, Field(ge=0.0, lt=1.0)]


def _by_strategy(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("from_strategy"))


class TrainSettings(BaseModel):
    """Hyperparameters of one client's local training in one round (minibatch SGD)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 0.1
    momentum: Momentum = 0.0
    weight_decay: NonNegativeFloat = 0.0  # sgd: L2 added to the gradient; adam: AdamW's decay
    # what is minimised: cross_entropy | mse | a fedcore.losses name | package.module:fn
    loss: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default="cross_entropy", json_schema_extra=_FOR_THE_RUN
    )
    # adam: AdamW (decoupled weight decay)
    optimizer: Literal["sgd", "adam"] = Field(default="sgd", json_schema_extra=_FOR_THE_RUN)
    max_grad_norm: NonNegativeFloat = 0.0  # clip each step's gradient to this L2 norm (0: off)
    # FedProx: after each step, p -= lr * mu * (p - p_start)
    proximal_mu: NonNegativeFloat = Field(default=0.0, json_schema_extra=_FROM_STRATEGY)
    # the share of its examples a client holds out for federated evaluation (not trained on)
    local_test: LocalTest = Field(default=0.0, json_schema_extra=_FROM_EVALUATION)

    @classmethod
    def settable(cls) -> tuple[str, ...]:
        """Fields a scenario's ``[train]`` table and an operator may set (not the strategy's)."""
        return tuple(name for name, info in cls.model_fields.items() if not _by_strategy(info))

    @classmethod
    def operator_settable(cls) -> tuple[str, ...]:
        """Fields ``fedcore runs set`` may change between rounds (numbers; not the loss or
        the optimizer, which the run is defined by)."""
        return tuple(
            name for name in cls.settable()
            if not (isinstance(extra := cls.model_fields[name].json_schema_extra, dict)
                    and extra.get("for_the_run"))
        )

    @classmethod
    def from_strategy(cls) -> tuple[str, ...]:
        """Fields the strategy sets (``Strategy.client_options``)."""
        settable = cls.settable()
        return tuple(name for name in cls.model_fields if name not in settable)

    @classmethod
    def set_by(cls, name: str) -> str:
        """Where a ``from_strategy`` field is set (a dotted scenario key)."""
        extra = cls.model_fields[name].json_schema_extra
        return str(extra.get("set_by", "")) if isinstance(extra, dict) else ""

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Validate the known fields among ``values`` (a message's flat config: other keys are
        ignored, missing ones take their defaults); ``pydantic.ValidationError`` if bad."""
        return cls.model_validate({k: values[k] for k in cls.model_fields if k in values})

    def with_values(self, values: Mapping[str, Any]) -> TrainSettings:
        """These settings with ``values`` laid over them, validated again."""
        return type(self).model_validate({**self.model_dump(), **values})
