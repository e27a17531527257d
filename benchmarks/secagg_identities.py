"""What the checks against a malicious server cost: one SecAgg+ round with and without
identities (signed keys, certificates, the consistency check), driven directly.

    python -m benchmarks.secagg_identities --clients 100 --size 100000

Prints the server's and the mean client's seconds and bytes sent for both, and their ratios.
The first round of a run pays the certificate checks (each is verified once per process and
then cached); the identity generation of the simulated CA is outside the timings.
"""

from __future__ import annotations

import argparse

import numpy as np

from aggregator.secagg import SecAggConfig
from aggregator.secagg.keybook import Identities
from fedcore.secagg.identity import SimulatedAuthority
from simulations.secagg_direct import BASE, run_direct


def one_round(clients: int, size: int, authority: SimulatedAuthority | None) -> dict:
    """Costs of one round among ``clients`` (10 % drop before masking), through the round's
    own collector and the clients' stage handlers."""
    identities = Identities(authority.authority()) if authority is not None else None
    settings = SecAggConfig(max_weight=16, identities=identities)
    credentials = None
    if authority is not None:
        def credentials(context):  # noqa: ANN001, ANN202 - a ClientApp's callback
            return authority.credentials(context.node_id - BASE)
    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, size).astype(np.float32)

    def update_of(i: int):
        return base * ((i % 7) + 1) / 8, 1 + i % 16, 0.5

    dropped = set(range(0, clients, 10))
    outcome = run_direct(clients, size, update_of, settings, {"masked": dropped},
                         credentials=credentials)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.result is not None
    return {
        "server_s": outcome.server_seconds,
        "client_s": float(outcome.client_seconds.mean()),
        "client_bytes": float(outcome.client_bytes.mean()),
        "total": outcome.result.mean_update,
    }


def main(argv: list[str] | None = None) -> None:
    """Run both kinds of round and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--size", type=int, default=100_000)
    args = parser.parse_args(argv)
    authority = SimulatedAuthority.create()
    for i in range(args.clients):  # identities exist before the round, as on devices
        authority.identity(i)
    plain = one_round(args.clients, args.size, None)
    checked = one_round(args.clients, args.size, authority)
    same = plain["total"].tobytes() == checked["total"].tobytes()
    print(f"{args.clients} clients, {args.size:,} parameters; sums bit-identical: {same}")
    print(f"{'':24}{'without':>12}{'with':>12}{'ratio':>8}")
    for key, label in (("server_s", "server seconds"), ("client_s", "client seconds (mean)"),
                       ("client_bytes", "client bytes sent")):
        a, b = plain[key], checked[key]
        print(f"{label:24}{a:12.4g}{b:12.4g}{b / a:8.3f}")


if __name__ == "__main__":
    main()
