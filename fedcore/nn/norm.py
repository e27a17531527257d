"""Normalisation layers: BatchNorm (running statistics as a Buffer), LayerNorm, RMSNorm."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, batch_norm, layer_norm, rms_norm
from ..engine.ops import Operand
from .buffers import Buffer
from .module import Module, Parameter

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm"]


class BatchNorm(Module):
    """Batch normalisation over every axis but the last: (N, C) or NHWC (N, H, W, C).

    Training normalises with the batch's statistics and updates `running` in place, a (2, C)
    [mean, var] `Buffer` (momentum 0.1, unbiased variance, as in PyTorch); eval mode uses
    `running`. The statistics are not parameters: they travel with `get_state()`, not
    `get_flat()` (see `fedcore.nn.buffers`). `relu=True` applies max(., 0) to the result,
    fused with the normalisation in training (one op forward and one backward).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, *,
                 relu: bool = False):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"BatchNorm num_features must be positive, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1], got {momentum}")
        self.num_features = num_features
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.relu = bool(relu)
        self.weight = Parameter(np.ones(num_features, np.float32), name="weight")
        self.bias = Parameter(np.zeros(num_features, np.float32), name="bias")
        self.running = Buffer(np.stack([np.zeros(num_features), np.ones(num_features)]),
                              name="running")

    @property
    def per_sample(self) -> bool:  # type: ignore[override]
        """Only in eval mode: training normalises with statistics of the whole batch."""
        return not self.training

    @property
    def running_mean(self) -> np.ndarray:
        """The running mean (a view of the buffer)."""
        return self.running.data[0]

    @property
    def running_var(self) -> np.ndarray:
        """The running (unbiased) variance (a view of the buffer)."""
        return self.running.data[1]

    def forward(self, x: Operand) -> Tensor:
        """Normalise `x`; in training mode also update the running statistics."""
        return batch_norm(x, self.weight, self.bias, self.running, training=self.training,
                          momentum=self.momentum, eps=self.eps, relu=self.relu)

    def extra_repr(self) -> str:
        relu = ", relu=True" if self.relu else ""
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}{relu}"


class LayerNorm(Module):
    """Normalise each sample over its last axis, then scale and shift (learned, per feature)."""

    per_sample = True

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"LayerNorm num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.eps = float(eps)
        self.weight = Parameter(np.ones(num_features, np.float32), name="weight")
        self.bias = Parameter(np.zeros(num_features, np.float32), name="bias")

    def forward(self, x: Operand) -> Tensor:
        """Normalise over the last axis."""
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class RMSNorm(Module):
    """Scale each sample by the inverse root mean square of its last axis, then by a learned
    per-feature gain (no centring, no bias: what LLaMA-style transformers use)."""

    per_sample = True

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"RMSNorm num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.eps = float(eps)
        self.weight = Parameter(np.ones(num_features, np.float32), name="weight")

    def forward(self, x: Operand) -> Tensor:
        """Normalise over the last axis."""
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
