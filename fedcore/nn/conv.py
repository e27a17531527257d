"""Convolution and pooling layers (channels-last NHWC, like the engine ops), including the
MobileNet pieces: depthwise and pointwise convolution and global average pooling."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, avg_pool2d, conv2d, depthwise_conv2d, global_avg_pool2d, max_pool2d
from ..engine.conv import Pair, _pair, conv_output_size
from ..engine.ops import Operand
from .layers import Dense
from .module import Module, Parameter

__all__ = ["AvgPool2d", "Conv2d", "DepthwiseConv2d", "GlobalAvgPool2d", "MaxPool2d",
           "PointwiseConv2d"]


class Conv2d(Module):
    """2-D convolution of (N, H, W, C_in) input; weight (KH, KW, C_in, C_out), He-initialised.

    Pass `rng` to share a generator across layers, or `seed` for a fresh one.
    """

    per_sample = True

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
    per_sample = True

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


class DepthwiseConv2d(Module):
    """Per-channel KxK convolution of (N, H, W, C): weight (KH, KW, C), He-initialised."""

    per_sample = True

    def __init__(self, channels: int, kernel_size: Pair = 3, stride: Pair = 1,
                 padding: Pair = 1, *, rng: np.random.Generator | None = None,
                 seed: int | None = None):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"DepthwiseConv2d channels must be positive, got {channels}")
        kh, kw = _pair("DepthwiseConv2d", "kernel_size", kernel_size)
        rng = rng if rng is not None else np.random.default_rng(seed)
        w = rng.normal(0.0, np.sqrt(2.0 / (kh * kw)), size=(kh, kw, channels))
        self.channels, self.kernel_size = channels, (kh, kw)
        self.stride = _pair("DepthwiseConv2d", "stride", stride)
        self.padding = _pair("DepthwiseConv2d", "padding", padding)
        self.weight = Parameter(w.astype(np.float32), name="weight")
        self.bias = Parameter(np.zeros(channels, np.float32), name="bias")

    def forward(self, x: Operand) -> Tensor:
        """Filter each channel of a (N, H, W, C) batch."""
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def forward_flops(self, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """FLOPs for one (H, W, C) image."""
        h, w, c = shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho = conv_output_size(h, kh, sh, ph)
        wo = conv_output_size(w, kw, sw, pw)
        return 2.0 * ho * wo * kh * kw * c, (ho, wo, c)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class PointwiseConv2d(Dense):
    """1x1 convolution (N, H, W, C_in) -> (N, H, W, C_out): a Dense layer over the pixels,
    weight (C_in, C_out); no im2col, the NHWC batch already is a (N*H*W, C_in) matrix."""

    def forward_flops(self, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """FLOPs for one (H, W, C_in) image."""
        rows = int(np.prod(shape)) // shape[-1]  # the walk may hand a sibling's output shape
        return 2.0 * rows * self.in_features * self.out_features, (*shape[:-1],
                                                                   self.out_features)


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: (N, H, W, C) -> (N, C)."""

    per_sample = True

    def forward_flops(self, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """One add per element."""
        return float(np.prod(shape)), (shape[-1],)

    def forward(self, x: Operand) -> Tensor:
        """Pool the whole image."""
        return global_avg_pool2d(x)
