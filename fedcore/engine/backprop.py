"""The backward pass: walk the recorded graph in reverse and push each node's VJPs.

Gradients flow as engine vars. A VJP result may alias its upstream gradient (add passes it
through), so a gradient is only accumulated into in place once it is a private ("owned")
buffer; leaf gradients (e.g. views into a model's flat gradient buffer) are accumulated in place
inside the VJP op itself. Saved values are checked against their recorded versions when each
node's op runs, and every node drops its saved references as soon as it has run.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .autograd import VJPS, VJPS_INTO, Node, Remat
from .engine import get_engine
from .errors import MutationError
from .parallel import tasks
from .tensor import Leaf, Tensor
from .var import Var

__all__ = ["backward", "propagate"]


def _toposort(root: Any) -> list[Any]:
    """Nodes reachable from `root`, each after every node that consumes it."""
    order: list[Any] = []
    seen = {root}
    stack = [(root, iter(root.parents))]
    while stack:
        node, it = stack[-1]
        for p in it:
            if p is not None and p not in seen:
                seen.add(p)
                stack.append((p, iter(p.parents)))
                break
        else:
            stack.pop()
            order.append(node)
    order.reverse()
    return order


def backward(tensor: Tensor, grad: np.ndarray | None = None) -> None:
    """Propagate `grad` (ones for a scalar) from `tensor` back to the leaves' `.grad`."""
    root = tensor._node
    if root is None:
        raise RuntimeError("backward() on a tensor that does not require grad")
    if grad is None:
        if tensor.size != 1:
            raise RuntimeError(f"backward() without grad needs a scalar, got {tensor.shape}")
        g = np.ones(tensor.shape, tensor.dtype)
    else:
        g = np.asarray(grad, dtype=tensor.dtype)
        if g.shape != tensor.shape:
            raise ValueError(f"grad shape {g.shape} does not match tensor shape {tensor.shape}")
    propagate(root, Var(g, "grad"))
    eng = get_engine()
    if eng.asynchronous:  # a sync point, as in eager mode: a MutationError surfaces here
        eng.wait_all()


def propagate(root: Any, gvar: Var, stop: set | frozenset = frozenset()) -> dict[Any, Var]:
    """Push the VJPs of every node `root` depends on, from gradient `gvar` at `root`, into the
    leaves' gradients; returns the gradient reaching each node of `stop` (not gone past).
    A node other than `Node` and `Leaf` (a `fedcore.engine.checkpoint.Checkpoint`) runs its
    own `backprop(eng, gvar)`."""
    eng = get_engine()
    # node -> [grad var, owned]; owned grads are private buffers safe to accumulate into
    grads: dict[Any, list] = {root: [gvar, False]}
    reached: dict[Any, Var] = {}
    for node in _toposort(root):
        entry = grads.pop(node, None)
        if entry is None:
            continue
        if node in stop:
            reached[node] = entry[0]
        elif type(node) is Leaf:
            _accumulate_leaf(eng, node, entry[0])
        else:
            outs = (_run_vjp(eng, node, entry[0]) if type(node) is Node
                    else node.backprop(eng, entry[0]))
            for parent, g in zip(node.parents, outs, strict=True):
                if g is not None:
                    _accumulate(eng, grads, parent, g)
    return reached


