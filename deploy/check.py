"""``fedcore client --check SCENARIO``: would this device's data fit the run, checked offline.

The same check a device makes when a train message arrives (``client_runtime.datacheck``),
against the model the scenario builds for its data set, without a server: the data is read
as the node would read it (its own ``.npz`` file or its shard of a vendored data set).
"""

from __future__ import annotations

from pathlib import Path

from client_runtime.datacheck import data_mismatch
from deploy.node import SCENARIO, NodeConfigError, NodeData


def check_offline(scenario_path: Path, node: NodeData) -> str:
    """One line saying the data fits; ``NodeConfigError`` with the mismatch (or a bad file)."""
    from simulations.prepare import build_scenario_model, load_data
    from simulations.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(scenario_path)
        spec, _ = build_scenario_model(scenario, load_data(scenario, str(scenario_path)))
    except ScenarioError as exc:
        raise NodeConfigError(str(exc)) from None
    text = scenario_path.read_text(encoding="utf-8")
    x, y = node.load({SCENARIO: text})
    mismatch = data_mismatch(spec, x, y)
    if mismatch is not None:
        raise NodeConfigError(mismatch)
    labels = f", labels {int(y.min())}..{int(y.max())}" if y.dtype.kind in "iu" else ""
    return (
        f"data fits {scenario.name!r}: {len(y)} examples of shape {tuple(x.shape[1:])}"
        f"{labels}, model {spec.name!r}"
    )


__all__ = ["check_offline"]
