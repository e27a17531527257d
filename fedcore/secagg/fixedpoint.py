"""Fixed-point encoding of weighted float updates into Z_2^32, and decoding of their sum.

What a client sends (before masking) for update ``x`` (d floats: new local parameters minus
the global ones), ``num_examples`` and its mean training loss::

    w_q   = clamp(round(min(num_examples, max_weight) / max_weight * 2^f), 1, 2^f)
    y[i]  = round(clip(x[i], -clip, clip) * w_q)          i < d
    y[d]  = w_q                                          (the weight, summed securely)
    y[d+1]= round(clip(loss, 0, clip) * w_q)             (training loss, summed securely)

each as a two's-complement 32-bit integer. So the weights by number of examples never travel
in the clear: the server learns only sum(w_q) with the sum, and the weighted mean is
``sum(y[:d]) / sum(y[d])``.

**Range.** With n participants and c = max(clip, 1), f is the largest integer with
n * (c * 2^f + 1) <= 2^31 - 1, so the signed sum of n clients cannot wrap around: decoding it
as int32 is exact. Updates beyond +-clip are clipped (a client-side bound, like DP clipping);
weights above ``max_weight`` examples are capped; the reported loss is capped at ``clip``.

**Error.** Rounding costs each client at most 1/2 unit per coordinate, so the decoded weighted
mean differs from the exact weighted mean (with the quantised weights w_q) by at most
``n / (2 * sum(w_q))`` per coordinate, which ``error_bound`` returns. With every client at
``max_weight`` that is 2^-(f+1): e.g. n = 10, clip = 8 gives f = 24 (3e-8); n = 1000 gives
f = 18 (1.9e-6). Quantising the weights perturbs each by at most 2^-(f+1) * max_weight
examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT32_MAX = 2**31 - 1
TAIL = 2  # coordinates after the update: weight, weighted loss


@dataclass(frozen=True)
class FixedPoint:
    """The encoding every participant of a round uses (announced by the server)."""

    clip: float
    frac_bits: int
    max_weight: float

    @classmethod
    def for_round(cls, num_clients: int, clip: float, max_weight: float) -> FixedPoint:
        """The finest encoding whose sum over ``num_clients`` cannot overflow."""
        if num_clients < 1 or clip <= 0 or max_weight <= 0:
            raise ValueError("need num_clients >= 1, clip > 0 and max_weight > 0")
        c = max(clip, 1.0)
        f = 30
        while f > 0 and num_clients * (c * 2.0**f + 1) > INT32_MAX:
            f -= 1
        if f < 1:
            raise ValueError(f"{num_clients} clients x clip {clip} leave no fractional bits")
        return cls(float(clip), f, float(max_weight))

    @property
    def scale(self) -> float:
        """2^frac_bits: one unit of the encoding is 1/scale."""
        return float(2**self.frac_bits)

    def weight_units(self, num_examples: float) -> int:
        """The quantised weight w_q of a client with ``num_examples`` examples (>= 1 unit)."""
        if not num_examples > 0:
            raise ValueError(f"a client needs a positive weight, got {num_examples}")
        share = min(float(num_examples), self.max_weight) / self.max_weight
        return int(min(max(round(share * self.scale), 1), 2**self.frac_bits))

    def encode(self, update: np.ndarray, num_examples: float, loss: float) -> np.ndarray:
        """Encode one client's update, weight and loss as ``d + TAIL`` uint32 words."""
        x = np.asarray(update)
        if x.ndim != 1:
            raise ValueError(f"update must be a flat vector, got shape {x.shape}")
        if not np.isfinite(x).all() or not np.isfinite(loss):
            raise ValueError("update or loss is not finite; refusing to encode it")
        w_q = self.weight_units(num_examples)
        out = np.empty(x.size + TAIL, dtype=np.int32)
        scaled = np.clip(x, -self.clip, self.clip, dtype=np.float64) * w_q
        np.rint(scaled, out=scaled)
        out[: x.size] = scaled
        out[x.size] = w_q
        out[x.size + 1] = round(min(max(float(loss), 0.0), self.clip) * w_q)
        return out.view(np.uint32)

    def decode_sum(self, total: np.ndarray) -> tuple[np.ndarray, float, float]:
        """From the unmasked sum: (weighted mean update, sum of weights in examples, mean loss).

        Raises ``ValueError`` if the weight sum is not positive (nothing was summed).
        """
        signed = np.asarray(total, dtype=np.uint32).view(np.int32)
        weight = float(signed[-TAIL])
        if weight <= 0:
            raise ValueError(f"decoded weight sum is {weight}; the sum is not a valid aggregate")
        mean = signed[:-TAIL].astype(np.float64) / weight
        loss = float(signed[-TAIL + 1]) / weight
        return mean, weight / self.scale * self.max_weight, loss

    def error_bound(self, num_clients: int, weight_units: float) -> float:
        """Largest rounding error of a decoded mean coordinate (sum of ``weight_units``)."""
        return num_clients / (2.0 * weight_units)
