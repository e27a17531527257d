"""LoRA (Hu et al. 2021) on any `Dense`: a frozen base plus a trained low-rank update.

`apply_lora(model, rank, alpha, targets, base)` replaces every `Dense` whose dotted path
names a target ("attn" matches `blocks.0.attn.q`) by a `LoRADense`: y = x W + (x A) B *
alpha / rank (+ bias), with A (in, r) random and B (r, out) zero, so the model starts as it
was. Every other parameter of the model is frozen too, so the flat parameter vector (what a
federated round sends and averages) is the adapters only. With `base="int8"` each frozen W is
held as int8 codes and per-output-channel scales, dequantized a block at a time inside the
product; the layer's base and adapter products are one fused op (`fedcore.engine.lora`).
A frozen `Embedding` table goes to int8 too, one scale per row (its tied `TiedHead` reads the
same codes): the largest frozen tensor of a small language model, a quarter of its bytes.
`merge_lora(model)` folds the adapters back into plain `Dense` weights (float32) for export.

`freeze_a=True` trains B only (FFA-LoRA, Sun et al. 2024): A stays at its seeded random
value, the same on every client and the server (all build it from the run's seed), so a round
sends half the values, and averaging the Bs averages the updates A B exactly (averaging A and
B separately does not: the mean of products is not the product of means). The step then keeps
no layer input for A's gradient either, only x A.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..engine import Tensor, add_, get_engine, reshape
from ..engine.lora import lora_matmul
from ..engine.ops import Operand, tensor
from ..engine.quant import dequantize_int8, int8_tensor, quantize_int8, quantize_rows
from .layers import Dense
from .module import Module, Parameter
from .recurrent import Embedding
from .transformer import TiedHead

__all__ = ["BASES", "Frozen", "LoRABuild", "LoRADense", "adapt_layers", "apply_lora", "has_lora",
           "lora_config", "merge_lora"]

BASES = ("float32", "int8")
MAX_RANK = 256


class Frozen(Tensor):
    """A module's weight that is not trained: not a Parameter (so not in the flat vector) and
    not a Buffer (so not in `get_state`)."""

    __slots__ = ()


def _pooled(arr: np.ndarray, dtype: type, name: str) -> np.ndarray:
    """A copy of `arr` in the engine's pool: frozen weights count against a device's budget
    like the trained ones (and the old flat buffer they came from can go)."""
    buf = get_engine().pool.alloc(arr.shape, dtype, what=f"frozen weight '{name}'")
    np.copyto(buf, arr)
    return buf


def _frozen(arr: np.ndarray, name: str) -> Frozen:
    return Frozen(_pooled(arr, np.float32, name), name=name)


class LoRADense(Module):
    """A `Dense` with a frozen (float32 or int8) base and trained adapters `lora_a`, `lora_b`."""

    per_sample = True

    def __init__(self, dense: Dense, rank: int, alpha: float, base: str = "float32",
                 rng: np.random.Generator | None = None, freeze_a: bool = False):
        super().__init__()
        if base not in BASES:
            raise ValueError(f"LoRA base must be one of {BASES}, got {base!r}")
        fin, fout = dense.in_features, dense.out_features
        if not 1 <= rank <= min(fin, fout, MAX_RANK):
            raise ValueError(f"LoRA rank must be in [1, {min(fin, fout, MAX_RANK)}] for a "
                             f"{fin}x{fout} layer, got {rank}")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"LoRA alpha must be a positive number, got {alpha}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features, self.out_features = fin, fout
        self.rank, self.alpha, self.base = int(rank), float(alpha), base
        self.scale = float(alpha) / int(rank)
        w = dense.weight.data
        if base == "int8":
            codes, scales = quantize_int8(w)
            self.codes = int8_tensor(_pooled(codes, np.int8, "codes"), "codes")
            self.scales = _frozen(scales, "scales")
            self.weight = None
        else:
            self.weight = _frozen(w, "weight")
            self.codes = self.scales = None
        self.bias = None if dense.bias is None else _frozen(dense.bias.data, "bias")
        bound = 1.0 / np.sqrt(fin)  # PyTorch's Linear init for A (as PEFT), B = 0
        a = rng.uniform(-bound, bound, (fin, rank)).astype(np.float32)
        self.lora_a = _frozen(a, "lora_a") if freeze_a else Parameter(a, name="lora_a")
        self.lora_b = Parameter(np.zeros((rank, fout), np.float32), name="lora_b")

    def forward(self, x: Operand) -> Tensor:
        """Base product plus the scaled low-rank update, for (..., in_features) input."""
        t = tensor(x)
        lead = t.shape[:-1] if t.ndim != 2 else None
        if lead is not None:
            t = reshape(t, -1, self.in_features)
        if self.codes is not None:
            out = lora_matmul(t, self.codes, self.lora_a, self.lora_b, self.scale, self.scales)
        else:
            out = lora_matmul(t, self.weight, self.lora_a, self.lora_b, self.scale)
        if self.bias is not None:
            add_(out, self.bias)
        return out if lead is None else reshape(out, *lead, self.out_features)

    def forward_flops(self, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """FLOPs of the frozen product plus the low-rank one, for input (..., in)."""
        rows = int(np.prod(shape)) // shape[-1]  # the walk may hand a sibling's output shape
        flops = 2.0 * rows * (self.in_features * self.out_features
                              + self.rank * (self.in_features + self.out_features))
        return flops, (*shape[:-1], self.out_features)

    def merged_weight(self) -> np.ndarray:
        """The float32 (in, out) weight base + A B * alpha / rank."""
        w = (dequantize_int8(self.codes.data, self.scales.data) if self.codes is not None
             else self.weight.data.copy())
        w += (self.lora_a.data @ self.lora_b.data) * np.float32(self.scale)
        return w

    def extra_repr(self) -> str:
        frozen = ", A frozen" if type(self.lora_a) is Frozen else ""
        return (f"{self.in_features}, {self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, base={self.base}{frozen}")


def _swap(mod: Module, name: str, child: Module) -> None:
    """Replace sub-module `name` keeping its place (the flat layout follows module order)."""
    mod._modules[name] = child
    object.__setattr__(mod, name, child)


def _matches(path: str, targets: Sequence[str]) -> str | None:
    parts = path.split(".")
    for t in targets:
        if t in parts or path == t or path.startswith(t + "."):
            return t
    return None


def lora_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A checked, JSON-ready {rank, alpha, targets, base, freeze_a}; ValueError naming the
    bad key.

    For settings that arrive in a message as much as from a scenario: nothing is allocated
    before the values are known to be sane.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"lora must be a table, got {type(raw).__name__}")
    extra = set(raw) - {"rank", "alpha", "targets", "base", "freeze_a"}
    if extra:
        raise ValueError(f"lora: unknown key {sorted(extra)[0]!r} (keys: rank, alpha, targets, "
                         f"base, freeze_a)")
    rank = raw.get("rank", 8)
    if type(rank) is not int or not 1 <= rank <= MAX_RANK:
        raise ValueError(f"lora.rank must be a whole number in [1, {MAX_RANK}], got {rank!r}")
    alpha = raw.get("alpha", 2 * rank)
    if type(alpha) not in (int, float) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"lora.alpha must be a positive number, got {alpha!r}")
    targets = raw.get("targets", ["attn", "mlp"])
    if not isinstance(targets, list | tuple) or not targets or not all(
            isinstance(t, str) and t for t in targets) or len(targets) > 64:
        raise ValueError(f"lora.targets must be a non-empty list of layer names, got "
                         f"{targets!r}")
    base = raw.get("base", "float32")
    if base not in BASES:
        raise ValueError(f"lora.base must be one of {', '.join(BASES)}, got {base!r}")
    freeze_a = raw.get("freeze_a", False)
    if type(freeze_a) is not bool:
        raise ValueError(f"lora.freeze_a must be true or false, got {freeze_a!r}")
    return {"rank": rank, "alpha": float(alpha), "targets": list(targets), "base": base,
            "freeze_a": freeze_a}


def adapt_layers(module: Module, path: str, rank: int, alpha: float,
                 targets: Sequence[str], base: str, rng: np.random.Generator,
                 freeze_a: bool = False) -> None:
    """Swap each `Dense` under `module` whose dotted name in its model (`path` is `module`'s)
    a target names for a `LoRADense`, drawing A from `rng` in module order.

    A builder calls this on each part as soon as it is built (`LoRABuild`), so the float32
    weights of one part, not of the whole model, exist before they are quantized."""
    for sub, mod in list(module.named_modules(path)):
        for name, child in list(mod._modules.items()):
            full = f"{sub}.{name}" if sub else name
            if type(child) is Dense and _matches(full, targets) is not None:
                _swap(mod, name, LoRADense(child, rank, alpha, base, rng, freeze_a))


class LoRABuild:
    """What a builder that takes `lora=` is handed: call it on each part (block, layer) as it is
    built, with the part's dotted name; the adapters and their A values are the ones
    `apply_lora` would have put on the finished model (same seed, same module order)."""

    def __init__(self, config: Mapping[str, Any], seed: int):
        self.config = dict(config)
        self.rng = np.random.default_rng(seed)

    def __call__(self, path: str, part: Module) -> None:
        adapt_layers(part, path, rng=self.rng, **self.config)
        _return_freed_memory()


def apply_lora(model: Module, rank: int = 8, alpha: float = 16.0,
               targets: Iterable[str] = ("attn", "mlp"), base: str = "float32",
               seed: int = 0, freeze_a: bool = False) -> Module:
    """Put LoRA adapters on the `Dense` layers `targets` name and freeze everything else
    (in place; returns `model`); `freeze_a`: train B only. Layers already adapted (by a
    builder, `LoRABuild`) are kept. ValueError if a target names no Dense layer."""
    targets = list(targets)
    adapt_layers(model, "", rank, alpha, targets, base, np.random.default_rng(seed), freeze_a)
    hit = {_matches(path, targets) for path, mod in model.named_modules()
           if isinstance(mod, LoRADense)}
    missing = [t for t in targets if t not in hit]
    if missing:
        raise ValueError(f"lora.targets: {missing[0]!r} names no Dense layer of the model")
    tables = _int8_tables(model) if base == "int8" else set()
    frozen: dict[int, tuple[Tensor, Tensor | None]] = {}
    for _, mod in model.named_modules():
        if isinstance(mod, LoRADense):
            continue
        for name, p in list(mod._params.items()):
            f = frozen.get(id(p))
            if f is None:
                f = frozen[id(p)] = _int8_table(p) if id(p) in tables else (
                    _frozen(p.data, p.name), None)
            setattr(mod, name, f[0])
            if f[1] is not None:
                mod.scales = f[1]
    model.flatten_parameters()
    _return_freed_memory()
    return model


def _int8_tables(model: Module) -> set[int]:
    """ids of the `Embedding` tables an int8 base holds in int8: each one whose every holder
    is an `Embedding` or a `TiedHead` (both read int8 codes with per-row `scales`)."""
    holders: dict[int, list[Module]] = {}
    for _, mod in model.named_modules():
        for name, p in mod._params.items():
            holders.setdefault(id(p), []).append(mod if name == "weight" else None)
    return {id(m.weight) for _, m in model.named_modules()
            if type(m) is Embedding and isinstance(m.weight, Parameter)
            and all(type(h) in (Embedding, TiedHead) for h in holders[id(m.weight)])}


def _int8_table(p: Parameter) -> tuple[Tensor, Tensor]:
    """A frozen table as (int8 codes, per-row scales), both in the engine's pool."""
    codes, scales = quantize_rows(p.data)
    return int8_tensor(_pooled(codes, np.int8, "table codes"), "codes"), _frozen(scales,
                                                                                "scales")


def _return_freed_memory() -> None:
    """Give the float32 base just dropped back to the OS: the engine's recycled buffers, and
    glibc's free heap pages (`malloc_trim`; elsewhere nothing more is done). Measured on the
    benchmark's tiny GPT: 9 MB of RSS that would otherwise stay with the process."""
    get_engine().pool.release_cached()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return
    trim(0)


def has_lora(model: Module) -> bool:
    """True when some layer of `model` is a `LoRADense`."""
    return any(isinstance(m, LoRADense) for _, m in model.named_modules())


def merge_lora(model: Module) -> Module:
    """Fold every adapter into its base: LoRADense -> Dense with the merged float32 weight;
    frozen weights become Parameters again (in place; returns `model`, flattened)."""
    if not has_lora(model):
        return model
    thawed: dict[int, Parameter] = {}
    for _, mod in list(model.named_modules()):
        for name, child in list(mod._modules.items()):
            if isinstance(child, LoRADense):
                dense = Dense(child.in_features, child.out_features, bias=child.bias is not None)
                dense.weight = Parameter(child.merged_weight(), name="weight")
                if child.bias is not None:
                    dense.bias = Parameter(child.bias.data.copy(), name="bias")
                _swap(mod, name, dense)
        table = getattr(mod, "scales", None) if type(mod) in (Embedding, TiedHead) else None
        if table is not None:  # an int8 table: its float32 values, shared by its holders
            codes = mod.weight
            p = thawed.get(id(codes))
            if p is None:
                w = codes.data.astype(np.float32) * table.data[:, None]
                p = thawed[id(codes)] = Parameter(w, name="weight")
            mod.weight, mod.scales = p, None
        for name, value in list(vars(mod).items()):
            if type(value) is Frozen:
                p = thawed.get(id(value))
                if p is None:
                    p = thawed[id(value)] = Parameter(value.data, name=value.name)
                setattr(mod, name, p)
    model.flatten_parameters()
    return model
