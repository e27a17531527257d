"""fedcore's training engine: versioned vars, the dependency engine, memory pool, autograd.

Importing this package registers every op and attaches Tensor's operators and methods.
"""

from .autograd import VJPS, Ctx, Node, Primitive, apply, apply_inplace, defvjp
from .backprop import backward
from .deps import DependencyTracker, expected_version
from .engine import (
    ENGINES,
    ENV_VAR,
    Engine,
    NaiveEngine,
    create_engine,
    engine_from_env,
    get_engine,
    set_engine,
    use_engine,
)
from .errors import EngineError, MemoryBudgetError, MutationError
from .flat import FlatLayout, find_flat, flatten_tensors
from .losses import log_softmax, mse, softmax_cross_entropy
from .ops import (
    add,
    add_,
    flatten,
    linear,
    matmul,
    matmul_nt,
    mean,
    mul,
    mul_,
    neg,
    relu,
    relu_,
    reshape,
    sub,
    sum,
    tensor,
    unbroadcast,
)
from .pool import MemoryPool
from .tensor import Tensor, default_float, enable_grad, float64_mode, is_grad_enabled, no_grad
from .var import Var

__all__ = [
    "ENGINES", "ENV_VAR", "VJPS", "Ctx", "DependencyTracker", "Engine", "EngineError",
    "FlatLayout", "MemoryBudgetError", "MemoryPool", "MutationError", "NaiveEngine", "Node",
    "Primitive", "Tensor", "Var", "add", "add_", "apply", "apply_inplace", "backward",
    "create_engine", "defvjp", "enable_grad", "engine_from_env", "expected_version",
    "find_flat", "flatten", "flatten_tensors", "get_engine", "is_grad_enabled", "linear",
    "log_softmax", "matmul", "matmul_nt", "mean", "mse", "mul", "mul_", "neg", "no_grad", "relu",
    "relu_", "reshape", "set_engine", "softmax_cross_entropy", "sub", "sum", "tensor",
    "unbroadcast", "use_engine",
]

# -- layer ops (conv, pooling, activations, normalisation, embedding, recurrent, attention) -
from .attention import attention, rope  # noqa: E402
from .checkpoint import checkpoint  # noqa: E402
from .conv import conv2d, conv_output_size  # noqa: E402
from .depthwise import depthwise_conv2d, global_avg_pool2d  # noqa: E402
from .norm import (  # noqa: E402
    batch_moments,
    batch_moments_centred,
    batch_norm,
    batch_norm_apply,
    batch_norm_train,
    running_moments_update_,
)
from .ops_nn import dropout, embedding, gelu, sigmoid, silu, softmax, swiglu, tanh  # noqa: E402
from .pooling import avg_pool2d, max_pool2d  # noqa: E402
from .rnn import gru, lstm  # noqa: E402
from .rownorm import layer_norm, rms_norm  # noqa: E402

__all__ += [
    "attention", "avg_pool2d", "batch_moments", "batch_moments_centred", "batch_norm",
    "batch_norm_apply", "batch_norm_train", "checkpoint", "conv2d", "conv_output_size",
    "default_float", "depthwise_conv2d", "dropout", "embedding",
    "float64_mode", "gelu", "global_avg_pool2d", "gru", "layer_norm", "lstm", "max_pool2d",
    "rms_norm", "rope", "running_moments_update_", "sigmoid", "silu", "softmax", "swiglu",
    "tanh",
]
