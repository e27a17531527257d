"""The user-facing `Tensor` and the grad-recording mode.

A Tensor wraps one `Var` (the engine's unit of scheduling and versioning) plus its place in the
autograd graph: `_node` is the node that produced it (None for constants, a `Leaf` for leaves
that require grad). Arithmetic methods and operators are attached by `fedcore.engine.ops`.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import ContextDecorator
from typing import Any

import numpy as np

from .engine import get_engine
from .var import Var

__all__ = [
    "Leaf", "Tensor", "default_float", "enable_grad", "float64_mode", "is_grad_enabled", "no_grad",
]


class _GradMode(threading.local):
    enabled = True


_mode = _GradMode()


def is_grad_enabled() -> bool:
    """Whether ops on tensors that require grad are being recorded (per thread)."""
    return _mode.enabled


class no_grad(ContextDecorator):  # noqa: N801 - lower case like torch.no_grad
    """Context manager / decorator that stops recording ops (evaluation, optimizer updates)."""

    _enabled = False

    def _recreate_cm(self) -> no_grad:  # a fresh instance per decorated call (re-entrant)
        return type(self)()

    def __enter__(self) -> None:
        self._prev = _mode.enabled
        _mode.enabled = self._enabled

    def __exit__(self, *exc: object) -> None:
        _mode.enabled = self._prev


class enable_grad(no_grad):  # noqa: N801
    """Re-enable recording inside a `no_grad` block."""

    _enabled = True


class _Precision:
    """The float dtype new tensors and op outputs get: process-wide (ops may run on workers)."""

    dtype: type = np.float32


_precision = _Precision()


def default_float() -> type:
    """The float dtype tensors are created in: float32, or float64 inside `float64_mode()`."""
    return _precision.dtype


class float64_mode(ContextDecorator):  # noqa: N801 - a context manager, like no_grad
    """Create tensors and run ops in float64 inside the block (tight finite-difference checks).

    Process-wide rather than per-thread, because engine ops may run on worker threads. Flat
    parameter buffers stay float32, so build models outside it (or check layers unflattened).
    """

    def _recreate_cm(self) -> float64_mode:
        return type(self)()

    def __enter__(self) -> None:
        self._prev = _precision.dtype
        _precision.dtype = np.float64

    def __exit__(self, *exc: object) -> None:
        _precision.dtype = self._prev


class Leaf:
    """Graph node of a leaf tensor that requires grad: backward accumulates into its `.grad`.

    Holds the tensor weakly so the graph does not keep parameters alive (and no cycle forms).
    """

    __slots__ = ("ref", "__weakref__")
    parents: tuple = ()

    def __init__(self, tensor: Tensor):
        self.ref = weakref.ref(tensor)


def as_array(data: Any) -> np.ndarray:
    """Coerce to the engine's dtypes: floats to float32 (float64 in `float64_mode`), integers
    to int64 (no copy if already)."""
    arr = np.asarray(data)
    kind = arr.dtype.kind
    if kind == "f" or kind == "c":
        ftype = _precision.dtype
        if arr.dtype != ftype:
            arr = arr.astype(ftype)
    elif kind in "iu":
        if arr.dtype != np.int64:
            arr = arr.astype(np.int64)
    elif kind != "b":
        raise TypeError(f"unsupported dtype {arr.dtype} for a Tensor")
    return arr


class Tensor:
    """An array in the engine: data (float32, or int64 for labels), and optional gradient.

    `Tensor(np_array)` does not copy a float32 array: in-place ops on the tensor write through.
    """

    __slots__ = ("_var", "_node", "_grad", "__weakref__")

    def __init__(self, data: Any, requires_grad: bool = False, name: str = ""):
        self._var = Var(as_array(data), name)
        self._node = None
        self._grad: Var | None = None
        if requires_grad:
            self.requires_grad = True

    @classmethod
    def _wrap(cls, var: Var, node: Any = None) -> Tensor:
        """Fast constructor for op outputs (no conversion)."""
        t = object.__new__(cls)
        t._var = var
        t._node = node
        t._grad = None
        return t

    # -- data -------------------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        """The array (after any pending writes). Writing into it bypasses version tracking."""
        get_engine().wait_for_var(self._var)
        return self._var.data

    def _ready(self) -> np.ndarray:
        """The array, waiting for the op that produces it if an async engine has not run it."""
        arr = self._var.data
        if arr is None:
            get_engine().wait_for_var(self._var)
            arr = self._var.data
        return arr

    @property
    def var(self) -> Var:
        """The engine var holding the data."""
        return self._var

    @property
    def name(self) -> str:
        return self._var.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._ready().shape

    @property
    def dtype(self) -> np.dtype:
        return self._ready().dtype

    @property
    def ndim(self) -> int:
        return self._ready().ndim

    @property
    def size(self) -> int:
        return self._ready().size

    @property
    def version(self) -> int:
        """Number of completed in-place writes to this tensor's buffer."""
        return self._var.version

    def __len__(self) -> int:
        return len(self._ready())

    def numpy(self) -> np.ndarray:
        """A copy of the data as a numpy array."""
        return self.data.copy()

    def item(self) -> float | int:
        """The single element as a Python number."""
        return self.data.item()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.data
        if dtype is not None and arr.dtype != dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    def detach(self) -> Tensor:
        """The same data (same var) outside the graph."""
        return Tensor._wrap(self._var)

    def __getstate__(self) -> dict:
        if not self.is_leaf:
            raise RuntimeError("only leaf tensors can be copied or pickled; detach() first")
        return {"var": self._var, "grad": self._grad, "requires_grad": self._node is not None}

    def __setstate__(self, state: dict) -> None:
        self._var, self._grad = state["var"], state["grad"]
        self._node = Leaf(self) if state["requires_grad"] else None

    # -- autograd ---------------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._node is not None

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if not self.is_leaf:
            raise RuntimeError("requires_grad can only be changed on leaf tensors")
        if value and self._var.data.dtype.kind != "f":
            raise ValueError(
                f"only float32 (or float64_mode) tensors can require grad, not {self.dtype}"
            )
        self._node = Leaf(self) if value else None

    @property
    def is_leaf(self) -> bool:
        """True unless the tensor was produced by a recorded op."""
        return self._node is None or type(self._node) is Leaf

    @property
    def grad_fn(self) -> str | None:
        """Name of the op that produced this tensor in the graph (None for leaves)."""
        return None if self.is_leaf else self._node.prim.name

    @property
    def grad(self) -> np.ndarray | None:
        """Accumulated gradient (a numpy array), or None before any backward."""
        g = self._grad
        if g is None:
            return None
        get_engine().wait_for_var(g)
        g.forget_zero()  # the caller may write the array directly, unseen by versions
        return g.data

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        if value is None:
            self._grad = None
            return
        arr = np.asarray(value, dtype=self.dtype)
        if arr.shape != self.shape:
            raise ValueError(f"grad shape {arr.shape} does not match tensor shape {self.shape}")
        eng = get_engine()
        if self._grad is None:  # a pool buffer, so gradients count toward live bytes
            buf = eng.pool.alloc(arr.shape, arr.dtype, what=f"gradient of '{self.name}'")
            np.copyto(buf, arr)
            self._grad = Var(buf, f"{self.name}.grad")
            return
        dst = self._grad
        if eng.asynchronous and arr is value:  # the caller may reuse it before the copy runs
            arr = arr.copy()

        def fn() -> None:
            np.copyto(dst.data, arr)

        eng.push(fn, (), (dst,), "set_grad")

    def backward(self, grad: np.ndarray | None = None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad` (scalar self unless `grad`)."""
        from .backprop import backward

        backward(self, grad)

    def __repr__(self) -> str:
        extra = ""
        if self._node is not None:
            extra = ", requires_grad=True" if self.is_leaf else f", grad_fn={self.grad_fn}"
        data = self._var.data
        return f"Tensor({data!r}{extra})" if data is not None else f"Tensor(<pending>{extra})"
