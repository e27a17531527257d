"""Neural-network building blocks on the fedcore engine."""

from .activation import GELU, Dropout, Sigmoid, Softmax, Tanh
from .attention import MultiHeadAttention
from .buffers import Buffer, get_state, named_buffers, set_state, state_size
from .conv import (
    AvgPool2d,
    Conv2d,
    DepthwiseConv2d,
    GlobalAvgPool2d,
    MaxPool2d,
    PointwiseConv2d,
)
from .layers import Dense, Flatten, ReLU, Reshape, Sequential
from .module import Module, Parameter
from .norm import BatchNorm, LayerNorm, RMSNorm
from .recurrent import GRU, LSTM, Embedding
from .transformer import DecoderBlock, SwiGLU, TiedHead

__all__ = [
    "GELU", "GRU", "LSTM", "AvgPool2d", "BatchNorm", "Buffer", "Conv2d", "DecoderBlock", "Dense",
    "DepthwiseConv2d", "Dropout", "Embedding", "Flatten", "GlobalAvgPool2d", "LayerNorm",
    "MaxPool2d", "Module", "MultiHeadAttention", "Parameter", "PointwiseConv2d", "RMSNorm",
    "ReLU", "Reshape", "Sequential", "Sigmoid", "Softmax", "SwiGLU", "Tanh", "TiedHead",
    "get_state", "named_buffers", "set_state", "state_size",
]
