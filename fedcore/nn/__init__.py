"""Neural-network building blocks on the fedcore engine."""

from .activation import GELU, Dropout, Sigmoid, Softmax, Tanh
from .buffers import Buffer, get_state, named_buffers, set_state, state_size
from .conv import AvgPool2d, Conv2d, MaxPool2d
from .layers import Dense, Flatten, ReLU, Reshape, Sequential
from .module import Module, Parameter
from .norm import BatchNorm, LayerNorm
from .recurrent import GRU, LSTM, Embedding

__all__ = [
    "GELU", "GRU", "LSTM", "AvgPool2d", "BatchNorm", "Buffer", "Conv2d", "Dense", "Dropout",
    "Embedding", "Flatten", "LayerNorm", "MaxPool2d", "Module", "Parameter", "ReLU", "Reshape",
    "Sequential", "Sigmoid", "Softmax", "Tanh", "get_state", "named_buffers", "set_state",
    "state_size",
]
