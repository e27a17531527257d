"""Central differential privacy as a wrapper around any rule: clip, average, add noise.

Each accepted update's delta to the global model is clipped to ``clipping_norm`` (fixed, or
adapted every round towards the ``target_quantile`` of the update norms, Andrew et al. 2021),
the rule averages the clipped updates with equal weights, and Gaussian noise of standard
deviation ``noise_multiplier * clipping_norm / m`` is added to the aggregate, where m is the
number of updates actually averaged (the mean's sensitivity is ``clipping_norm / m``).

The noise comes from a generator seeded from the operating system's entropy (``secrets``),
never from anything a client sees (the scenario seed is sent to every client, so noise drawn
from it could be regenerated and subtracted). Its state is saved with the server's state in
each checkpoint, so a resumed run continues with exactly the noise it would have drawn.
The privacy spent is tracked by Flower's
``RdpAccountant`` (Google's ``dp-accounting``), conservatively without amplification by
sampling; ``spent()`` gives epsilon at ``target_delta``.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.backend import Backend


@dataclass
class DifferentialPrivacy:
    """Clipping, noise and accounting for one run (state carries across rounds)."""

    noise_multiplier: float
    clipping_norm: float
    num_sampled: int
    population: int
    target_delta: float = 1e-5
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float | None = None
    _clipped: int = field(default=0, repr=False)
    _seen: int = field(default=0, repr=False)
    _releases: int = field(default=0, repr=False)
    _accountant: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")
        if self.clipping_norm <= 0:
            raise ValueError("clipping_norm must be > 0")
        self._rng = np.random.default_rng(secrets.randbits(128))  # OS entropy, server-side
        self.model_noise = self.noise_multiplier
        if self.adaptive:
            from flwr.supercore.differential_privacy import compute_adaptive_noise_params

            self.clipped_count_stddev, self.model_noise = compute_adaptive_noise_params(
                self.noise_multiplier, self.num_sampled, self.clipped_count_stddev
            )
        if self.noise_multiplier > 0:
            self._accountant = _accountant(self.target_delta, self.population)

    def scale(self, norm: float) -> float:
        """The factor that clips a delta of ``norm`` to ``clipping_norm``."""
        self._seen += 1
        if norm > self.clipping_norm:
            self._clipped += 1
            return self.clipping_norm / norm
        return 1.0

    def finish(self, aggregate: Any, backend: Backend) -> Any:
        """Add the round's Gaussian noise; adapt the clipping norm; account the release."""
        averaged = self._seen or self.num_sampled  # what the rule divided by
        std = self.model_noise * self.clipping_norm / averaged
        if std > 0:
            size = int(aggregate.shape[0])
            wide = aggregate.dtype == backend.xp.float64
            noise = self._rng.normal(0.0, std, size).astype(np.float64 if wide else np.float32)
            aggregate = aggregate + backend.asarray(noise)
        if self.adaptive and self._seen:
            noisy = float(self._rng.normal(self._clipped, self.clipped_count_stddev or 0.0))
            fraction = noisy / self._seen
            self.clipping_norm *= math.exp(-self.clip_lr * (fraction - self.target_quantile))
        self._clipped = self._seen = 0
        self._account(1)
        return aggregate

    def _account(self, releases: int) -> None:
        self._releases += releases
        if self._accountant is not None:
            from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

            event = GaussianPrivacyEvent(self.noise_multiplier, self.num_sampled, self.population)
            for _ in range(releases):
                self._accountant.compose(event)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Clipping norm, releases so far and the noise generator's state, for checkpoints."""
        return {
            "clipping_norm": np.array([self.clipping_norm], dtype=np.float64),
            "releases": np.array([self._releases], dtype=np.int64),
            "rng": _pcg64_words(self._rng),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from a checkpoint: re-compose the releases so epsilon continues."""
        self.clipping_norm = float(state["clipping_norm"][0])
        self._rng = _pcg64_from_words(state["rng"])
        self._releases = 0
        if self._accountant is not None:
            self._accountant = _accountant(self.target_delta, self.population)
        self._account(int(state["releases"][0]))

    def spent(self) -> float | None:
        """Epsilon spent so far at ``target_delta`` (None without noise: no guarantee)."""
        if self._accountant is None:
            return None
        return float(self._accountant.get_privacy_spent().epsilon)


def _accountant(target_delta: float, population: int) -> Any:
    try:
        from flwr.supercore.privacy_accounting import (
            NeighboringRelation,
            PrivacyConfig,
            SamplingMethod,
        )
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        return RdpAccountant(
            PrivacyConfig(
                target_delta=target_delta,
                population_size=population,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
    except ImportError as exc:
        raise RuntimeError(
            "differential privacy accounting needs dp-accounting: pip install 'fedcore[dp]'"
        ) from exc


_MASK64 = (1 << 64) - 1


def _pcg64_words(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's full state as six uint64 words (safetensors holds no big ints)."""
    st = rng.bit_generator.state
    state, inc = st["state"]["state"], st["state"]["inc"]
    words = [state & _MASK64, state >> 64, inc & _MASK64, inc >> 64]
    return np.array([*words, st["has_uint32"], st["uinteger"]], dtype=np.uint64)


def _pcg64_from_words(words: np.ndarray) -> np.random.Generator:
    """Inverse of ``_pcg64_words``."""
    w = [int(x) for x in words]
    bit_generator = np.random.PCG64()
    bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": w[0] | (w[1] << 64), "inc": w[2] | (w[3] << 64)},
        "has_uint32": w[4],
        "uinteger": w[5],
    }
    return np.random.Generator(bit_generator)
