"""Errors raised by the engine.

They are separate from the modules that raise them so callers (the client runtime, the
planner) can catch them without importing the machinery.
"""

from __future__ import annotations

__all__ = ["EngineError", "MemoryBudgetError", "MutationError"]


class EngineError(RuntimeError):
    """A pushed operation is malformed (overlapping read/write sets) or would deadlock."""


class MutationError(RuntimeError):
    """Backward needs a value that was modified in place after autograd saved it.

    Raised instead of silently computing a wrong gradient; the message names the op that
    saved the value and the var that changed.
    """

    def __init__(self, op: str, var_name: str, saved_version: int, version: int, writer: str):
        self.op = op
        self.var_name = var_name
        self.saved_version = saved_version
        self.version = version
        super().__init__(
            f"backward through op '{op}' needs var '{var_name}' as it was at version "
            f"{saved_version}, but it is now at version {version} (last written by "
            f"'{writer}'): it was modified in place after being saved. Use the out-of-place "
            f"op, or copy the value before mutating it."
        )


class MemoryBudgetError(MemoryError):
    """An allocation would push the pool's live bytes past its budget (raised before allocating)."""

    def __init__(self, requested: int, live: int, budget: int, what: str = ""):
        self.requested = requested
        self.live = live
        self.budget = budget
        where = f" for {what}" if what else ""
        super().__init__(
            f"memory budget exceeded{where}: requested {requested} bytes with {live} bytes live, "
            f"budget is {budget} bytes (short by {requested + live - budget} bytes)"
        )
