"""The same run from Python: ``fedcore.simulate`` with the example's objects passed directly."""

from byo_example.data import load
from byo_example.model import build
from byo_example.strategy import make

import fedcore

run = fedcore.simulate("scenario.toml", model=build, loader=load, strategy=make, db="byo.db")
last = run.history[-1]
print(f"run {run.run_id}: test accuracy {last['test_accuracy']:.3f}, "
      f"clients {last['federated']['metric']:.3f} (p10 {last['federated']['p10']:.3f})")
