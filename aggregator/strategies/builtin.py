"""The built-in strategies: each a few lines of composition, registered by name.

The rule, server optimizer and wrapper come from ``rules.py``, ``robust.py``,
``server_opt.py`` and ``privacy.py``; the option defaults are listed with each.
"""

from __future__ import annotations

from typing import Any

from aggregator.backend import Backend
from aggregator.strategies.privacy import DifferentialPrivacy
from aggregator.strategies.registry import register
from aggregator.strategies.robust import Bulyan, CoordinateMedian, MultiKrum, TrimmedMean
from aggregator.strategies.rules import QFedAvg, WeightedMean
from aggregator.strategies.server_opt import AdaptiveStep, MomentumStep
from aggregator.strategies.strategy import Strategy, StrategyContext


def _mean(size: int, backend: Backend) -> WeightedMean:
    return WeightedMean(size, backend)


@register("fedavg", {}, "example-weighted mean (McMahan et al., 2017)", "FedAvg")
def _fedavg(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("fedavg", _mean)


@register(
    "fedprox",
    {"proximal_mu": 0.01},
    "FedAvg + the clients' proximal term (Li et al.)",
    "FedProx",
    {"proximal_mu": 0.0},
)
def _fedprox(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("fedprox", _mean, client_options={"proximal_mu": o["proximal_mu"]})


@register(
    "fedavgm",
    {"server_learning_rate": 1.0, "server_momentum": 0.9},
    "mean + momentum",
    "FedAvgM",
    {"server_momentum": 0.0},
)
def _fedavgm(o: dict[str, Any], c: StrategyContext) -> Strategy:
    opt = MomentumStep(o["server_learning_rate"], o["server_momentum"])
    return Strategy("fedavgm", _mean, opt)


def _fedopt(kind: str, eta: float, beta_2: float = 0.99) -> None:
    defaults = {"eta": eta, "beta_1": 0.9, "beta_2": beta_2, "tau": 1e-3}
    if kind == "adagrad":
        defaults = {"eta": eta, "tau": 1e-3}

    flower = {"adam": "FedAdam", "yogi": "FedYogi", "adagrad": "FedAdagrad"}[kind]

    @register(f"fed{kind}", defaults, f"mean + server {kind} (Reddi et al., 2021)", flower)
    def build(o: dict[str, Any], c: StrategyContext) -> Strategy:
        return Strategy(f"fed{kind}", _mean, AdaptiveStep(kind, **{k: o[k] for k in defaults}))


_fedopt("adam", 0.1)
_fedopt("yogi", 0.01)
_fedopt("adagrad", 0.1)


@register("fedmedian", {}, "coordinate-wise median (Yin et al., 2018)", "FedMedian")
def _fedmedian(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("fedmedian", CoordinateMedian)


@register("fedtrimmedavg", {"beta": 0.2}, "coordinate-wise trimmed mean", "FedTrimmedAvg")
def _fedtrimmedavg(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("fedtrimmedavg", lambda n, b: TrimmedMean(n, b, beta=o["beta"]))


@register("krum", {"num_malicious": 0}, "Krum (Blanchard et al., 2017)", "Krum")
def _krum(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("krum", lambda n, b: MultiKrum(n, b, o["num_malicious"], select=1))


@register(
    "multikrum", {"num_malicious": 0, "select": 1}, "Multi-Krum: mean of the best m", "MultiKrum"
)
def _multikrum(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("multikrum", lambda n, b: MultiKrum(n, b, o["num_malicious"], o["select"]))


@register("bulyan", {"num_malicious": 0}, "Bulyan (El Mhamdi et al., 2018)", "Bulyan")
def _bulyan(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("bulyan", lambda n, b: Bulyan(n, b, o["num_malicious"]))


@register(
    "qfedavg",
    {"q": 0.1, "client_learning_rate": 0.1},
    "q-FedAvg: fair (Li et al., 2020)",
    "QFedAvg",
)
def _qfedavg(o: dict[str, Any], c: StrategyContext) -> Strategy:
    return Strategy("qfedavg", lambda n, b: QFedAvg(n, b, o["q"], o["client_learning_rate"]))


_DP = {"noise_multiplier": 1.0, "target_delta": 1e-5}


def _central_dp(name: str, options: dict[str, Any], doc: str, flower: str, adaptive: bool) -> None:
    """Register a central-DP FedAvg: a uniform mean of the clipped deltas, noised and accounted
    by ``DifferentialPrivacy`` (fixed clipping, or adaptive: the norm follows a quantile)."""
    clip = "initial_clipping_norm" if adaptive else "clipping_norm"
    tuning = ("target_quantile", "clip_lr") if adaptive else ()

    @register(name, {**_DP, **options}, doc, flower)
    def build(o: dict[str, Any], c: StrategyContext) -> Strategy:
        privacy = DifferentialPrivacy(
            o["noise_multiplier"],
            o[clip],
            c.clients_per_round,
            c.num_clients,
            o["target_delta"],
            adaptive=adaptive,
            **{k: o[k] for k in tuning},
        )
        return Strategy(name, lambda n, b: WeightedMean(n, b, uniform=True), privacy=privacy)


_central_dp(
    "dpfedavg",
    {"clipping_norm": 1.0},
    "central DP, fixed clipping",
    "DifferentialPrivacyServerSideFixedClipping",
    adaptive=False,
)
_central_dp(
    "dpfedavg-adaptive",
    {"noise_multiplier": 0.1, "initial_clipping_norm": 0.1, "target_quantile": 0.5, "clip_lr": 0.2},
    "central DP, adaptive clipping (Andrew et al., 2021)",
    "DifferentialPrivacyServerSideAdaptiveClipping",
    adaptive=True,
)