def _run_vjp(eng: Any, node: Node, gvar: Var) -> list[Var | None]:
    """Push one node's VJPs; return the new gradient vars for parents still to be reached.

    A parent that is a leaf with a gradient buffer gets its VJP added straight into that
    buffer inside the same op (MXNet's kAddTo), saving an op and a temporary per parameter.
    A primitive whose VJPs are independent (`vjp_work`: a matmul's input and weight
    gradients) may have them computed side by side (`parallel.tasks`).
    """
    ctx = node.ctx
    prim = node.prim
    if ctx is None:
        raise RuntimeError(f"backward through '{prim.name}' twice: the graph was already freed")
    vjps = VJPS[prim.name]
    stores = VJPS_INTO.get(prim.name, ())
    dsts: list[Var | None] = []
    into: list[bool] = []
    for p in node.parents:
        t = p.ref() if type(p) is Leaf else None
        if t is not None and t._grad is not None:
            dsts.append(t._grad)
            into.append(True)
        else:
            dsts.append(None if p is None else Var(None, "grad"))
            into.append(False)
    in_vars, out_var, pool = node.in_vars, node.out_var, eng.pool

    saved = node.saved  # captured: release() below runs before an async engine runs fn

    def fn() -> None:
        try:
            _check_saved(prim.name, saved)
            ctx.args = tuple([None if v is None else v.value(pool) if type(v) is Remat
                              else v.data for v in in_vars])
            ctx.ans = None if out_var is None else out_var.data
            _vjps(ctx)
        finally:
            for v in in_vars:
                if type(v) is Remat:
                    v.done()

    work_of = prim.vjp_work
    # side by side only when each gradient has its own destination (not matmul(x, x))
    apart = work_of is not None and len({id(d) for d in dsts if d is not None}) > 1 and \
        len({id(d) for d in dsts if d is not None}) == sum(d is not None for d in dsts)

    def _vjps(ctx: Any) -> None:
        g = gvar.data

        def grad(i: int, dst: Var) -> None:
            gi = vjps[i](ctx, g)
            if type(gi) is not np.ndarray:  # ufuncs turn 0-d results into numpy scalars
                gi = np.asarray(gi)
            if gi.shape != ctx.shapes[i]:
                raise AssertionError(f"VJP of '{prim.name}' arg {i}: shape {gi.shape}, "
                                     f"expected {ctx.shapes[i]}")
            if into[i]:  # the temporary counts toward the peak while it lives
                np.add(dst.data, pool.track(gi), out=dst.data)
            else:
                dst.data = pool.track(gi)

        jobs = []
        for i, dst in enumerate(dsts):
            if dst is None:
                continue
            if into[i] and i < len(stores) and stores[i] is not None and dst.claim_zero():
                # the gradient buffer was zero: store, no add
                jobs.append(functools.partial(stores[i], ctx, g, dst.data))
            else:
                jobs.append(functools.partial(grad, i, dst))
        if apart and len(jobs) > 1:
            tasks(jobs, work_of(ctx, g))
        else:
            for job in jobs:
                job()

    reads = [v for v, _ in node.saved]
    reads.append(gvar)
    eng.push(fn, reads, [d for d in dsts if d is not None], prim.name + "_backward")
    node.release()
    return [None if done else d for d, done in zip(dsts, into, strict=True)]


def _check_saved(op: str, saved: tuple[tuple[Var, int], ...]) -> None:
    """Raise MutationError if a saved value was written after it was saved (Node.check_saved)."""
    for var, ver in saved:
        root = var._base or var
        if root._version != ver:
            raise MutationError(op, var.label, ver, root._version, root.last_writer)


def _accumulate(eng: Any, grads: dict[Any, list], parent: Any, gvar: Var) -> None:
    entry = grads.get(parent)
    if entry is None:
        grads[parent] = [gvar, False]
        return
    acc, owned = entry
    if owned:
        def add_into() -> None:
            np.add(acc.data, gvar.data, out=acc.data)

        eng.push(add_into, (gvar,), (acc,), "grad_accumulate")
        return
    new = Var(None, "grad")
    pool = eng.pool

    def add_new() -> None:
        a = acc.data
        new.data = np.add(a, gvar.data, out=pool.alloc(a.shape, a.dtype))

    eng.push(add_new, (acc, gvar), (new,), "grad_accumulate")
    entry[0], entry[1] = new, True


def _accumulate_leaf(eng: Any, leaf: Leaf, gvar: Var) -> None:
    t = leaf.ref()
    if t is None:
        return
    dst = t._grad
    if dst is None:
        dst = t._grad = Var(None, f"{t._var.name}.grad")
        pool = eng.pool

        def copy_new() -> None:
            g = gvar.data
            dst.data = pool.alloc(g.shape, g.dtype)
            np.copyto(dst.data, g)

        eng.push(copy_new, (gvar,), (dst,), "grad_accumulate")
        return

    def add_into() -> None:
        np.add(dst.data, gvar.data, out=dst.data)

    eng.push(add_into, (gvar,), (dst,), "grad_accumulate")
