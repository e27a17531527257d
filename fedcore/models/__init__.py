"""Model zoo: `build_model(name, **kwargs)` over the names in `MODELS`."""

from .cnn import cnn
from .gpt import TinyGPT, tiny_gpt
from .lstm import LanguageModel, lstm
from .mlp import logreg, mlp
from .mobilenet import mobilenet
from .onnx import from_onnx
from .registry import MODELS, build_model, register_model

__all__ = ["MODELS", "LanguageModel", "TinyGPT", "build_model", "cnn", "from_onnx", "logreg",
           "lstm", "mlp", "mobilenet", "register_model", "tiny_gpt"]
