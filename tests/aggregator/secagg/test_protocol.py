"""SecAgg+ end to end without a transport: exact sums or a clean abort.

The round's own collector (``aggregator.collect.secagg``) runs the stages; the clients are
their real stage handlers, answered in-process (``simulations.secagg_direct``), so drops and
tampered replies hit exactly the code a simulated or deployed round runs.
"""

import dataclasses
import random

import numpy as np
import pytest

from aggregator.secagg import SecAggConfig
from fedcore.secagg.messages import UnmaskReply
from fedcore.secagg.params import derive_params
from simulations.secagg_direct import run_direct

STAGES = ("advertise", "share", "masked", "unmask")
CLIP, MAX_WEIGHT = 1.0, 60


def settings(**kwargs):
    return SecAggConfig(clip=CLIP, max_weight=MAX_WEIGHT, **kwargs)


def make_updates(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    examples = rng.integers(1, 60, n)
    return x, examples, lambda i: (x[i], int(examples[i]), 0.5)


def check_exact(outcome, x, examples, config):
    """The decoded mean equals the weighted mean of the clients whose masked input was
    summed, within the fixed-point encoding's bound."""
    summed = outcome.summed()
    encoding = config.encoding_for(len(x))
    w = np.array([encoding.weight_units(examples[i]) for i in summed], np.float64)
    exact = (x[summed].astype(np.float64) * w[:, None]).sum(0) / w.sum()
    bound = encoding.error_bound(len(summed), w.sum())
    assert np.abs(outcome.result.mean_update - exact).max() <= bound


def dropped(outcome):
    """Client (0-based) -> why it is not in the sum."""
    return {o.node_id - 1000: o.reason for o in outcome.outcomes if not o.accepted}


@pytest.mark.slow  # one of the suite's longest runs
def test_random_n_k_t_and_dropouts_give_the_exact_sum_or_abort():
    rng = random.Random(5)
    successes = aborts = 0
    for trial in range(40):
        n = rng.randint(3, 40)
        k = rng.choice([n - 1, rng.randint(2, n - 1)])
        params = derive_params(n, dropout=0.2, corruption=0.05, k=k)
        t = rng.randint(params.k // 2 + 1, params.k) if rng.random() < 0.5 else params.t
        config = settings(k=params.k, t=t, dropout=0.2, corruption=0.05)
        drop = {stage: set() for stage in STAGES}
        for i in range(n):
            if rng.random() < 0.15:
                drop[rng.choice(STAGES)].add(i)
        x, examples, update_of = make_updates(n, 64, trial)
        outcome = run_direct(n, 64, update_of, config, drop)
        if outcome.error is not None:  # abandoned cleanly (anything else would raise)
            aborts += 1
            continue
        successes += 1
        check_exact(outcome, x, examples, config)
        if config.params_for(n).complete:  # a complete graph succeeds iff t + 1 help unmask
            gone = set().union(*drop.values())
            assert n - len(gone) >= config.params_for(n).t + 1
    assert successes >= 15 and aborts >= 1


@pytest.mark.parametrize("stage", STAGES)
def test_dropouts_at_each_stage_within_tolerance(stage):
    n, d = 12, 300
    config = settings(k=6, t=4)  # a random 6-regular graph (t > k/2)
    x, examples, update_of = make_updates(n, d, 1)
    outcome = run_direct(n, d, update_of, config, {stage: {2, 7}})
    assert outcome.error is None
    check_exact(outcome, x, examples, config)
    if stage == "unmask":  # their masked input was summed before they vanished
        assert outcome.summed() == list(range(n))
    else:
        reasons = dropped(outcome)
        assert set(reasons) == {2, 7}
        assert all(f"dropped at stage {stage}: no reply" in r for r in reasons.values())


def test_fewer_than_t_survivors_abort_with_a_clear_error():
    n = 10
    _, _, update_of = make_updates(n, 16, 2)
    outcome = run_direct(n, 16, update_of, settings(), {"masked": {0, 1, 2}})  # complete, t = 8
    assert outcome.result is None
    assert "7 of 10 clients left, threshold t = 8" in str(outcome.error)


def test_too_few_shares_to_unmask_abort_instead_of_a_wrong_sum():
    n = 6
    _, _, update_of = make_updates(n, 16, 3)
    outcome = run_direct(n, 16, update_of, settings(k=5, t=4), {"unmask": {0, 1}})
    assert outcome.error is not None and outcome.result is None


def test_malformed_and_replayed_replies_drop_the_sender_with_a_reason():
    n, d = 10, 100
    config = settings(k=9, t=5)  # four of ten are knocked out below
    x, examples, update_of = make_updates(n, d, 4)
    old = {}

    def record(stage, i, reply):
        old[stage, i] = reply
        return reply

    run_direct(n, d, update_of, config, tamper=record)  # an earlier round

    def tamper(stage, i, reply):
        if stage == "advertise" and i == 1:
            return old["advertise", 1]  # replayed from the earlier round
        if stage == "share" and i == 2:
            return dataclasses.replace(reply, ciphertexts=reply.ciphertexts[1:])
        if stage == "masked" and i == 3:
            return dataclasses.replace(reply, masked=reply.masked[:-1])  # wrong length
        if stage == "masked" and i == 4:
            return dataclasses.replace(reply, masked=reply.masked.astype(np.int64))  # dtype
        return reply

    outcome = run_direct(n, d, update_of, config, tamper=tamper)
    assert outcome.error is None
    reasons = dropped(outcome)
    assert "session mismatch" in reasons[1]
    assert "one ciphertext per recipient" in reasons[2]
    assert "uint32[102]" in reasons[3] and "uint32[102]" in reasons[4]
    check_exact(outcome, x, examples, config)


def test_a_lying_share_holder_is_outvoted_or_the_round_aborts():
    n, d = 8, 50
    x, examples, update_of = make_updates(n, d, 5)

    def lie(stage, i, reply):
        if stage == "unmask" and i == 0 and reply.owners:
            rows = np.frombuffer(reply.shares, "<u4").copy()
            rows[0] = (rows[0] + 1) % 65537
            return UnmaskReply(reply.session, reply.owners, rows.tobytes())
        return reply

    config = settings(k=7, t=4)
    ok = run_direct(n, d, update_of, config, {"masked": {5}}, lie)
    assert ok.error is None  # 7 holders, t = 4: the windows without the liar agree
    check_exact(ok, x, examples, config)
    tight = run_direct(n, d, update_of, settings(k=7, t=7), tamper=lie)
    assert tight.error is not None and "inconsistent" in str(tight.error)


def test_each_side_is_measured():
    n, d = 6, 1000
    _, _, update_of = make_updates(n, d, 6)
    outcome = run_direct(n, d, update_of, settings(k=5, t=3), {"masked": {0}})
    assert outcome.error is None and outcome.server_seconds > 0
    assert set(outcome.stage_seconds) == {*STAGES, "result"}
    assert (outcome.client_seconds > 0).all()
    assert outcome.client_bytes[0] < 4 * d <= outcome.client_bytes[1:].min()  # 0 sent no vector


def test_a_direct_round_with_identities_sums_the_same():
    from aggregator.secagg.keybook import Identities
    from fedcore.secagg.identity import SimulatedAuthority

    authority = SimulatedAuthority.create()
    x, examples, update_of = make_updates(6, 50, 3)
    plain = run_direct(6, 50, update_of, settings(k=5, t=4), {"masked": {2}})
    checked = run_direct(
        6, 50, update_of, settings(k=5, t=4, identities=Identities(authority.authority())),
        {"masked": {2}}, credentials=lambda c: authority.credentials(c.node_id - 1000),
    )
    assert plain.error is None and checked.error is None
    assert checked.result.mean_update.tobytes() == plain.result.mean_update.tobytes()
    assert "check" in checked.stage_seconds and "check" not in plain.stage_seconds
