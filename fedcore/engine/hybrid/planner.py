"""The static memory planner and the choice of what to recompute.

`allocate` walks a program once, like MXNet's static allocator: every temporary gets a block
of the arena when it is produced and gives it back after its last reader; a request takes the
best-fitting free block (freed neighbours are merged), and an output may take over an input's
block when that input dies at this very instruction (in place). The arena is the highest
offset used; the plan's peak is the arena plus the persistent bytes (parameters, gradients,
optimizer state) already in the pool.

`choose` finds the cheapest program that fits a budget (Chen et al. 2016). Candidates are the
saved activations in forward order; a policy (k, t) keeps the last t of them and every k-th of
the rest, and drops the others (recomputed in backward). For each k a binary search finds the
largest tail t that fits; the policy with the least recomputation (in flops) wins. If no
policy fits, `PlanBudgetError` reports the smallest peak any policy reached.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..errors import MemoryBudgetError
from .autodiff import BwdStep
from .graph import Graph
from .program import Instr, Program, build_program, prepare

__all__ = ["ALIGN", "Layout", "Plan", "PlanBudgetError", "allocate", "choose"]

ALIGN = 64


class PlanBudgetError(MemoryBudgetError):
    """No plan, however much it recomputes, fits the budget; `min_budget` would."""

    def __init__(self, budget: int, min_budget: int, persistent: int):
        super().__init__(min_budget - persistent, persistent, budget, "hybridize")
        self.min_budget = min_budget
        self.args = (
            f"hybridize: a budget of {budget} bytes is too small for even the most recomputing "
            f"plan, which needs {min_budget} bytes ({persistent} persistent: parameters, "
            f"gradients, optimizer state; {min_budget - persistent} for activations and "
            f"temporaries); the smallest budget that would fit is {min_budget} bytes",)


@dataclass(eq=False)
class Layout:
    """Where every instance and scratch buffer lives in the arena."""

    storage: list[int]  # per instance: storage id, -1 for fixed / input / views
    offsets: list[int]  # per storage: byte offset in the arena
    scratch: list[list[int]]  # per instruction: offsets of its scratch buffers
    arena_bytes: int
    max_live: int  # most temporary bytes live at once
    boundary_live: int  # temporary bytes live when the forward ends (the kept activations)


@dataclass(eq=False)
class Plan:
    """A program, its layout, and what it costs."""

    program: Program
    layout: Layout
    persistent_bytes: int
    keep: set[int] = field(default_factory=set)
    policy: tuple[int, int] = (1, 0)

    @property
    def peak_bytes(self) -> int:
        """Persistent bytes plus the arena: the pool's live bytes while the plan replays."""
        return self.persistent_bytes + self.layout.arena_bytes

    @property
    def recompute_flops(self) -> float:
        """Flops spent recomputing dropped activations per step."""
        return self.program.recompute_cost


def _nbytes(shape: tuple[int, ...], dtype: object) -> int:
    return max(math.prod(shape) * np.dtype(dtype).itemsize, 1)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Blocks:
    """Best-fit allocation over a growing arena, with free neighbours merged on release."""

    def __init__(self) -> None:
        self.free: list[list[int]] = []  # [offset, size], sorted by offset, never adjacent
        self.top = 0

    def alloc(self, nbytes: int) -> tuple[int, int]:
        size = _align(nbytes)
        best = -1
        for i, (_, s) in enumerate(self.free):
            if s >= size and (best < 0 or s < self.free[best][1]):
                best = i
                if s == size:
                    break
        if best >= 0:
            blk = self.free[best]
            off = blk[0]
            if blk[1] == size:
                del self.free[best]
            else:
                blk[0] += size
                blk[1] -= size
            return off, size
        if self.free and sum(self.free[-1]) == self.top:  # grow the free tail block
            off = self.free.pop()[0]
            self.top = off + size
            return off, size
        off = self.top
        self.top += size
        return off, size

    def release(self, off: int, size: int) -> None:
        free = self.free
        i = bisect.bisect_left(free, [off, 0])
        if i > 0 and sum(free[i - 1]) == off:  # merge with the block before
            i -= 1
            free[i][1] += size
        else:
            free.insert(i, [off, size])
        if i + 1 < len(free) and sum(free[i]) == free[i + 1][0]:  # and the block after
            free[i][1] += free.pop(i + 1)[1]


