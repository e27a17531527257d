"""One-line scenario errors: ``<source>: <dotted key>: <what is wrong>``.

pydantic's validation errors are turned into plain sentences (``expected an integer, got
'ten'``, ``unknown key (allowed: ...)``, ``must be > 0, got 0``); checks that span several
fields raise `fail` with the key they blame.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from fedcore.resolve import ResolveError
from fedcore.settings import describe


class ScenarioError(Exception):
    """A scenario file or dict is unreadable or invalid; the message is one line."""


def fail(key: str, message: str) -> PydanticCustomError:
    """An error about ``key`` (dotted) found by a check that spans several fields."""
    return PydanticCustomError("scenario", message, {"key": key})


def one_of(kind: str, value: str, known: typing.Iterable[str]) -> str:
    """``value`` if it is among ``known``, else an error listing them."""
    known = list(known)
    if value not in known:
        raise PydanticCustomError(
            "unknown_name", f"unknown {kind} {value!r} (known: {', '.join(known)})"
        )
    return value


def resolved(value: str, resolve: Callable[[str], object]) -> str:
    """``value`` once ``resolve`` (a registry's or an import's lookup) finds what it names;
    else its ``ResolveError`` as the key's error."""
    try:
        resolve(value)
    except ResolveError as exc:
        raise PydanticCustomError("scenario", str(exc)) from None
    return value


def scenario_error(source: str, key: str, message: str) -> ScenarioError:
    """The one-line error for ``key`` of scenario ``source`` (used after validation, too)."""
    return ScenarioError(one_line(f"{source}: {key}: {message}"))


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "model_type": "a table",
    "dict_type": "a table",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def format_error(error: ValidationError, source: str, root: type[BaseModel]) -> str:
    """The first of ``error``'s problems as one line (``root``: the validated model, for the
    allowed keys of an unknown one), with how many more there are."""
    errors = error.errors(include_url=False)
    # A misspelled key or table explains the "missing" errors it causes: name it first.
    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    ctx = first.get("ctx") or {}
    key = ctx.get("key") or _dotted(first["loc"])
    message = _describe_error(first, root)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{key}: " if key else ""
    return one_line(f"{source}: {where}{message}{more}")


def _describe_error(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, error["loc"][:-1])
        what = "table" if isinstance(value, Mapping) else "key"
        return f"unknown {what} (allowed: {', '.join(allowed)})" if allowed else f"unknown {what}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        bound = ctx.get(name)
        shown = f"{bound:g}" if isinstance(bound, int | float) else bound
        return f"must be {sign} {shown}, got {describe(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    return str(error["msg"]).removeprefix("Value error, ")


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts)


def _allowed_keys(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the section at ``loc`` (for 'unknown key' messages)."""
    model: type[BaseModel] | None = root
    for part in loc:
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        model = _section_type(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if found:
                return found
    return None


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(text.split())
