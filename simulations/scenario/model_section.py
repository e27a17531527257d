"""The ``[model]`` table: the builder every client trains (a registered name or
``package.module:build``), the keywords it takes, and LoRA adapters (``lora``)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fedcore.models import MODELS
from fedcore.models.registry import model_builder
from fedcore.resolve import is_reference
from simulations.scenario.errors import fail as _fail
from simulations.scenario.errors import one_of as _one_of
from simulations.scenario.errors import resolved as _resolved
from simulations.scenario.model_fit import WIDTH_OF, builder_parameters, one_width_key
from simulations.scenario.section import Section

# [model] keys that come from the data and the run, never from the table
SIZE_KEYS: tuple[str, ...] = ("input_dim", "num_classes", "input_shape", "vocab_size", "seed")


class LoraSection(Section):
    """``[model] lora = { rank = 8, alpha = 16, targets = ["attn", "mlp"], base = "int8" }``:
    adapters on the Dense layers the targets name, everything else frozen, so a round trains
    and sends the adapters only (`fedcore.nn.lora`); ``base = "int8"`` holds the frozen
    weights as int8 codes with per-output-channel scales; ``freeze_a = true`` trains and
    sends B only (FFA-LoRA: half the values, and averaging them is exact)."""

    rank: Annotated[int, Field(ge=1, le=256)] = 8
    alpha: PositiveFloat = 16.0
    targets: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = [
        "attn", "mlp"]
    base: Literal["float32", "int8"] = "float32"
    freeze_a: bool = False

    @field_validator("alpha", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return float(value) if type(value) is int else value


class ModelSection(Section):
    """The model every client trains: ``name`` (or ``factory``) names its builder: a
    registered model (``fedcore.models.MODELS``: the built-ins and ``fedcore.models`` entry
    points) or ``package.module:build``. Every other key is passed to the builder's keyword
    of the same name and is only allowed when the builder takes it; a declared key left out
    gets the builder's default (filled in, so a stored scenario says what was built). Sizes
    (input shape, classes, vocabulary) and the seed come from the data and the run, see
    `simulations.prepare.build_scenario_model`.
    """

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    name: str | None = None
    factory: str | None = None  # the same as name: "package.module:build" reads well here
    hidden: list[PositiveInt] | None = None  # mlp: hidden widths; lstm: one width (or an int)
    channels: list[PositiveInt] | None = None  # cnn: output channels of each conv block
    embed_dim: PositiveInt | None = None  # lstm: word-embedding width
    lora: LoraSection | None = None  # fine-tune adapters only (any model with Dense layers)

    @field_validator("name", "factory")
    @classmethod
    def _known_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not is_reference(value) and value not in MODELS:
            return _one_of("model", value, MODELS)
        return _resolved(value, model_builder)

    @field_validator("hidden", mode="before")
    @classmethod
    def _one_width(cls, value: Any, info: ValidationInfo) -> Any:
        """A model with one hidden width (lstm) may say ``hidden = 128`` for ``[128]``."""
        name = info.data.get("factory") or info.data.get("name")
        if type(value) is int and name and one_width_key(name, "hidden"):
            if value <= 0:
                raise PydanticCustomError("scenario", f"must be > 0, got {value}")
            return [value]
        return value

    @property
    def builder(self) -> str:
        """What names the builder: ``factory`` or ``name``."""
        return self.factory or self.name or ""

    @model_validator(mode="after")
    def _fits_model(self) -> Self:
        if (self.name is None) == (self.factory is None):
            if self.name is None:
                raise _fail("model.name", "missing required key (or model.factory)")
            raise _fail("model.factory", "give model.name or model.factory, not both")
        name = self.builder
        params = builder_parameters(name)
        keys = model_keys(name)
        for key, value in (self.model_extra or {}).items():
            if key not in keys:
                takes = f"its keys: {', '.join(keys)}" if keys else "it has none"
                reason = "set from the data and the run" if key in SIZE_KEYS else "not used"
                raise _fail(f"model.{key}", f"{reason} by model {name!r} ({takes})")
            if not _plain_value(value):
                raise _fail(f"model.{key}", "expected a number, string, boolean or list")
        for key in _HYPERPARAMETERS:
            value = getattr(self, key)
            if key not in keys:
                if value is not None:
                    takes = f"its keys: {', '.join(keys)}" if keys else "it has none"
                    raise _fail(f"model.{key}", f"not used by model {name!r} ({takes})")
                continue
            default = params[key].default
            if value is None and default is inspect.Parameter.empty:
                raise _fail(f"model.{key}", f"missing required key (model {name!r} needs it)")
            if value is None:
                value = [default] if one_width_key(name, key) else default
                value = list(value) if isinstance(value, tuple | list) else value
                self.__dict__[key] = value
            if isinstance(value, list) and not value:
                noun = WIDTH_OF.get(key, "value")
                raise _fail(f"model.{key}", f"{name} needs at least one {noun}")
            if isinstance(value, list) and len(value) > 1 and one_width_key(name, key):
                raise _fail(f"model.{key}", f"{name} takes one width (e.g. {key} = {value[0]})")
        for key in keys:
            missing = key not in _HYPERPARAMETERS and key not in (self.model_extra or {})
            if missing and params[key].default is inspect.Parameter.empty:
                raise _fail(f"model.{key}", f"missing required key (model {name!r} needs it)")
        return self

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The builder keywords this table sets (one-width keys as an int)."""
        name = self.builder
        out: dict[str, Any] = {}
        for key in model_keys(name):
            if key in _HYPERPARAMETERS:
                value = getattr(self, key)
                out[key] = value[0] if one_width_key(name, key) else value
            elif key in (self.model_extra or {}):
                out[key] = self.model_extra[key]
        return out


_HYPERPARAMETERS: tuple[str, ...] = ("hidden", "channels", "embed_dim")


def _plain_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain_value(v) for v in value)
    return isinstance(value, bool | int | float | str)


def model_keys(name: str) -> tuple[str, ...]:
    """The ``[model]`` keys (besides name) that model ``name`` takes: its builder's keyword
    parameters other than the sizes and the seed (the declared ones first)."""
    params = builder_parameters(name)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    declared = [key for key in _HYPERPARAMETERS if key in params]
    others = [key for key, p in params.items()
              if p.kind in kinds and key not in SIZE_KEYS and key not in declared]
    return tuple(declared + others)
