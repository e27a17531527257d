"""Neural-network building blocks on the fedcore engine."""

from .layers import Dense, Flatten, ReLU, Sequential
from .module import Module, Parameter

__all__ = ["Dense", "Flatten", "Module", "Parameter", "ReLU", "Sequential"]
