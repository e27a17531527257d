"""Hybridize: trace one training step, plan its memory once, replay it with no allocation.

`compile_step(model, loss_fn, optimizer, budget_bytes)` (or `model.hybridize(...)`) returns a
`TrainStep`; calling it with a batch runs forward, loss, backward and the optimizer update as
one planned program over a preallocated arena (MXNet's static memory planner), recomputing
dropped activations in backward when that is what it takes to fit the budget (Chen et al.
2016). See `tracer`, `autodiff`, `program`, `planner` and `executor`.
"""

from . import loss_kernels  # noqa: F401 - registers log_softmax, cross-entropy, mse
from .executor import BoundPlan, TrainStep, compile_step
from .kernels import KERNELS, Spec, Vjp, register_kernel
from .planner import Plan, PlanBudgetError

__all__ = [
    "KERNELS", "BoundPlan", "Plan", "PlanBudgetError", "Spec", "TrainStep", "Vjp",
    "compile_step", "register_kernel",
]
