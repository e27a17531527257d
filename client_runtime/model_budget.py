"""What a model a server asks for would cost, known before it is built, and a bounded cache.

A device builds the model a train message names. The message is untrusted: a spec with 10^10
parameters would allocate without limit the moment its layers are made. So the parameter
count is worked out from the builder's arguments first (``parameter_count``: an upper bound
for every built-in model), times the bytes training holds per parameter (the parameter, its
gradient and up to two optimizer slots, float32), and checked against the device's budget
(``check_model_fits``). A model with no registered count is built only if the global vector
the server sent (already in memory) fits, and must then match it. Built models are cached
per spec, at most ``MAX_CACHED_MODELS`` of them (least recently used goes first).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from fedcore import protocol
from fedcore.models import build_model
from fedcore.models.registry import model_builder
from fedcore.nn import Module, state_size

BYTES_PER_PARAMETER = 4 * 4  # float32 parameter, gradient and two optimizer slots (Adam)
DEFAULT_MODEL_BUDGET = 2**32  # bytes, when the node names no device and no memory budget
MAX_CACHED_MODELS = 2


class ModelTooLarge(ValueError):
    """The model a message asks for does not fit this device (nothing was allocated)."""


def _dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _ints(values: Any) -> list[int]:
    items = [values] if isinstance(values, int) else list(values)
    return [int(v) for v in items]


def _image(a: Mapping[str, Any]) -> tuple[int, int, int]:
    from fedcore.models.cnn import _input_shape

    return _input_shape(a["input_shape"], a["input_dim"])


def _mlp(a: Mapping[str, Any]) -> int:
    widths = [int(a["input_dim"]), *_ints(a["hidden"]), int(a["num_classes"])]
    return sum(_dense(i, o) for i, o in zip(widths, widths[1:], strict=False))


def _logreg(a: Mapping[str, Any]) -> int:
    return _dense(int(a["input_dim"]), int(a["num_classes"]))


def _cnn(a: Mapping[str, Any]) -> int:
    h, w, c = _image(a)
    total = 0
    for width in _ints(a["channels"]):
        total += 9 * c * width + width
        h, w, c = h // 2, w // 2, width
    hidden = int(a["hidden"])
    return total + _dense(h * w * c, hidden) + _dense(hidden, int(a["num_classes"]))


def _lstm(a: Mapping[str, Any]) -> int:
    vocab = int(a["vocab_size"] if a["vocab_size"] is not None else a["num_classes"] or 0)
    embed, hidden = int(a["embed_dim"]), _ints(a["hidden"])[0]
    return vocab * embed + 4 * hidden * (embed + hidden) + 8 * hidden + _dense(hidden, vocab)


def _tiny_gpt(a: Mapping[str, Any]) -> int:
    vocab, d, hidden = int(a["vocab_size"] or 0), int(a["embed_dim"]), _ints(a["hidden"])[0]
    kv = int(a["n_kv_heads"]) * (d // max(1, int(a["n_heads"])))  # key/value width (GQA)
    per_block = 2 * d * d + 2 * d * kv + 3 * d * hidden + 2 * d  # attention, SwiGLU, norms
    return vocab * d + int(a["n_layers"]) * per_block + d


def _mobilenet(a: Mapping[str, Any]) -> int:
    _, _, c = _image(a)
    widths = _ints(a["channels"])
    width = widths[0] if widths else 0
    total = 9 * c * width + 5 * width  # BatchNorm: scale, shift and two running statistics
    for out in widths:
        total += 10 * width + 4 * width + _dense(width, out) + 4 * out
        width = out
    return total + _dense(width, int(a["num_classes"]))


#: model name -> upper bound of its parameter count from its (complete) arguments
PARAMETER_COUNTS: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "mlp": _mlp,
    "logreg": _logreg,
    "cnn": _cnn,
    "lstm": _lstm,
    "tiny_gpt": _tiny_gpt,
    "mobilenet": _mobilenet,
}


def parameter_count(spec: protocol.ModelSpec) -> int | None:
    """An upper bound of the values ``spec``'s global vector carries: its parameters and any
    BatchNorm statistics (None: no count known for it)."""
    count = PARAMETER_COUNTS.get(spec.name)
    if count is None:
        return None
    builder = model_builder(spec.name, allow_import=False)
    try:
        bound = inspect.signature(builder).bind(**spec.kwargs)
    except TypeError as exc:
        raise ValueError(f"model {spec.name!r}: {exc}") from None
    bound.apply_defaults()
    try:
        return max(0, int(count(bound.arguments)))
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"model {spec.name!r}: bad arguments ({exc})") from None


def check_model_fits(spec: protocol.ModelSpec, global_size: int, budget: int | None) -> None:
    """``ModelTooLarge`` unless training ``spec`` fits ``budget`` bytes (None: the default).

    The count comes from the spec's arguments, never from building it; it must also cover
    the global vector the server sent (a spec that claims fewer parameters is inconsistent).
    """
    limit = DEFAULT_MODEL_BUDGET if budget is None else budget
    count = parameter_count(spec)
    if count is not None and count < global_size:
        raise ModelTooLarge(
            f"model {spec.name!r} has at most {count} parameters but the server sent {global_size}"
        )
    needed = max(count or 0, global_size) * BYTES_PER_PARAMETER
    if needed > limit:
        raise ModelTooLarge(
            f"memory: model {spec.name!r} needs about {needed:,} bytes to train "
            f"({max(count or 0, global_size):,} parameters), the budget is {limit:,}"
        )


class ModelCache:
    """Built models by spec, the most recent ``size`` kept (a round only overwrites weights)."""

    def __init__(self, size: int = MAX_CACHED_MODELS) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, bool], Module] = OrderedDict()

    def get(
        self, spec: protocol.ModelSpec, allow_import: bool, global_size: int, budget: int | None
    ) -> Module:
        """The model of ``spec``, built after ``check_model_fits`` if not cached."""
        key = (spec.key(), allow_import)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        check_model_fits(spec, global_size, budget)
        while len(self._models) >= self.size:
            self._models.popitem(last=False)  # free before building the next one
        model = build_model(spec.name, allow_import=allow_import, **spec.kwargs)
        if state_size(model) != global_size:
            raise ValueError(
                f"model {spec.name!r} has {state_size(model)} values (parameters and "
                f"statistics), the server sent {global_size}"
            )
        self._models[key] = model
        return model

    def __len__(self) -> int:
        return len(self._models)

