"""A small MobileNet-style CNN: depthwise-separable blocks and global average pooling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..nn import (
    BatchNorm,
    Conv2d,
    Dense,
    DepthwiseConv2d,
    GlobalAvgPool2d,
    PointwiseConv2d,
    Reshape,
    Sequential,
)
from .cnn import _input_shape
from .registry import register_model

__all__ = ["mobilenet"]


@register_model("mobilenet")
def mobilenet(num_classes: int = 10, input_shape: Sequence[int] | None = None,
              channels: Sequence[int] = (16, 32, 64), seed: int = 0,
              input_dim: int | None = None) -> Sequential:
    """conv3x3 stem (stride 2) -> [depthwise 3x3 -> pointwise 1x1] per width in `channels`
    (stride 2 after the first) -> global average pool -> dense. BatchNorm + ReLU after every
    convolution, one fused layer (MobileNet v1, Howard et al. 2017, at MNIST scale). Input
    NHWC or flat."""
    h, w, c = _input_shape(input_shape, input_dim)
    if not channels:
        raise ValueError("mobilenet: channels must name at least one block width")
    rng = np.random.default_rng(seed)
    width = int(channels[0])
    layers: list = [Reshape(h, w, c), Conv2d(c, width, 3, stride=2, padding=1, rng=rng),
                    BatchNorm(width, relu=True)]
    for i, out in enumerate(int(x) for x in channels):
        stride = 1 if i == 0 else 2
        layers += [DepthwiseConv2d(width, 3, stride=stride, padding=1, rng=rng),
                   BatchNorm(width, relu=True),
                   PointwiseConv2d(width, out, rng=rng), BatchNorm(out, relu=True)]
        width = out
    layers += [GlobalAvgPool2d(), Dense(width, num_classes, init="glorot", rng=rng)]
    model = Sequential(*layers)
    model.flatten_parameters()
    return model
