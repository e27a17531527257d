"""Strategies by name: option defaults, option checking, and building one.

Each named strategy (``builtin.py``) is registered with its option defaults; its options come
from a scenario's ``[federation.strategy_options]`` and are checked against them. Every
strategy also has the validation wrapper's option (``max_norm_factor``). A user's strategy is
``register``ed, a ``package.module:make`` reference or a ``fedcore.strategies`` entry point.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aggregator.guard import NormGuard
from aggregator.strategies.strategy import Strategy, StrategyContext
from fedcore.resolve import Registry, ResolveError

# The norm guard refuses an update more than max_norm_factor x the median of recent accepted
# norms (aggregator.guard.NormGuard). Honest runs of the shipped scenarios, 100 rounds each,
# reached at most 13.1 x (quickstart; phones_label_skew 7.8, the synthetic examples 1.8): 10
# refused honest clients, 30 leaves a margin and still stops a 20x-scaled update of a client
# whose honest norm is typical.
COMMON_OPTIONS: dict[str, Any] = {"max_norm_factor": 30.0}
FLOWER_COMMON: dict[str, Any] = {"max_norm_factor": 0.0}  # Flower validates no norms


Builder = Callable[[dict[str, Any], StrategyContext], Strategy]
OptionValue = bool | int | float | str


@dataclass(frozen=True)
class StrategySpec:
    """A named strategy: its option defaults and how to compose it.

    ``flower`` names Flower's strategy of the same rule (None: Flower has none) and
    ``flower_defaults`` the options whose Flower default differs from ours, with Flower's
    value: ``FlowerStrategy`` builds with those unless the user sets them.
    """

    defaults: dict[str, Any]
    build: Builder
    doc: str
    flower: str | None = None
    flower_defaults: dict[str, Any] = field(default_factory=dict)


#: strategies by name: built-ins, ones registered later (``register``), the installed
#: ``fedcore.strategies`` entry points; ``package.module:make`` references resolve too
STRATEGIES: Registry[StrategySpec | Callable[..., Strategy]] = Registry(
    "fedcore.strategies", "strategy"
)


def register(
    name: str,
    defaults: dict[str, Any],
    doc: str,
    flower: str | None = None,
    flower_defaults: dict[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(options, context) -> Strategy`` under ``name``, with option
    ``defaults`` (numbers, strings or booleans; every strategy also has ``max_norm_factor``);
    ``flower``: the name of Flower's strategy of the same rule, ``flower_defaults``: Flower's
    defaults where they differ from ours."""

    def wrap(build: Builder) -> Builder:
        spec = StrategySpec(
            {**COMMON_OPTIONS, **defaults}, build, doc, flower, dict(flower_defaults or {})
        )
        STRATEGIES.register(name, spec)
        return build

    return wrap


def flower_options(name: str) -> dict[str, Any]:
    """The options that give strategy ``name`` Flower's defaults: the norm guard off (Flower
    has none) and Flower's value of every option whose default differs from ours."""
    try:
        spec = strategy_spec(name)
    except ResolveError as exc:
        raise ValueError(str(exc)) from None
    return {**FLOWER_COMMON, **spec.flower_defaults}


def known_strategies() -> tuple[str, ...]:
    """Names accepted by ``build_strategy`` now (besides ``package.module:make``)."""
    return STRATEGIES.names()


def strategy_spec(name: str, *, allow_import: bool = True) -> StrategySpec:
    """The spec ``name`` resolves to. A plain callable ``make(option=default, ...,
    context=None) -> Strategy`` (a reference or an entry point) becomes a spec whose options
    are its keyword parameters; ``ResolveError`` (one line) if it names nothing usable."""
    found = STRATEGIES.get(name, allow_import=allow_import)
    if isinstance(found, StrategySpec):
        return found
    if not callable(found):
        raise ResolveError(f"strategy {name!r} is a {type(found).__name__}, not a callable")
    try:
        params = inspect.signature(found).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    defaults: dict[str, Any] = {}
    for key, param in params.items():
        if key == "context" or param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if param.default is inspect.Parameter.empty or not isinstance(param.default, OptionValue):
            raise ResolveError(
                f"strategy {name!r}: parameter {key!r} needs a default number, string or boolean"
            )
        defaults[key] = param.default
    takes_context = "context" in params

    def build(options: dict[str, Any], context: StrategyContext) -> Strategy:
        kwargs = {k: options[k] for k in defaults}
        return found(**kwargs, context=context) if takes_context else found(**kwargs)

    return StrategySpec({**COMMON_OPTIONS, **defaults}, build, found.__doc__ or "")


def strategy_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``options`` checked against strategy ``name`` and completed with its defaults."""
    try:
        defaults = strategy_spec(name).defaults
    except ResolveError as exc:
        raise ValueError(str(exc)) from None
    merged = dict(defaults)
    for key, value in (options or {}).items():
        if key not in defaults:
            raise ValueError(
                f"unknown option {key!r} for strategy {name!r} (allowed: {', '.join(defaults)})"
            )
        merged[key] = _option_value(key, value, defaults[key])
    return merged


def _option_value(key: str, value: Any, default: Any) -> Any:
    """``value`` in the type of ``default`` (an int where a float is expected is fine)."""
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            kind = "true or false" if isinstance(default, bool) else "a string"
            raise ValueError(f"option {key!r} must be {kind}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"option {key!r} must be a number, got {value!r}")
    if isinstance(default, int) and not isinstance(value, int):
        raise ValueError(f"option {key!r} must be an integer, got {value!r}")
    return type(default)(value)


def build_strategy(
    name: str, options: dict[str, Any] | None = None, context: StrategyContext | None = None
) -> Strategy:
    """A fresh strategy by name or ``package.module:make``; bad names, options or a maker
    that returns no ``Strategy`` raise ``ValueError`` (one line)."""
    merged = strategy_options(name, options)
    context = context or StrategyContext()
    strategy = strategy_spec(name).build(merged, context)
    if not isinstance(strategy, Strategy):
        raise ResolveError(
            f"strategy {name!r} returned a {type(strategy).__name__}, not an "
            "aggregator.strategies.Strategy"
        )
    strategy.name = name
    strategy.guard = NormGuard(merged["max_norm_factor"])
    strategy.backend = context.backend or strategy.backend
    return strategy
