"""Averaging throughput: fedcore's streaming mean vs Flower's ``aggregate_arrayrecords``.

``python -m benchmarks.aggregate [--updates 100] [--size 1000000] [--device auto]``

100 updates of 1M float32 parameters, each a Flower reply message (``ArrayRecord`` +
``MetricRecord``), are averaged by
- Flower's ``aggregate_arrayrecords`` (``Array.numpy()`` copies, float32 products),
- fedcore's streaming ``WeightedMean`` reading each message's bytes in place (decode + fused
  multiply-add into one float32 accumulator), with and without update validation (NaN/inf
  and the robust norm threshold; the norm is taken in the same pass as the fold,
  ``RoundAggregation.offer_all``: one compiled loop a block, ``aggregator.fold_kernel``, and
  for comparison the numpy path that folds where numba is missing), each on one thread and on
  two (``select_backend(threads=2)``, as ``$FEDCORE_AGG_THREADS=2`` sets: BLAS threads for the
  plain mean, two fold threads with validation, ``aggregator.fold``),
and compared with the machine's read bandwidth measured in the same run: a plain float32 sum
over the same message bytes, on one thread. Rows run interleaved ``--repeat`` times: the best
of each row, and the median over the repeats of each run's ratio to the read pass of the same
repeat (steadier on a busy machine); the last line sums up those medians. The peak extra
memory of the server is traced with ``tracemalloc`` (numpy reports its buffers to it) in
separate runs.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from unittest.mock import patch

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.task_identity import TaskIdentity

from aggregator import fold
from aggregator.backend import Backend, select_backend
from aggregator.decode import decode_reply
from aggregator.strategies import StrategyContext, WeightedMean, build_strategy
from fedcore import protocol
from fedcore.wire import read_vector, vector_record

READ = "read bandwidth (float32 sum)"


def make_replies(updates: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[Message]]:
    """The global vector and ``updates`` train replies around it."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(size, dtype=np.float32)
    replies = []
    for k in range(updates):
        vector = center + np.float32(0.01) * rng.standard_normal(size, dtype=np.float32)
        metrics = MetricRecord({"num_examples": 10 + k % 7, "train_loss": 1.0, "seconds": 0.0})
        content = RecordDict({protocol.UPDATE: vector_record(vector), protocol.METRICS: metrics})
        replies.append(Message(content, k + 1, "train"))
    return center, replies