def allocate(prog: Program, graph: Graph) -> Layout:
    """Assign arena offsets by liveness (see the module docstring)."""
    insts, instrs, values = prog.insts, prog.instrs, graph.values
    root = [0] * len(insts)
    for i, inst in enumerate(insts):
        root[i] = i if inst.base < 0 else root[inst.base]
    temp = [inst.base < 0 and inst.fixed is None and inst.input_index < 0 for inst in insts]
    last = [-1] * len(insts)
    for idx, ins in enumerate(instrs):
        for x in ins.ins:
            r = root[x]
            last[r] = idx
        for x in ins.outs:
            r = root[x]
            if last[r] < idx:
                last[r] = idx
    last[root[prog.loss]] = len(instrs)
    storage = [-1] * len(insts)
    st_last: list[int] = []
    st_block: list[tuple[int, int]] = []
    expiring: dict[int, list[int]] = defaultdict(list)
    blocks = _Blocks()
    live = max_live = boundary = 0
    scratch_offs: list[list[int]] = []
    for idx, ins in enumerate(instrs):
        taken: set[int] = set()
        for k, o in enumerate(ins.outs):
            if not temp[o]:
                continue
            ov = values[insts[o].value]
            sid = -1
            for ok, ik in ins.inplace:
                src = ins.ins[ik]
                if ok != k or not temp[src]:
                    continue
                s = storage[src]
                sv = values[insts[src].value]
                if s in taken or st_last[s] != idx or sv.shape != ov.shape \
                        or sv.dtype != ov.dtype:
                    continue
                sid = s
                break
            if sid < 0:
                sid = len(st_last)
                off, size = blocks.alloc(_nbytes(ov.shape, ov.dtype))
                st_block.append((off, size))
                st_last.append(last[o])
                live += size
            else:
                st_last[sid] = max(st_last[sid], last[o])
            taken.add(sid)
            storage[o] = sid
            expiring[st_last[sid]].append(sid)
        offs = []
        tmp = []
        for shape, dtype in ins.scratch:
            off, size = blocks.alloc(_nbytes(shape, dtype))
            offs.append(off)
            tmp.append((off, size))
            live += size
        scratch_offs.append(offs)
        max_live = max(max_live, live)
        for off, size in tmp:
            blocks.release(off, size)
            live -= size
        for sid in expiring.pop(idx, ()):
            if st_last[sid] == idx:
                off, size = st_block[sid]
                blocks.release(off, size)
                live -= size
                st_last[sid] = -2  # freed
        if idx == prog.forward_end - 1:
            boundary = live
    return Layout(storage, [b[0] for b in st_block], scratch_offs, blocks.top, max_live,
                  boundary)


def choose(graph: Graph, steps: list[BwdStep], head: list[Instr], tail: list[Instr],
           persistent: int, budget: int | None) -> Plan:
    """The cheapest plan whose peak fits `budget` (everything kept when it is None)."""
    prep = prepare(graph, steps)
    cands = sorted(v for v in prep.saved if _droppable(graph, v))
    # only (peak, cost) is kept per policy tried: programs are big, the chosen one is rebuilt
    cache: dict[frozenset[int], tuple[int, float]] = {}

    def build(keep: set[int], policy: tuple[int, int]) -> Plan:
        prog = build_program(graph, prep, keep, head, tail)
        return Plan(prog, allocate(prog, graph), persistent, keep, policy)

    def evaluate(keep: set[int]) -> tuple[int, float]:
        key = frozenset(keep)
        got = cache.get(key)
        if got is None:
            plan = build(keep, (0, 0))
            got = cache[key] = (plan.peak_bytes, plan.recompute_flops)
        return got

    full = build(set(cands), (1, 0))
    if budget is None or full.peak_bytes <= budget:
        return full
    min_peak = full.peak_bytes
    del full
    m = len(cands)

    def keepset(k: int, t: int) -> set[int]:
        head_c = cands[:m - t]
        return {c for j, c in enumerate(head_c, 1) if j % k == 0} | set(cands[m - t:])

    best: tuple[float, int, int, int] | None = None  # (cost, peak, k, t)
    for k in _strides(m):
        peak, _ = evaluate(keepset(k, 0))
        min_peak = min(min_peak, peak)
        if peak > budget:
            continue
        lo_t, hi_t = 0, m
        while lo_t < hi_t:
            mid = (lo_t + hi_t + 1) // 2
            if evaluate(keepset(k, mid))[0] <= budget:
                lo_t = mid
            else:
                hi_t = mid - 1
        peak, cost = evaluate(keepset(k, lo_t))
        if best is None or (cost, peak) < best[:2]:
            best = (cost, peak, k, lo_t)
    if best is None:
        raise PlanBudgetError(budget, min_peak, persistent)
    return build(keepset(best[2], best[3]), (best[2], best[3]))


def _strides(m: int) -> list[int]:
    """Checkpoint strides to try: every stride up to 8, then about 25% apart, and m + 1."""
    ks, k = [], 2
    while k <= m:
        ks.append(k)
        k = k + 1 if k < 8 else int(k * 1.25) + 1
    return [*ks, m + 1]


def _droppable(graph: Graph, vid: int) -> bool:
    v = graph.values[vid]
    if v.producer < 0 or vid == graph.loss:
        return False
    op = graph.ops[v.producer]
    return op.recomputable and not op.side_effect
