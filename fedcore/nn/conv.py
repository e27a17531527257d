"""Convolution and pooling layers (channels-last NHWC, like the engine ops)."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, avg_pool2d, conv2d, max_pool2d
from ..engine.conv import Pair, _pair
from ..engine.ops import Operand
from .module import Module, Parameter

__all__ = ["AvgPool2d", "Conv2d", "MaxPool2d"]


class Conv2d(Module):
    """2-D convolution of (N, H, W, C_in) input; weight (KH, KW, C_in, C_out), He-initialised.

    Pass `rng` to share a generator across layers, or `seed` for a fresh one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Pair,
                 stride: Pair = 1, padding: Pair = 0, *, bias: bool = True,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"Conv2d channels must be positive, got ({in_channels}, "
                             f"{out_channels})")
        kh, kw = _pair("Conv2d", "kernel_size", kernel_size)
        rng = rng if rng is not None else np.random.default_rng(seed)
        fan_in = kh * kw * in_channels
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(kh, kw, in_channels, out_channels))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride = _pair("Conv2d", "stride", stride)
        self.padding = _pair("Conv2d", "padding", padding)
        self.weight = Parameter(w.astype(np.float32), name="weight")
        self.bias = Parameter(np.zeros(out_channels, np.float32), name="bias") if bias else None

    def forward(self, x: Operand) -> Tensor:
        """Convolve a (N, H, W, C_in) batch into (N, Ho, Wo, C_out)."""
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class _Pool2d(Module):
    def __init__(self, kernel_size: Pair = 2, stride: Pair | None = None, padding: Pair = 0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over windows of (N, H, W, C) input; stride defaults to the kernel size."""

    def forward(self, x: Operand) -> Tensor:
        """Pool the spatial axes."""
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over windows of (N, H, W, C) input; stride defaults to the kernel size."""

    def forward(self, x: Operand) -> Tensor:
        """Pool the spatial axes."""
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding)
