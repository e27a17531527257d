"""The reference CNN: two conv+pool blocks and a dense head, channels-last."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..engine.conv import conv_output_size
from ..nn import Conv2d, Dense, Flatten, MaxPool2d, ReLU, Reshape, Sequential
from .registry import register_model

__all__ = ["cnn"]


def _input_shape(input_shape: Sequence[int] | None, input_dim: int | None) -> tuple[int, ...]:
    """(H, W, C): as given, else a square single-channel image of `input_dim` pixels."""
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or min(shape) <= 0:
            raise ValueError(f"cnn: input_shape must be (H, W) or (H, W, C), got {input_shape}")
        return shape
    if input_dim is None:
        return (28, 28, 1)
    side = math.isqrt(int(input_dim))
    if side * side != input_dim:
        raise ValueError(f"cnn: input_dim {input_dim} is not a square image; pass input_shape")
    return (side, side, 1)


@register_model("cnn")
def cnn(num_classes: int = 10, input_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (32, 64), hidden: int = 128, seed: int = 0,
        input_dim: int | None = None) -> Sequential:
    """[conv3x3(pad 1) -> maxpool 2 -> ReLU] x 2 -> dense(hidden) -> ReLU -> dense(classes).

    Input is NHWC (N, H, W, C) or flat (N, H*W*C), reshaped inside; `input_shape` defaults to
    28x28x1 (or a square image of `input_dim` pixels, which is what a scenario passes), so
    the same builder serves MNIST and 8x8 digits. Returns logits.
    """
    h, w, c = _input_shape(input_shape, input_dim)
    if len(channels) != 2:
        raise ValueError(f"cnn: channels must name the two conv blocks' widths, got {channels}")
    rng = np.random.default_rng(seed)
    layers: list = [Reshape(h, w, c)]
    for width in channels:
        # max pooling commutes with the monotone ReLU: pooling first runs ReLU (forward and
        # backward) on a quarter of the activations; the function computed is the same
        layers += [Conv2d(c, width, 3, padding=1, rng=rng), MaxPool2d(2), ReLU(inplace=True)]
        h, w, c = conv_output_size(h, 2, 2, 0), conv_output_size(w, 2, 2, 0), width
        if h < 1 or w < 1:
            raise ValueError(f"cnn: input_shape {_input_shape(input_shape, input_dim)} is too "
                             f"small for two 2x2 poolings")
    layers += [Flatten(), Dense(h * w * c, hidden, rng=rng), ReLU(inplace=True),
               Dense(hidden, num_classes, init="glorot", rng=rng)]
    model = Sequential(*layers)
    model.flatten_parameters()
    return model