def wall_seconds(fn: Callable[[], object]) -> float:
    """Seconds one run of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by ``fn`` beyond what existed when it started."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print a table, return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu")
    args = parser.parse_args(argv)
    backend = select_backend(args.device)
    center, replies = make_replies(args.updates, args.size)
    nbytes = args.updates * args.size * 4
    records = [m.content for m in replies]
    views = [read_vector(m.content.array_records[protocol.UPDATE]) for m in replies]

    def read_sum() -> None:
        for v in views:
            np.add.reduce(v)

    def flower() -> None:
        aggregate_arrayrecords(records, "num_examples")

    def streaming() -> np.ndarray:
        mean = WeightedMean(args.size, backend)
        for message in replies:  # one by one, as they arrive
            update = decode_reply(message, args.size)
            mean.add(update, update.num_examples)
        return backend.to_numpy(mean.result(backend.asarray(center)))

    threaded = select_backend(args.device, threads=2)

    def streaming_2() -> np.ndarray:
        mean = WeightedMean(args.size, threaded)
        for message in replies:
            update = decode_reply(message, args.size)
            mean.add(update, update.num_examples)
        return threaded.to_numpy(mean.result(threaded.asarray(center)))

    def validated_on(on: Backend) -> Callable[[], np.ndarray]:
        def validated() -> np.ndarray:  # as a round does: decode each reply, fold and judge
            strategy = build_strategy("fedavg", None, StrategyContext(backend=on))
            strategy.guard.norms.extend([0.01 * np.sqrt(args.size)] * 3)  # not the first round
            aggregation = strategy.start_round(center, 2)
            reasons = aggregation.offer_all([decode_reply(m, args.size) for m in replies])
            assert not any(reasons), reasons
            return aggregation.finish()

        return validated

    validated, validated_2 = validated_on(backend), validated_on(threaded)

    def validated_numpy() -> np.ndarray:  # the same fold where numba is missing
        with patch.object(fold, "compiled_kernel", lambda: None):
            return validated()

    def validated_two_pass() -> np.ndarray:  # the norm read first, then the fold (``offer``)
        strategy = build_strategy("fedavg", None, StrategyContext(backend=backend))
        strategy.guard.norms.extend([0.01 * np.sqrt(args.size)] * 3)
        aggregation = strategy.start_round(center, 2)
        for message in replies:
            aggregation.offer(decode_reply(message, args.size))
        return aggregation.finish()

    expected = aggregate_arrayrecords(records, "num_examples")["vector"].numpy()
    np.testing.assert_allclose(streaming(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(validated(), expected, rtol=1e-5, atol=1e-5)  # compiles once
    np.testing.assert_allclose(validated_numpy(), expected, rtol=1e-5, atol=1e-5)

    rows = {
        READ: read_sum,
        "flower aggregate_arrayrecords": flower,
        "fedcore streaming mean": streaming,
        "fedcore mean + validation": validated,
        "  (numpy fold, without numba)": validated_numpy,
        "  (validation in two passes)": validated_two_pass,
        "fedcore streaming, 2 threads": streaming_2,
        "fedcore mean + validation, 2 thr": validated_2,
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeat):  # interleaved, so a busy moment hurts every row alike
        for name, fn in rows.items():
            times[name].append(wall_seconds(fn))
    figures = {name: nbytes / min(seconds) / 1e9 for name, seconds in times.items()}
    # each run against the read pass of the same round of runs, then the median: steadier than
    # the best on a busy machine
    ratios = {
        name: float(np.median([r / t for r, t in zip(times[READ], ts, strict=True)]))
        for name, ts in times.items()
    }
    if backend.name == "cupy":  # pragma: no cover - needs a GPU
        import cupy

        def h2d() -> None:
            for v in views:
                cupy.asarray(v)
            cupy.cuda.Device().synchronize()

        figures["host-to-device copy"] = nbytes / min(wall_seconds(h2d) for _ in rows) / 1e9
    memory = {
        "flower aggregate_arrayrecords": peak_extra_bytes(flower),
        "fedcore streaming mean": peak_extra_bytes(streaming),
        "fedcore mean + validation": peak_extra_bytes(validated),
    }
    read, fl = figures[READ], figures["flower aggregate_arrayrecords"]
    print(
        f"{args.updates} updates x {args.size:,} float32 ({nbytes / 1e9:.2f} GB), "
        f"backend {backend.name}, {args.repeat} interleaved runs"
    )
    print(
        f"{'':32} {'GB/s':>7} {'x flower':>9} {'x read bw':>10} {'x read bw':>10} "
        f"{'peak extra MB':>14}"
    )
    print(f"{'':32} {'(best)':>7} {'(best)':>9} {'(best)':>10} {'(median)':>10}")
    for name, gbps in figures.items():
        mb = f"{memory[name] / 1e6:14.1f}" if name in memory else ""
        median = f"{ratios[name]:10.2f}" if name in ratios else f"{'':10}"
        print(f"{name:32} {gbps:7.2f} {gbps / fl:9.2f} {gbps / read:10.2f} {median} {mb}")
    print(
        "x read bandwidth (median), 1 thread / 2 threads: "
        f"mean {ratios['fedcore streaming mean']:.2f} / "
        f"{ratios['fedcore streaming, 2 threads']:.2f}, "
        f"mean + validation {ratios['fedcore mean + validation']:.2f} / "
        f"{ratios['fedcore mean + validation, 2 thr']:.2f}"
    )
    if "host-to-device copy" in figures:  # pragma: no cover - needs a GPU
        h2d_bw = figures["host-to-device copy"]
        print(
            f"streaming mean / host-to-device copy: "
            f"{figures['fedcore streaming mean'] / h2d_bw:.2f}"
        )
    print(f"(model size {args.size * 4 / 1e6:.1f} MB; the streaming mean's state is one model)")
    return figures


if __name__ == "__main__":
    main()
