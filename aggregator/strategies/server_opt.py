"""Server optimizers: how the aggregate moves the global model.

Each takes the current global vector and the aggregate of the clients' vectors and returns the
next global vector. The pseudo-gradient is ``global - aggregate``.
"""

from __future__ import annotations

import numpy as np


class PlainStep:
    """FedAvg's server step: the aggregate becomes the new global model."""

    def step(self, global_vector: np.ndarray, aggregate: np.ndarray) -> np.ndarray:
        """Return the next global vector."""
        return aggregate.astype(np.float32, copy=False)
