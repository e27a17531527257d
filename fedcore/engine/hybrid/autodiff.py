"""The backward pass of a traced step, derived symbolically in eager autograd's order.

`backward_steps` walks the traced ops exactly as `fedcore.engine.backprop.backward` walks the
autograd graph (same depth-first topological order from the loss, same parent order, same
accumulation order), so the planned gradients are the eager ones. Each step is one VJP or one
gradient accumulation; a VJP into a parameter writes (first contribution) or adds (later
ones) straight into the parameter's slice of the flat gradient buffer, like eager's kAddTo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .graph import FwdOp, Graph, Value

__all__ = ["BwdStep", "backward_steps"]


@dataclass(eq=False)
class BwdStep:
    """A VJP of `op` for input `arg` (kind "vjp"), or `acc` + `g` (kind "acc")."""

    kind: str
    g: int  # upstream gradient value (vjp) / the addend (acc)
    out: int = -1  # the gradient value made (-1: written into a parameter's gradient)
    op: FwdOp | None = None
    arg: int = -1
    acc: int = -1
    param: int = -1  # value id of the parameter whose gradient this VJP writes
    mode: str = ""  # "write" (first contribution) or "add"


def _toposort(root: Any, parents: Any) -> list[Any]:
    """Same DFS as backprop._toposort: each node after every node that consumes it."""
    order: list[Any] = []
    seen = {root}
    stack = [(root, iter(parents(root)))]
    while stack:
        node, it = stack[-1]
        for p in it:
            if p is not None and p not in seen:
                seen.add(p)
                stack.append((p, iter(parents(p))))
                break
        else:
            stack.pop()
            order.append(node)
    order.reverse()
    return order


def backward_steps(graph: Graph) -> tuple[list[BwdStep], int, set[int]]:
    """(steps, the value id of d loss / d loss, ids of params that receive a gradient)."""
    values, ops = graph.values, graph.ops

    def parents(node: Any) -> tuple:
        if node[0] == "param":
            return ()
        return tuple(None if p is None else p[:2] for p in ops[node[1]].parents)

    def new_grad(shape: tuple[int, ...], dtype: Any, name: str) -> int:
        v = Value(len(values), tuple(shape), np.dtype(dtype), "temp", name)
        values.append(v)
        return v.id

    loss = values[graph.loss]
    ones = Value(len(values), loss.shape, loss.dtype, "const", "grad_of_loss",
                 array=np.ones(loss.shape, loss.dtype))
    values.append(ones)
    root = ("op", loss.producer)
    grads: dict[Any, int] = {root: ones.id}
    steps: list[BwdStep] = []
    written: set[int] = set()
    for node in _toposort(root, parents):
        g = grads.pop(node, None)
        if g is None or node[0] == "param":
            continue
        op = ops[node[1]]
        for i, parent in enumerate(op.parents):
            if parent is None:
                continue
            if parent[0] == "param":
                vid = parent[1]
                mode = "add" if vid in written else "write"
                written.add(vid)
                steps.append(BwdStep("vjp", g, op=op, arg=i, param=vid, mode=mode))
                continue
            src = values[parent[2]]
            gi = new_grad(op.meta.in_shapes[i], src.dtype, f"grad.{src.name}")
            steps.append(BwdStep("vjp", g, out=gi, op=op, arg=i))
            key = parent[:2]
            acc = grads.get(key)
            if acc is None:
                grads[key] = gi
            else:
                a = values[acc]
                new = new_grad(a.shape, a.dtype, a.name)
                steps.append(BwdStep("acc", gi, out=new, acc=acc))
                grads[key] = new
    return steps, ones.id, written
