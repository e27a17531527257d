"""``benchmarks.secagg``: its in-process part runs whole plain and secure rounds."""

from benchmarks.secagg import added, part_fedcore_inprocess


def test_inprocess_part_runs_plain_and_secure_rounds():
    # the toy clients declare the examples they train on: every round's updates are accepted
    result = part_fedcore_inprocess(clients=3, size=64, rounds=2)
    assert len(result["plain"]) == len(result["secagg"]) == 2
    assert all(s is not None and s >= 0 for s in result["plain"] + result["secagg"])
    # a masked reply carries the 64 words and the weight and loss, at least 4 bytes each
    assert result["secagg_bytes_up"] >= 4 * (64 + 2)
    plain, secure, _ = added(result)
    assert plain >= 0 and secure >= 0
