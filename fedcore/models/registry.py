"""The model registry: names -> builder functions returning a flat-parameter Module."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from ..nn import Module

__all__ = ["MODELS", "build_model", "register_model"]

Builder = Callable[..., Module]

_REGISTRY: dict[str, Builder] = {}

#: read-only view of the registry: name -> builder (iterate it for the names)
MODELS = MappingProxyType(_REGISTRY)


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under `name` (names are unique)."""

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def build_model(name: str, **kwargs: Any) -> Module:
    """Build the registered model `name` with `kwargs`; ValueError listing names if unknown."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return builder(**kwargs)


from . import mlp as _builtin  # noqa: E402,F401  (registers the built-in models)
