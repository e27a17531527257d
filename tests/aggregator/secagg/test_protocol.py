"""SecAgg+ end to end with the protocol objects (no transport): exact sums or a clean abort."""

import dataclasses
import random

import numpy as np
import pytest

from fedcore.secagg.errors import Aborted
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.messages import MaskReply, UnmaskReply
from fedcore.secagg.params import SecAggParams, derive_params
from simulations.secagg_direct import run_direct

STAGES = ("advertise", "share", "masked", "unmask")


def make_updates(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    examples = rng.integers(1, 60, n)
    return x, examples, lambda i: (x[i], int(examples[i]), 0.5)


def check_exact(outcome, x, examples, encoding):
    """The decoded mean equals the weighted mean of the clients that sent masked input."""
    summed = sorted(i - 1 for i in outcome.server.survivors["masked"])
    mean, _, _ = encoding.decode_sum(outcome.total)
    w = np.array([encoding.weight_units(examples[i]) for i in summed], np.float64)
    exact = (x[summed].astype(np.float64) * w[:, None]).sum(0) / w.sum()
    assert np.abs(mean - exact).max() <= encoding.error_bound(len(summed), w.sum())


@pytest.mark.slow  # one of the suite's longest runs
def test_random_n_k_t_and_dropouts_give_the_exact_sum_or_abort():
    rng = random.Random(5)
    successes = aborts = 0
    for trial in range(40):
        n = rng.randint(3, 40)
        k = rng.choice([n - 1, rng.randint(2, n - 1)])
        params = derive_params(n, dropout=0.2, corruption=0.05, k=k)
        if rng.random() < 0.5:
            params = SecAggParams(n, params.k, rng.randint(params.k // 2 + 1, params.k))
        drop = {stage: set() for stage in STAGES}
        for i in range(n):
            if rng.random() < 0.15:
                drop[rng.choice(STAGES)].add(i)
        x, examples, update_of = make_updates(n, 64, trial)
        encoding = FixedPoint.for_round(n, 1.0, 60)
        outcome = run_direct(n, 64, update_of, params, encoding, drop)
        if outcome.error is not None:
            assert isinstance(outcome.error, Aborted), outcome.error
            aborts += 1
            continue
        successes += 1
        check_exact(outcome, x, examples, encoding)
        if params.complete:  # a complete graph succeeds iff t + 1 clients help unmask
            assert len(outcome.server.survivors["unmask"]) >= params.t + 1
    assert successes >= 15 and aborts >= 1


@pytest.mark.parametrize("stage", STAGES)
def test_dropouts_at_each_stage_within_tolerance(stage):
    n, d = 12, 300
    params = SecAggParams(n, 6, 4)  # a random 6-regular graph (t > k/2)
    x, examples, update_of = make_updates(n, d, 1)
    encoding = FixedPoint.for_round(n, 1.0, 60)
    outcome = run_direct(n, d, update_of, params, encoding, {stage: {2, 7}})
    assert outcome.error is None
    check_exact(outcome, x, examples, encoding)
    dropped = {i - 1 for i, drop in outcome.server.dropouts.items()}
    assert dropped == {2, 7}
    assert all(d.reason == "no reply" for d in outcome.server.dropouts.values())


def test_fewer_than_t_survivors_abort_with_a_clear_error():
    n = 10
    params = derive_params(n)  # complete graph, t = 8
    _, _, update_of = make_updates(n, 16, 2)
    encoding = FixedPoint.for_round(n, 1.0, 60)
    outcome = run_direct(n, 16, update_of, params, encoding, {"masked": {0, 1, 2}})
    assert isinstance(outcome.error, Aborted)
    assert "7 of 10 clients left, threshold t = 8" in str(outcome.error)
    assert outcome.total is None


def test_too_few_shares_to_unmask_abort_instead_of_a_wrong_sum():
    n = 6
    params = SecAggParams(n, 5, 4)
    _, _, update_of = make_updates(n, 16, 3)
    encoding = FixedPoint.for_round(n, 1.0, 60)
    outcome = run_direct(n, 16, update_of, params, encoding, {"unmask": {0, 1}})
    assert isinstance(outcome.error, Aborted)


def test_malformed_and_replayed_replies_drop_the_sender_with_a_reason():
    n, d = 10, 100
    params = SecAggParams(n, 9, 5)  # four of ten are knocked out below
    x, examples, update_of = make_updates(n, d, 4)
    encoding = FixedPoint.for_round(n, 1.0, 60)
    old = {}

    def record(stage, i, reply):
        old[stage, i] = reply
        return reply

    run_direct(n, d, update_of, params, encoding, tamper=record)  # an earlier round

    def tamper(stage, i, reply):
        if stage == "advertise" and i == 1:
            return old["advertise", 1]  # replayed from the earlier round
        if stage == "share" and i == 2:
            return dataclasses.replace(reply, ciphertexts=reply.ciphertexts[1:])
        if stage == "masked" and i == 3:
            return MaskReply(reply.session, (), reply.masked[:-1])  # wrong length
        if stage == "masked" and i == 4:
            return MaskReply(reply.session, (), reply.masked.astype(np.int64))  # wrong dtype
        return reply

    outcome = run_direct(n, d, update_of, params, encoding, tamper=tamper)
    assert outcome.error is None
    reasons = {i - 1: drop.reason for i, drop in outcome.server.dropouts.items()}
    assert "session mismatch" in reasons[1]
    assert "one ciphertext per recipient" in reasons[2]
    assert "uint32[102]" in reasons[3] and "uint32[102]" in reasons[4]
    check_exact(outcome, x, examples, encoding)


def test_a_lying_share_holder_is_outvoted_or_the_round_aborts():
    n, d = 8, 50
    x, examples, update_of = make_updates(n, d, 5)
    encoding = FixedPoint.for_round(n, 1.0, 60)

    def lie(stage, i, reply):
        if stage == "unmask" and i == 0 and reply.owners:
            rows = np.frombuffer(reply.shares, "<u4").copy()
            rows[0] = (rows[0] + 1) % 65537
            return UnmaskReply(reply.session, reply.owners, rows.tobytes())
        return reply

    ok = run_direct(n, d, update_of, SecAggParams(n, 7, 4), encoding, {"masked": {5}}, lie)
    assert ok.error is None  # 7 holders, t = 4: the windows without the liar agree
    check_exact(ok, x, examples, encoding)
    tight = run_direct(n, d, update_of, SecAggParams(n, 7, 7), encoding, tamper=lie)
    assert isinstance(tight.error, Aborted) and "inconsistent" in str(tight.error)
