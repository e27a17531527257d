"""A strategy = an aggregation rule x a server optimizer x wrappers, looked up by name.

Each named strategy below is a few lines of composition; its options (hyperparameters) come
from a scenario's ``[federation.strategy_options]`` and are checked against the defaults
listed with it. Every strategy also has the validation wrapper (``max_norm_factor``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.backend import Backend, select_backend
from aggregator.strategies.privacy import DifferentialPrivacy
from aggregator.strategies.protocols import RuleFactory, ServerOptimizer, SummableRule
from aggregator.strategies.robust import Bulyan, CoordinateMedian, MultiKrum, TrimmedMean
from aggregator.strategies.rules import AggregationError, QFedAvg, WeightedMean
from aggregator.strategies.server_opt import AdaptiveStep, MomentumStep, PlainStep
from aggregator.updates import ClientUpdate, NormGuard, Rejected, check_model, delta_norm
from fedcore.resolve import Registry, ResolveError

# The norm guard refuses an update more than max_norm_factor x the median of recent accepted
# norms (aggregator.updates.NormGuard). Honest runs of the shipped scenarios, 100 rounds each,
# reached at most 13.1 x (quickstart; phones_label_skew 7.8, the synthetic examples 1.8): 10
# refused honest clients, 30 leaves a margin and still stops a 20x-scaled update of a client
# whose honest norm is typical.
COMMON_OPTIONS: dict[str, Any] = {"max_norm_factor": 30.0}
FLOWER_COMMON: dict[str, Any] = {"max_norm_factor": 0.0}  # Flower validates no norms


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may depend on besides its options."""

    num_clients: int = 10
    clients_per_round: int = 10
    seed: int = 0
    backend: Backend | None = None


@dataclass
class Strategy:
    """How one round's accepted updates become the next global model."""

    name: str
    make_rule: RuleFactory
    server_opt: ServerOptimizer = field(default_factory=PlainStep)
    backend: Backend = field(default_factory=select_backend)
    guard: NormGuard = field(default_factory=NormGuard)
    privacy: DifferentialPrivacy | None = None
    client_options: dict[str, Any] = field(default_factory=dict)  # sent with instructions

    def start_round(self, global_vector: np.ndarray, round_number: int) -> RoundAggregation:
        """A fresh aggregation for one round around ``global_vector`` (host, float32 or
        float64: the rule accumulates and answers in that dtype)."""
        return RoundAggregation(self, global_vector, round_number)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything that carries across rounds (server optimizer, norm history, privacy),
        as named host arrays for a checkpoint."""
        state: dict[str, np.ndarray] = {}
        for prefix, part in self._stateful_parts():
            state.update({f"{prefix}.{k}": v for k, v in part.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` saved, so a resumed run continues bit for bit."""
        for prefix, part in self._stateful_parts():
            head = prefix + "."
            part.load_state_dict(
                {k.removeprefix(head): v for k, v in state.items() if k.startswith(head)}
            )

    def _stateful_parts(self) -> list[tuple[str, Any]]:
        parts = [("opt", self.server_opt), ("guard", self.guard), ("dp", self.privacy)]
        return [(p, part) for p, part in parts if part is not None]

    @property
    def takes_sums(self) -> bool:
        """Whether a sum of the updates (SecAgg+) can stand in for them: the rule says so
        (`SummableRule`), and no wrapper needs each update (DP clips each one)."""
        rule = self.make_rule(1, self.backend)
        return isinstance(rule, SummableRule) and rule.takes_sums and self.privacy is None

    def privacy_spent(self) -> float | None:
        """Epsilon spent so far (None without differential privacy)."""
        return self.privacy.spent() if self.privacy is not None else None


