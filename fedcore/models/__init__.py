"""Model zoo: `build_model(name, **kwargs)` over the names in `MODELS`."""

from .mlp import logreg, mlp
from .registry import MODELS, build_model, register_model

__all__ = ["MODELS", "build_model", "logreg", "mlp", "register_model"]
