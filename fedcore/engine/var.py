"""Versioned variables: the unit the engine schedules and autograd checks.

A `Var` owns one numpy array. Every write bumps its version, so autograd can detect that a value
it saved for backward has since been overwritten (MXNet's var versions, PyTorch's version
counter). A *view* var (a reshape, a parameter inside a flat buffer) shares the version counter
and the dependency state of its root var: writing any view counts as writing the whole buffer.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["Var"]

_uids = itertools.count(1)


class Var:
    """One array plus the bookkeeping the engine needs (version, pending reads/writes).

    `data` may be None until the op that produces it has run (the engine allocates outputs
    when the op executes). The `_dep_*` fields belong to `fedcore.engine.deps` and are only
    meaningful on root vars.
    """

    __slots__ = (
        "data",
        "name",
        "uid",
        "_base",
        "_version",
        "last_writer",
        "_dep_reads",
        "_dep_writing",
        "_dep_pending_writes",
        "_dep_queue",
        "_dep_expected",
        "_dep_error",
        "meta",
        "_zeroed",
        "_span",
        "__weakref__",
    )

    def __init__(self, data: np.ndarray | None = None, name: str = "", base: Var | None = None):
        self.data = data
        self.name = name
        self.uid = next(_uids)
        # the owning root var for views, None for roots (no self-reference: no GC cycle)
        self._base = None if base is None else (base._base or base)
        self._version = 0
        self.last_writer = ""
        self._dep_reads = 0
        self._dep_writing = False
        self._dep_pending_writes = 0
        self._dep_queue = None
        # version once every pushed write has completed, kept as ONE attribute so another
        # thread reads it atomically (version + pending writes would be two reads)
        self._dep_expected = 0
        self._dep_error = None  # (op name, exception) of a failed threaded op that wrote it
        self.meta = None  # engine-level metadata of a root buffer (e.g. a FlatLayout)
        # [version, byte ranges]: the root buffer was zero-filled and, while its version still
        # equals `version`, only the listed ranges were written since (see `claim_zero`)
        self._zeroed: list | None = None
        self._span: tuple | None = None  # (array, first byte, end byte) memo of claim_zero

    @property
    def root(self) -> Var:
        """The var that owns the buffer (itself unless this is a view)."""
        return self._base or self

    @property
    def is_view(self) -> bool:
        """True when this var is a view sharing another var's buffer and version."""
        return self._base is not None

    @property
    def version(self) -> int:
        """How many completed writes the (root) buffer has seen."""
        return (self._base or self)._version

    def bump(self, writer: str = "") -> int:
        """Record one completed write to this var (and so to its root); return the new version."""
        root = self._base or self
        root._version += 1
        root._dep_expected += 1
        root.last_writer = writer
        return root._version

    def view(self, data: np.ndarray, name: str = "") -> Var:
        """A new var for `data`, a view of this var's buffer, sharing version and dependencies."""
        return Var(data, name or self.name, base=self)

    def mark_zeroed(self) -> None:
        """Record, from inside the op that zero-fills this whole (root) buffer, that it is zero.

        Call it while the op runs: the engine bumps the version once when the op completes.
        """
        root = self._base or self
        root._zeroed = [root._version + 1, []]

    def claim_zero(self) -> bool:
        """From inside an op that writes this var: True if its bytes are still all zero since
        the last `mark_zeroed` (no write to them, and no other write to the buffer, since), in
        which case the caller may store a result instead of adding it; the range is then
        recorded as written. False whenever that is not certain."""
        root = self._base or self
        z = root._zeroed
        if z is None:
            return False
        ver = root._version
        if z[0] != ver and z[0] != ver + 1:  # ver + 1: claimed earlier by this same op
            root._zeroed = None
            return False
        a = self.data
        span = self._span
        if span is None or span[0] is not a:  # a gradient view keeps its array: cache its bytes
            if a is None or not a.flags.c_contiguous:
                return False
            start = a.__array_interface__["data"][0]
            span = self._span = (a, start, start + a.nbytes)
        _, start, end = span
        for s, e in z[1]:
            if s < end and start < e:
                return False
        z[1].append((start, end))
        z[0] = ver + 1  # the version once this op (a write of the buffer) completes
        return True

    def forget_zero(self) -> None:
        """Drop what `mark_zeroed` knew (the buffer may be written outside the engine)."""
        (self._base or self)._zeroed = None

    @property
    def nbytes(self) -> int:
        """Bytes of this var's array (0 while not yet produced)."""
        return 0 if self.data is None else self.data.nbytes

    @property
    def label(self) -> str:
        """A readable identifier for error messages."""
        return f"{self.name or 'var'}#{self.uid}"

    # -- copy / pickle: a view must stay a view of the (copied) root buffer -------------------
    def __getstate__(self) -> dict:
        from .engine import get_engine  # late: the engine module imports this one

        get_engine().wait_for_var(self)  # an async engine may still be writing it
        data, geometry, base = self.data, None, self._base
        if base is not None and data is not None and base.data is not None \
                and base.data.flags.c_contiguous:
            offset = data.__array_interface__["data"][0] - base.data.__array_interface__["data"][0]
            if 0 <= offset <= base.data.nbytes:
                geometry = (offset, data.shape, data.strides, data.dtype.str)
                data = None
        return {"data": data, "geometry": geometry, "base": base, "name": self.name,
                "uid": self.uid, "version": self._version, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["data"], state["name"], state["base"])
        self.uid, self._version, self.meta = state["uid"], state["version"], state["meta"]
        self._dep_expected = self._version
        if state["geometry"] is not None:
            offset, shape, strides, dtype = state["geometry"]
            self.data = np.ndarray(shape, np.dtype(dtype), buffer=self._base.data,
                                   offset=offset, strides=strides)

    def __repr__(self) -> str:
        shape = None if self.data is None else self.data.shape
        view = f", view of {self._base.label}" if self._base is not None else ""
        return f"Var({self.label}, shape={shape}, version={self.version}{view})"
