"""The model registry: names -> builders returning a flat-parameter `fedcore.nn.Module`.

Built-in models register here by name (``@register_model("mlp")``); users bring their own as
``"package.module:build"`` or by declaring a name in the ``fedcore.models`` entry-point group
(see `fedcore.resolve`). `build_model` checks the keyword arguments against the builder's
signature and the result's type, so a mistake is one line naming the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..nn import Module
from ..resolve import Registry, ResolveError

__all__ = ["MODELS", "build_model", "model_builder", "model_parameters", "register_model"]

Builder = Callable[..., Module]

#: every model name: built-ins, names registered later, installed ``fedcore.models`` entry points
MODELS: Registry[Builder] = Registry("fedcore.models", "model")


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name`` (names are unique)."""
    return MODELS.decorator(name)


def model_builder(name: str, *, allow_import: bool = True) -> Builder:
    """The builder ``name`` resolves to (a registered name, an entry point or a reference)."""
    builder = MODELS.get(name, allow_import=allow_import)
    if not callable(builder):
        raise ResolveError(f"model {name!r} is a {type(builder).__name__}, not a callable")
    return builder


def model_parameters(name: str, *, allow_import: bool = True) -> dict[str, inspect.Parameter]:
    """The parameters of model ``name``'s builder, by name."""
    builder = model_builder(name, allow_import=allow_import)
    try:
        return dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: accept any keywords
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}


def check_arguments(name: str, params: Mapping[str, inspect.Parameter], kwargs: Mapping[str, Any]
                    ) -> None:
    """`ResolveError` naming the first keyword the builder does not take, or a missing one."""
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in named:
            raise ResolveError(
                f"model {name!r} takes no argument {key!r} (its arguments: "
                f"{', '.join(named) or 'none'})"
            )
    for key in named:
        if params[key].default is inspect.Parameter.empty and key not in kwargs:
            raise ResolveError(f"model {name!r} needs argument {key!r}")


def build_model(name: str, *, allow_import: bool = True, **kwargs: Any) -> Module:
    """Build model ``name`` with ``kwargs``; its parameters become one flat vector.

    ``lora`` (a dict: rank, alpha, targets, base; see `fedcore.nn.lora`) is not the builder's:
    it puts adapters on the built model, whose flat vector is then the adapters only. A builder
    with a ``lora`` parameter is handed a `fedcore.nn.lora.LoRABuild` to call on each part as
    it builds it (so a quantized base's float32 weights never all exist at once).

    ``ResolveError`` (a ``ValueError``) for an unknown name, a keyword the builder does not
    take, or a result that is not a `fedcore.nn.Module`; the builder's own ``ValueError`` or
    ``TypeError`` for a bad value passes through.
    """
    builder = model_builder(name, allow_import=allow_import)
    lora = kwargs.pop("lora", None)
    if lora is not None:  # checked before anything is built (it may come in a message)
        from ..nn.lora import lora_config

        lora = lora_config(lora)
    params = model_parameters(name, allow_import=allow_import)
    check_arguments(name, params, kwargs)
    if lora is not None and "lora" in params:  # the builder adapts each part as it is built
        from ..nn.lora import LoRABuild

        model = builder(**kwargs, lora=LoRABuild(lora, int(kwargs.get("seed", 0))))
    else:
        model = builder(**kwargs)
    if not isinstance(model, Module):
        raise ResolveError(
            f"model {name!r} returned a {type(model).__name__}, not a fedcore.nn.Module"
        )
    if not model.parameters():
        raise ResolveError(f"model {name!r} has no parameters to train")
    if lora is not None:
        from ..nn.lora import apply_lora

        apply_lora(model, seed=int(kwargs.get("seed", 0)), **lora)
    model.flatten_parameters()
    return model

