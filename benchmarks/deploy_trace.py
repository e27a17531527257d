"""Where a deployed round's time goes: one round's critical path from a ``fedcore.trace`` file.

``benchmarks.deploy`` runs the server and the lean agents with ``FEDCORE_TRACE`` set; this
module lines their steps up. A round (``round.start`` .. ``round.evaluated``, what the store
times) is: the server preparing the first exchange, then for each message exchange (one in a
plain round, four with SecAgg+) the push to the SuperLink, the slowest device's part (the one
whose reply the server got last: waiting for its next poll, the pull-messages call, pulling
the message's objects, decoding, the handler with its training, encoding, pushing the reply),
the server's collecting (waiting for its next pull, the pull with the reply's objects), and the
server's work between exchanges; then aggregation and server-side evaluation. The commit to the
store and the next round's start come after the round's clock stops and are shown apart. A
device without trace events (the stock SuperNode) shows its part as one ``device round trip``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

PHASES = (  # (key, what it is); in round order, the sum is the round's wall time
    ("prepare", "server: round start -> first push (select, build messages)"),
    ("push", "server: push to the SuperLink"),
    ("poll wait", "device: until its next pull-messages (poll cadence)"),
    ("pull call", "device: the pull-messages call"),
    ("objects in", "device: pull the message's objects, confirm"),
    ("decode", "device: decode the message"),
    ("handler", "device: handler (training included)"),
    ("encode", "device: encode the reply"),
    ("reply push", "device: push the reply and its objects"),
    ("device round trip", "device: pushed -> the pull that got its reply (no device trace)"),
    ("collect wait", "server: until its next pull of replies (pull cadence)"),
    ("collect pull", "server: the pull that brought the last reply (objects, decode)"),
    ("between", "server: last reply -> next push or aggregation (decode, checks)"),
    ("aggregate", "server: aggregate"),
    ("evaluate", "server: evaluation"),
)
AFTER = (("commit", "server: store commit, checkpoint (not in the round's time)"),
         ("next start", "server: commit -> next round's start (not in the round's time)"))


def _first(events: Iterable[dict[str, Any]], name: str, **match: Any) -> dict[str, Any] | None:
    for e in events:
        if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
            return e
    return None


def round_breakdown(events: Sequence[dict[str, Any]], number: int) -> dict[str, float] | None:
    """Seconds per phase of round ``number`` (``PHASES`` and ``AFTER`` keys), the round's
    seconds (``round``) and its message exchanges (``exchanges``); None if the trace lacks
    the round."""
    start = _first(events, "round.start", round=number)
    end = _first(events, "round.evaluated", round=number)
    aggregated = _first(events, "round.aggregated", round=number)
    if start is None or end is None or aggregated is None:
        return None
    inside = [e for e in events if start["t"] <= e["t"] <= end["t"]]
    phases = {key: 0.0 for key, _ in PHASES + AFTER}
    cursor = start["t"]  # where the critical path has got to

    def reach(key: str, t: float) -> None:  # the path goes on to ``t``; steps that overlap
        nonlocal cursor  # the previous one (a device pulls while objects are still pushed)
        phases[key] += max(0.0, t - cursor)  # count only their part after it
        cursor = max(cursor, t)

    before_push = "prepare"
    pushes = [e for e in inside if e["event"] == "server.push"]
    for push in pushes:
        pushed = _first((e for e in inside if e["t"] >= push["t"]), "server.pushed")
        if pushed is None:
            break
        reach(before_push, push["t"])
        reach("push", pushed["t"])
        before_push = "between"
        pulls = [e for e in inside if e["event"] == "server.pulled"
                 and e.get("message") in pushed["messages"]]  # fmt: skip
        if not pulls:  # nobody answered: the exchange timed out
            continue
        last = max(pulls, key=lambda e: e["t"])
        steps = [_first(inside, f"agent.{name}", message=last["message"])
                 for name in ("pulled", "received", "decoded", "handled", "encoded", "pushed")]
        if all(steps):
            pulled, received, decoded, handled, encoded, replied = steps
            reach("poll wait", pulled["asked"])
            reach("pull call", pulled["t"])
            reach("objects in", received["t"])
            reach("decode", decoded["t"])
            reach("handler", handled["t"])
            reach("encode", encoded["t"])
            reach("reply push", replied["t"])
        else:
            reach("device round trip", last["asked"])
        reach("collect wait", last["asked"])
        reach("collect pull", last["t"])
    reach(before_push, aggregated["t"])
    reach("evaluate", end["t"])
    committed = _first(events, "round.committed", round=number)
    if committed is not None:
        phases["commit"] = committed["t"] - end["t"]
        following = _first(events, "round.start", round=number + 1)
        if following is not None:
            phases["next start"] = following["t"] - committed["t"]
    phases["round"] = end["t"] - start["t"]
    phases["exchanges"] = len(pushes)
    return phases


def breakdown(events: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean over the trace's rounds of each phase's seconds (``round_breakdown``): means,
    so that the phases add up to the mean round; ``exchanges``: the median count (SecAgg+'s
    first round has one more, its key setup)."""
    numbers = sorted({e["round"] for e in events if e["event"] == "round.start"})
    rounds = [b for n in numbers if (b := round_breakdown(events, n)) is not None]
    if not rounds:
        return {}
    means = {key: statistics.fmean(r[key] for r in rounds) for key in rounds[0]}
    return {**means, "exchanges": statistics.median(r["exchanges"] for r in rounds)}


def format_breakdown(title: str, phases: dict[str, float], training: float | None) -> str:
    """The breakdown as lines: each phase's seconds, the round, and the training."""
    exchanges = phases.get("exchanges", 0)
    lines = [f"{title}: mean seconds per round, critical path ({exchanges:g} message "
             "exchange(s) a round, summed)"]
    for key, what in PHASES + AFTER:
        if phases.get(key):
            lines.append(f"  {key:18} {phases[key]:7.3f}  {what}")
    lines.append(f"  {'round':18} {phases.get('round', 0.0):7.3f}  round.start -> evaluated")
    if training is not None:
        lines.append(f"  {'training':18} {training:7.3f}  the slowest device's (store)")
    return "\n".join(lines)


__all__ = ["AFTER", "PHASES", "breakdown", "format_breakdown", "round_breakdown"]
