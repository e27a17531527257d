"""Model zoo: `build_model(name, **kwargs)` over the names in `MODELS`."""

from .cnn import cnn
from .lstm import LanguageModel, lstm
from .mlp import logreg, mlp
from .registry import MODELS, build_model, register_model

__all__ = ["MODELS", "LanguageModel", "build_model", "cnn", "logreg", "lstm", "mlp",
           "register_model"]
