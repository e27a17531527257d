"""One way to name user code: a registry name, an installed entry point or ``package.module:name``.

Models (``fedcore.models``), data loaders (``fedcore.datasets``) and strategies
(``fedcore.strategies``) are each a `Registry`. A reference resolves, in this order:

1. a scheme registered with `register_scheme` (``"onnx:model.onnx"``: the part before the first
   colon names a scheme, the rest is handed to its resolver) - the extension point for
   references that are not Python code;
2. ``"package.module:attr"`` (``attr`` may be dotted): imported, when the caller allows imports;
3. a name registered in the registry (built-ins register this way, at import);
4. a name an installed distribution declares in the registry's entry-point group.

A scheme that reads a file (``onnx:PATH``) resolves PATH with ``scheme_file``: relative to
the working directory on the operator's side; on a device (``device_files(root)``, around
every message a device handles) only inside the models folder its operator configured, and
not at all without one, so a server's message never picks a file on the device.

Lookups are live: a name registered after the registry was created (or an entry point of a
package installed since) is seen. Every failure is a `ResolveError` with one line naming the
reference. A device never imports code because a message said so: it resolves with
``allow_import=False`` and only finds what was registered or installed on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = [
    "Registry", "ResolveError", "device_files", "import_reference", "is_reference", "no_imports",
    "register_scheme", "scheme_file",
]

T = TypeVar("T")

#: ``package.module:attr``: dotted identifiers on both sides of one colon.
_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

#: scheme -> resolver(rest) for references that are not Python code (e.g. ``onnx:PATH``).
_SCHEMES: dict[str, Callable[[str], Any]] = {}


class ResolveError(ValueError):
    """A reference that names nothing usable; the message is one line."""


_IMPORTS_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fedcore_imports_allowed", default=True
)


@contextlib.contextmanager
def no_imports() -> Iterator[None]:
    """Within this block no registry imports code by reference, whatever its caller asks:
    a device validating a scenario the server sent resolves only what is installed on it."""
    token = _IMPORTS_ALLOWED.set(False)
    try:
        yield
    finally:
        _IMPORTS_ALLOWED.reset(token)


_OPERATOR = object()  # scheme files relative to the working directory (the operator's side)
_FILE_ROOT: contextvars.ContextVar[Any] = contextvars.ContextVar("fedcore_file_root",
                                                                 default=_OPERATOR)


@contextlib.contextmanager
def device_files(root: Path | None) -> Iterator[None]:
    """Within this block a scheme reads files only inside ``root`` (None: none at all): what a
    device's operator configured, never what a message names."""
    token = _FILE_ROOT.set(root)
    try:
        yield
    finally:
        _FILE_ROOT.reset(token)


def scheme_file(path: str, scheme: str) -> Path:
    """The file ``scheme:path`` names: a relative path without '..'; on a device, inside its
    models folder (symbolic links may not lead out of it). `ResolveError` otherwise."""
    p = Path(path)
    if not path or p.is_absolute() or ".." in p.parts:
        raise ResolveError(f"{scheme}:{path}: the path must be relative, without '..'")
    root = _FILE_ROOT.get()
    if root is _OPERATOR:
        return p
    if root is None:
        raise ResolveError(
            f"{scheme}:{path}: this device has no models folder; a message never names a file "
            "on a device (its operator gives one: fedcore client --models DIR)"
        )
    base = Path(root).resolve()
    found = (base / p).resolve()
    if not found.is_relative_to(base):
        raise ResolveError(f"{scheme}:{path}: leads out of the device's models folder")
    return found


def register_scheme(scheme: str, resolver: Callable[[str], Any]) -> None:
    """Resolve ``"scheme:REST"`` in every registry by ``resolver(REST)`` (e.g. ``onnx:PATH``).

    A scheme is a lower-case word; it takes precedence over a module of the same name.
    """
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ValueError(f"invalid scheme {scheme!r}")
    _SCHEMES[scheme] = resolver


def _scheme_of(reference: str) -> str | None:
    scheme, colon, _ = reference.partition(":")
    return scheme if colon and scheme in _SCHEMES else None


def is_reference(text: str) -> bool:
    """True for ``package.module:attr`` and ``scheme:REST`` references (not plain names)."""
    return _scheme_of(text) is not None or bool(_REFERENCE.match(text))


def import_reference(reference: str, what: str = "object") -> Any:
    """Import ``package.module:attr``; `ResolveError` (one line) if that fails."""
    if not _REFERENCE.match(reference):
        raise ResolveError(f"{reference!r} is not of the form 'package.module:name'")
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        raise ResolveError(f"{what} {reference!r}: no module named {missing!r}") from None
    except Exception as exc:  # the user's module raised while importing: say what, not where
        raise ResolveError(
            f"{what} {reference!r}: importing {module_name!r} failed: "
            f"{type(exc).__name__}: {_one_line(str(exc))}"
        ) from None
    found: Any = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ResolveError(f"{what} {reference!r}: {module_name!r} has no {attr!r}") from None
    return found


class Registry(Generic[T]):
    """Names -> objects of one kind, plus the installed entry points of ``group``."""

    def __init__(self, group: str, what: str) -> None:
        self.group, self.what = group, what
        self._names: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (unique; plain names only, not references)."""
        if not name or is_reference(name) or ":" in name:
            raise ValueError(f"invalid {self.what} name {name!r}")
        if name in self._names:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._names[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Forget a registered name (entry points stay installed)."""
        self._names.pop(name, None)

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")``: register the decorated object."""
        return lambda obj: self.register(name, obj)

    def _entry_points(self) -> dict[str, EntryPoint]:
        """Installed entry points of the group (importlib.metadata is imported here, not with
        fedcore: it alone holds about 3 MB of RSS a device that uses none need not pay)."""
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> tuple[str, ...]:
        """Every name known now: registered ones and installed entry points, sorted."""
        return tuple(sorted(set(self._names) | set(self._entry_points())))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._names or name in self._entry_points())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, reference: str) -> Any:
        return self.get(reference)

    def get(self, reference: str, *, allow_import: bool = True) -> Any:
        """The object ``reference`` names (see the module docstring for the order)."""
        if not isinstance(reference, str) or not reference:
            raise ResolveError(f"{self.what} must be a non-empty name, got {reference!r}")
        scheme = _scheme_of(reference)
        if scheme is not None:
            try:
                return _SCHEMES[scheme](reference[len(scheme) + 1 :])
            except ResolveError:
                raise
            except (ValueError, OSError) as exc:
                raise ResolveError(f"{self.what} {reference!r}: {_one_line(str(exc))}") from None
        if _REFERENCE.match(reference):
            if not (allow_import and _IMPORTS_ALLOWED.get()):
                raise ResolveError(
                    f"{self.what} {reference!r}: importing code by reference is not allowed "
                    f"here; install a package that declares it in entry-point group "
                    f"{self.group!r}"
                )
            return import_reference(reference, self.what)
        if reference in self._names:
            return self._names[reference]
        entry = self._entry_points().get(reference)
        if entry is not None:
            try:
                return entry.load()
            except Exception as exc:
                raise ResolveError(
                    f"{self.what} {reference!r}: entry point {entry.value!r} "
                    f"({self.group}) failed to load: {type(exc).__name__}: "
                    f"{_one_line(str(exc))}"
                ) from None
        raise ResolveError(
            f"unknown {self.what} {reference!r} (known: {', '.join(self.names()) or 'none'}; "
            f"or 'package.module:name')"
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())
