"""Model export: ONNX graphs of engine models (needs the `export` extra: onnx, onnxruntime)."""

from .graph import register_converter, supported_layers
from .onnx import MIN_OPSET, export_onnx, to_onnx

__all__ = ["MIN_OPSET", "export_onnx", "register_converter", "supported_layers", "to_onnx"]