class RoundAggregation:
    """One round: ``offer`` each decoded update (may raise ``Rejected``), then ``finish``."""

    def __init__(self, strategy: Strategy, global_vector: np.ndarray, round_number: int):
        self.strategy, self.round = strategy, round_number
        dtype = np.float64 if np.asarray(global_vector).dtype == np.float64 else np.float32
        self.global_host = np.ascontiguousarray(global_vector, dtype=dtype)
        backend = strategy.backend
        self.global_b = backend.asarray(self.global_host)
        self.rule = strategy.make_rule(self.global_host.size, backend)
        self.rule.bind_global(self.global_host)

    def offer(self, update: ClientUpdate, limit: float | None = None) -> None:
        """Validate the update's norm, clip it if private, fold it into the rule."""
        norm = delta_norm(update, self.global_host) if math.isnan(update.norm) else update.norm
        self.strategy.guard.check(norm, limit)
        privacy = self.strategy.privacy
        scale = privacy.scale(norm) if privacy is not None else 1.0
        self.rule.add(update, update.num_examples, scale)

    @property
    def one_pass(self) -> bool:
        """Norms can be taken while folding: a plain (not clipped) streaming mean on host."""
        rule, s = self.rule, self.strategy
        return (
            type(rule) is WeightedMean
            and s.privacy is None
            and s.backend.name == "numpy"
            and self.global_host.dtype == np.float32
        )

    def offer_all(self, updates: list[ClientUpdate]) -> list[str | None]:
        """Fold a round's updates in order and judge their norms (``NormGuard.judge``);
        return each update's rejection reason or None.

        With `one_pass`, each update is read once: its norm is taken while it is folded, and
        in the rare round where one is refused the round is folded again without it (from
        the updates, which are still in memory), so the result is exactly as if it had never
        been offered. Otherwise norms are taken first, then the good updates folded."""
        if not self.one_pass:
            return self._measure_then_fold(updates)
        norms = [self.rule.add_measured(u, u.num_examples, self.global_host) for u in updates]
        reasons = self.strategy.guard.judge(norms)
        if any(r is not None for r in reasons):  # rare: fold again without the refused
            self.rule = self.strategy.make_rule(self.global_host.size, self.strategy.backend)
            self.rule.bind_global(self.global_host)
            for update, reason in zip(updates, reasons, strict=True):
                if reason is None:
                    self.rule.add(update, update.num_examples)
        return reasons

    def _measure_then_fold(self, updates: list[ClientUpdate]) -> list[str | None]:
        reasons: list[str | None] = []
        for update in updates:
            try:
                delta_norm(update, self.global_host)
                reasons.append(None)
            except Rejected as exc:
                reasons.append(str(exc))
        norms = [u.norm for u, r in zip(updates, reasons, strict=True) if r is None]
        limit = self.strategy.guard.limit(norms)
        for i, update in enumerate(updates):
            if reasons[i] is None:
                try:
                    self.offer(update, limit)
                except Rejected as exc:
                    reasons[i] = str(exc)
        return reasons

    def offer_sum(self, mean_update: np.ndarray, weight: float) -> None:
        """Take a secure sum in place of the updates: ``mean_update`` is the example-weighted
        mean of ``local - global`` (host), ``weight`` the examples behind it."""
        if not (isinstance(self.rule, SummableRule) and self.rule.takes_sums):
            raise AggregationError(f"strategy {self.strategy.name!r} cannot take a sum")
        with np.errstate(over="ignore", invalid="ignore"):
            local = (self.global_host.astype(np.float64) + mean_update).astype(
                self.global_host.dtype
            )
        self.rule.add_sum(self.strategy.backend.asarray(local), weight)

    def finish(self) -> np.ndarray:
        """The next global model (host, in the dtype of the round's model); ``AggregationError``
        if it is not finite (then nothing carries over: the caller keeps the previous model)."""
        s = self.strategy
        aggregate = self.rule.result(self.global_b)
        if s.privacy is not None:
            aggregate = s.privacy.finish(aggregate, s.backend)
        with np.errstate(over="ignore", invalid="ignore"):
            new = s.server_opt.step(self.global_b, aggregate, self.round)
            host = np.asarray(s.backend.to_numpy(new), dtype=self.global_host.dtype)
        try:
            check_model(host)
        except Rejected as exc:
            raise AggregationError(str(exc)) from None
        return host


Builder = Callable[[dict[str, Any], StrategyContext], Strategy]
OptionValue = bool | int | float | str


@dataclass(frozen=True)
class StrategySpec:
    """A named strategy: its option defaults and how to compose it.

    ``flower`` names Flower's strategy of the same rule (None: Flower has none) and
    ``flower_defaults`` the options whose Flower default differs from ours, with Flower's
    value: ``FlowerStrategy`` builds with those unless the user sets them.
    """

    defaults: dict[str, Any]
    build: Builder
    doc: str
    flower: str | None = None
    flower_defaults: dict[str, Any] = field(default_factory=dict)


#: strategies by name: built-ins, ones registered later (``register``), the installed
#: ``fedcore.strategies`` entry points; ``package.module:make`` references resolve too
STRATEGIES: Registry[StrategySpec | Callable[..., Strategy]] = Registry(
    "fedcore.strategies", "strategy"
)


