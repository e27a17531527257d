"""`OnnxModel`: an engine `Module` that runs an imported graph, node by node.

Building it decides what each initializer is: a float tensor a node reads as data (not as a
shape, axes or other setting) is a trainable `Parameter`; BatchNormalization's running mean
and variance become one (2, C) `Buffer` per node (FedAvg'd with `get_state`, not trained);
everything else (integer tensors, masks with infinities, scalars PyTorch folded in) stays a
constant. Nodes whose inputs are all constant are folded at build time; nodes computing only
from constants and `Shape` (reshape targets, causal masks over a dynamic sequence length) run
in numpy once per distinct input shape and are cached.

Layout: 4-D data is transposed to channels-last once, where the first conv, pooling or batch
norm meets it, stays there through elementwise ops, and goes back to ONNX's NCHW only where an
op needs its axes (Flatten, Reshape, ...). Inputs are what the exported model took (NCHW
images); flat rows of the right size are accepted too, and so are samples that differ only in
axes of size 1 ((H, W, 1) for (1, H, W)), both reshaped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np

from ... import engine as E
from ...engine import Tensor
from ...engine.errors import EngineError, MemoryBudgetError, MutationError
from ...nn import Buffer, Module, Parameter
from . import ops_math as _ops_math  # noqa: F401  (registers the ops)
from . import ops_nn as _ops_nn  # noqa: F401
from . import ops_shape as _ops_shape  # noqa: F401
from .prims_shape import transpose
from .registry import OPS, Value, check_ops, is_const
from .spec import GraphSpec, NodeSpec

__all__ = ["OnnxModel"]

_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
_SHAPE_OPS = {"Shape", "Size"}
_CACHE_SHAPES = 16  # distinct input shapes whose shape-derived constants are kept


def _is_param(name: str, arr: np.ndarray) -> bool:
    if arr.dtype.kind != "f" or arr.size == 0 or not np.all(np.isfinite(arr)):
        return False
    # scalars PyTorch folded from constants carry generated names; a module's own scalar
    # parameter keeps its dotted name
    return not (arr.size == 1 and (name.startswith("onnx::") or name.startswith("/")))


class OnnxModel(Module):
    """An imported ONNX graph as a trainable engine model (see the module docstring)."""

    def __init__(self, spec: GraphSpec, seed: int = 0):
        super().__init__()
        check_ops(spec)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "seed", int(seed))
        data_uses: set[str] = set()
        stats: set[str] = set()
        for node in spec.nodes:
            settings = OPS[node.op].settings
            for i, name in enumerate(node.inputs):
                if node.op == "BatchNormalization" and i in (3, 4):
                    stats.add(name)
                elif i not in settings and node.op not in _SHAPE_OPS:
                    data_uses.add(name)
        constants = dict(spec.constants)
        for name, arr in spec.initializers.items():
            if name in data_uses and name not in stats and _is_param(name, arr):
                self._params[name] = Parameter(arr.astype(np.float32), name=name)
            elif name not in stats:
                constants[name] = arr
        self._buffers: dict[str, Buffer] = {}
        stat_inputs: dict[str, Buffer] = {}
        for node in spec.nodes:
            if node.op == "BatchNormalization":
                mean, var = (spec.initializers.get(n) for n in node.inputs[3:5])
                if mean is None or var is None:
                    raise spec.fail(node, "running mean and variance must be initializers")
                buf = Buffer(np.stack([mean, var]).astype(np.float32), name=node.inputs[3])
                vars(self)[f"running:{node.name}"] = buf  # found by named_buffers
                self._buffers[node.name] = buf
                stat_inputs.update(dict.fromkeys(node.inputs[3:5], buf))
        object.__setattr__(self, "_stat_inputs", stat_inputs)
        object.__setattr__(self, "constants", constants)
        object.__setattr__(self, "nodes", self._fold(spec.nodes))
        static = set(constants)
        marks = []
        for node in self.nodes:
            s = node.op in _SHAPE_OPS or all(not n or n in static for n in node.inputs)
            marks.append(s)
            if s:
                static.update(o for o in node.outputs if o)
        object.__setattr__(self, "_static", marks)
        object.__setattr__(self, "_cache", OrderedDict())
        object.__setattr__(self, "_rngs", {})
        object.__setattr__(self, "_record", None)  # list of layer rows while `layers` runs
        self.flatten_parameters()

    # -- building ------------------------------------------------------------------------------
    def _fold(self, nodes: list[NodeSpec]) -> list[NodeSpec]:
        """Evaluate every node whose inputs are all constants; keep the rest, in order."""
        kept = []
        for node in nodes:
            if node.op in _SHAPE_OPS or node.op == "Dropout" or not all(
                    not n or n in self.constants for n in node.inputs):
                kept.append(node)
                continue
            outs = self._run(node, [self.constants[n] if n else None for n in node.inputs])
            for name, value in zip(node.outputs, outs, strict=False):
                if name:
                    self.constants[name] = value
        return kept

    def _run(self, node: NodeSpec, xs: list[Value]) -> list[Value]:
        try:
            out = OPS[node.op].fn(self, node, xs)
        except (MemoryBudgetError, MutationError, EngineError):
            raise
        except (ValueError, TypeError, IndexError, ZeroDivisionError) as e:
            raise self.spec.fail(node, str(e).splitlines()[0] if str(e) else type(e).__name__
                                 ) from None
        outs = out if isinstance(out, list) else [out]
        return [np.asarray(o) if isinstance(o, np.generic) else o for o in outs]

    # -- what handlers ask of the model --------------------------------------------------------
    def running_stats(self, node: NodeSpec) -> Buffer:
        """The (2, C) [mean, var] buffer of a BatchNormalization node."""
        return self._buffers[node.name]

    def rng(self, node: NodeSpec) -> np.random.Generator:
        """A generator per dropout node, seeded from the model's seed and the node's place."""
        if node.name not in self._rngs:
            self._rngs[node.name] = np.random.default_rng([self.seed, len(self._rngs)])
        return self._rngs[node.name]

    # -- running ---------------------------------------------------------------------------------
    def _inputs(self, args: tuple[Any, ...]) -> list[Tensor]:
        spec = self.spec
        if len(args) != len(spec.inputs):
            raise ValueError(f"{spec.name}: expected {len(spec.inputs)} inputs "
                             f"({', '.join(v.name for v in spec.inputs)}), got {len(args)}")
        out = []
        for v, a in zip(spec.inputs, args, strict=True):
            t = a if isinstance(a, Tensor) else Tensor(np.asarray(a))
            want = v.shape
            t = _fit(t, want)
            if t.ndim != len(want) or any(isinstance(d, int) and d != s
                                           for d, s in zip(want, t.shape, strict=True)):
                shown = tuple(d if isinstance(d, int) else (d or "?") for d in want)
                raise ValueError(f"{spec.name}: input {v.name!r} should have shape {shown}, "
                                 f"got {tuple(t.shape)}")
            if (v.dtype.startswith("int")) != (t.dtype.kind in "iu"):
                raise TypeError(f"{spec.name}: input {v.name!r} should be {v.dtype}, got "
                                f"{t.dtype}")
            out.append(t)
        return out

    def forward(self, *args: Any) -> Tensor | tuple[Tensor, ...]:
        """Run the graph on the inputs the exported model took; one Tensor per graph output."""
        xs = self._inputs(args)
        key = tuple(tuple(x.shape) for x in xs)
        cached = self._cache.get(key)
        env: dict[str, Value] = dict(self.constants)
        env.update(self._params)
        env.update(self._stat_inputs)
        env.update(zip((v.name for v in self.spec.inputs), xs, strict=True))
        if cached is not None:
            env.update(cached)
        fresh: dict[str, Value] = {}
        run = _Layout(env)
        for node, static in zip(self.nodes, self._static, strict=True):
            if static and cached is not None:
                continue
            outs = self._step(node, run)
            if self._record is not None and not static:
                shapes = [tuple(run.logical_shape(o)) for o in node.outputs if o in run.env]
                size = sum(self._params[n].size for n in node.inputs if n in self._params)
                self._record.append((node.name, node.op, shapes, size))
            if static:
                fresh.update((n, v) for n, v in zip(node.outputs, outs, strict=False) if n)
        if cached is None:
            self._cache[key] = fresh
            while len(self._cache) > _CACHE_SHAPES:
                self._cache.popitem(last=False)
        results = []
        for v in self.spec.outputs:
            value = run.logical(v.name)
            results.append(value if isinstance(value, Tensor) else Tensor(np.asarray(value)))
        return results[0] if len(results) == 1 else tuple(results)

    def _step(self, node: NodeSpec, run: _Layout) -> list[Value]:
        op = OPS[node.op]
        if node.op in _SHAPE_OPS:
            shape = run.logical_shape(node.inputs[0])
            if node.op == "Size":
                outs: list[Value] = [np.asarray(math.prod(shape), np.int64)]
            else:
                lo, hi = node.attrs.get("start", 0), node.attrs.get("end", len(shape))
                outs = [np.asarray(shape[lo:hi], np.int64)]
            run.env[node.outputs[0]] = outs[0]
            return outs
        names = node.inputs
        tagged = any(n in run.nhwc for n in names if n)
        if op.layout == "nhwc":
            xs = [run.logical(n) if n else None for n in names]
            first = run.env[names[0]]
            if names[0] in run.nhwc:
                xs[0] = first
            elif first.ndim == 4:
                xs[0] = run.to_nhwc(first)
            outs = self._run(node, xs)
            run.store(node.outputs, outs, nhwc=xs[0].ndim == 4)
        elif op.layout == "elementwise" and tagged and all(
                run.env[n].ndim <= 4 for n in names if n):
            xs = [None if not n else run.env[n] if n in run.nhwc or i in op.settings
                  else run.to_nhwc(run.env[n]) for i, n in enumerate(names)]
            outs = self._run(node, xs)
            run.store(node.outputs, outs, nhwc=True)
        else:
            outs = self._run(node, [run.logical(n) if n else None for n in names])
            run.store(node.outputs, outs, nhwc=False)
        return outs

    def layers(self, *args: Any) -> list[tuple[str, str, list[tuple[int, ...]], int]]:
        """(node name, op type, output shapes, parameters it reads) of every node a forward on
        `args` runs, shape arithmetic left out: the model's layers, for a summary table."""
        object.__setattr__(self, "_record", [])
        try:
            self(*args)
            return self._record
        finally:
            object.__setattr__(self, "_record", None)

    def forward_flops(self, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """FLOPs of one forward pass of one example of `shape`, and its output shape (an
        estimate from the graph's layers: `fedcore.models.onnx.cost`)."""
        from .cost import forward_flops

        return forward_flops(self, shape)

    @property
    def family(self) -> str:
        """transformer, rnn, cnn or mlp: which measured engine efficiency times this model."""
        from .cost import model_family

        return model_family(self)

    def extra_repr(self) -> str:
        return (f"{self.spec.name!r}, {len(self.nodes)} nodes, "
                f"{sum(p.size for p in self._params.values())} parameters")


def _fit(t: Tensor, want: tuple[Any, ...]) -> Tensor:
    """`t` reshaped to a fully static per-sample shape `want[1:]` when it holds flat rows of
    that size, or samples that differ from it only in axes of size 1."""
    fixed = want[1:]
    if t.ndim < 2 or not all(isinstance(d, int) for d in fixed) or tuple(t.shape[1:]) == fixed:
        return t
    same = [d for d in t.shape[1:] if d != 1] == [d for d in fixed if d != 1]
    if (t.ndim == 2 or same) and math.prod(t.shape[1:]) == math.prod(fixed):
        return E.reshape(t, (-1, *fixed))
    return t


class _Layout:
    """One forward's values, which of them sit channels-last, and their NCHW copies."""

    def __init__(self, env: dict[str, Value]):
        self.env = env
        self.nhwc: set[str] = set()
        self._nchw: dict[str, Value] = {}

    def logical(self, name: str) -> Value:
        """The value in ONNX's layout (transposed back once if it sits channels-last)."""
        if name not in self.nhwc:
            return self.env[name]
        if name not in self._nchw:
            v = self.env[name]
            self._nchw[name] = (np.ascontiguousarray(v.transpose(_TO_NCHW)) if is_const(v)
                                else transpose(v, _TO_NCHW))
        return self._nchw[name]

    def logical_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.env[name].shape)
        return tuple(shape[i] for i in _TO_NCHW) if name in self.nhwc else shape

    @staticmethod
    def to_nhwc(v: Value) -> Value:
        """An NCHW value (or one that broadcasts against NCHW) laid out channels-last."""
        if v is None or v.ndim == 0 or v.size == 1:
            return v
        lead = (1,) * (4 - v.ndim)
        if is_const(v):
            return np.ascontiguousarray(v.reshape(lead + v.shape).transpose(_TO_NHWC))
        return transpose(E.reshape(v, lead + tuple(v.shape)) if lead else v, _TO_NHWC)

    def store(self, names: list[str], outs: list[Value], nhwc: bool) -> None:
        for name, value in zip(names, outs, strict=False):
            if not name:
                continue
            self.env[name] = value
            if nhwc and value is not None and value.ndim == 4:
                self.nhwc.add(name)