def register(
    name: str,
    defaults: dict[str, Any],
    doc: str,
    flower: str | None = None,
    flower_defaults: dict[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(options, context) -> Strategy`` under ``name``, with option
    ``defaults`` (numbers, strings or booleans; every strategy also has ``max_norm_factor``);
    ``flower``: the name of Flower's strategy of the same rule, ``flower_defaults``: Flower's
    defaults where they differ from ours."""

    def wrap(build: Builder) -> Builder:
        spec = StrategySpec(
            {**COMMON_OPTIONS, **defaults}, build, doc, flower, dict(flower_defaults or {})
        )
        STRATEGIES.register(name, spec)
        return build

    return wrap


def flower_options(name: str) -> dict[str, Any]:
    """The options that give strategy ``name`` Flower's defaults: the norm guard off (Flower
    has none) and Flower's value of every option whose default differs from ours."""
    try:
        spec = strategy_spec(name)
    except ResolveError as exc:
        raise ValueError(str(exc)) from None
    return {**FLOWER_COMMON, **spec.flower_defaults}


def known_strategies() -> tuple[str, ...]:
    """Names accepted by ``build_strategy`` now (besides ``package.module:make``)."""
    return STRATEGIES.names()


def strategy_spec(name: str, *, allow_import: bool = True) -> StrategySpec:
    """The spec ``name`` resolves to. A plain callable ``make(option=default, ...,
    context=None) -> Strategy`` (a reference or an entry point) becomes a spec whose options
    are its keyword parameters; ``ResolveError`` (one line) if it names nothing usable."""
    found = STRATEGIES.get(name, allow_import=allow_import)
    if isinstance(found, StrategySpec):
        return found
    if not callable(found):
        raise ResolveError(f"strategy {name!r} is a {type(found).__name__}, not a callable")
    try:
        params = inspect.signature(found).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    defaults: dict[str, Any] = {}
    for key, param in params.items():
        if key == "context" or param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if param.default is inspect.Parameter.empty or not isinstance(
            param.default, OptionValue
        ):
            raise ResolveError(
                f"strategy {name!r}: parameter {key!r} needs a default number, string or boolean"
            )
        defaults[key] = param.default
    takes_context = "context" in params

    def build(options: dict[str, Any], context: StrategyContext) -> Strategy:
        kwargs = {k: options[k] for k in defaults}
        return found(**kwargs, context=context) if takes_context else found(**kwargs)

    return StrategySpec({**COMMON_OPTIONS, **defaults}, build, found.__doc__ or "")


def strategy_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``options`` checked against strategy ``name`` and completed with its defaults."""
    try:
        defaults = strategy_spec(name).defaults
    except ResolveError as exc:
        raise ValueError(str(exc)) from None
    merged = dict(defaults)
    for key, value in (options or {}).items():
        if key not in defaults:
            raise ValueError(
                f"unknown option {key!r} for strategy {name!r} (allowed: {', '.join(defaults)})"
            )
        merged[key] = _option_value(key, value, defaults[key])
    return merged


def _option_value(key: str, value: Any, default: Any) -> Any:
    """``value`` in the type of ``default`` (an int where a float is expected is fine)."""
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            kind = "true or false" if isinstance(default, bool) else "a string"
            raise ValueError(f"option {key!r} must be {kind}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"option {key!r} must be a number, got {value!r}")
    if isinstance(default, int) and not isinstance(value, int):
        raise ValueError(f"option {key!r} must be an integer, got {value!r}")
    return type(default)(value)


def build_strategy(
    name: str, options: dict[str, Any] | None = None, context: StrategyContext | None = None
) -> Strategy:
    """A fresh strategy by name or ``package.module:make``; bad names, options or a maker
    that returns no ``Strategy`` raise ``ValueError`` (one line)."""
    merged = strategy_options(name, options)
    context = context or StrategyContext()
    strategy = strategy_spec(name).build(merged, context)
    if not isinstance(strategy, Strategy):
        raise ResolveError(
            f"strategy {name!r} returned a {type(strategy).__name__}, not an "
            "aggregator.strategies.Strategy"
        )
    strategy.name = name
    strategy.guard = NormGuard(merged["max_norm_factor"])
    strategy.backend = context.backend or strategy.backend
    return strategy


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


@register(
    "dpfedavg",
    {**_DP, "clipping_norm": 1.0},
    "central DP, fixed clipping",
    "DifferentialPrivacyServerSideFixedClipping",
)
def _dpfedavg(o: dict[str, Any], c: StrategyContext) -> Strategy:
    privacy = DifferentialPrivacy(
        o["noise_multiplier"],
        o["clipping_norm"],
        c.clients_per_round,
        c.num_clients,
        o["target_delta"],
    )
    return Strategy("dpfedavg", lambda n, b: WeightedMean(n, b, uniform=True), privacy=privacy)


@register(
    "dpfedavg-adaptive",
    {
        **_DP,
        "noise_multiplier": 0.1,
        "initial_clipping_norm": 0.1,
        "target_quantile": 0.5,
        "clip_lr": 0.2,
    },
    "central DP, adaptive clipping (Andrew et al., 2021)",
    "DifferentialPrivacyServerSideAdaptiveClipping",
)
def _dpfedavg_adaptive(o: dict[str, Any], c: StrategyContext) -> Strategy:
    privacy = DifferentialPrivacy(
        o["noise_multiplier"],
        o["initial_clipping_norm"],
        c.clients_per_round,
        c.num_clients,
        o["target_delta"],
        adaptive=True,
        target_quantile=o["target_quantile"],
        clip_lr=o["clip_lr"],
    )
    return Strategy(
        "dpfedavg-adaptive", lambda n, b: WeightedMean(n, b, uniform=True), privacy=privacy
    )
