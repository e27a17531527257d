"""The worked example under examples/byo runs exactly as its README shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "byo"


def readme_commands(readme: Path) -> str:
    """The shell block under '## Run it'."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("## Run it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"{readme} has no bash block under '## Run it'"
    return block.group(1)


@pytest.mark.slow
def test_bring_your_own_example_runs_as_the_readme_shows(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "byo",
                    ignore=shutil.ignore_patterns("data", "*.db", "*-checkpoints", "__pycache__"))
    script = "set -euo pipefail\n" + readme_commands(EXAMPLE / "README.md")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "120"}
    env.pop("FEDCORE_DB", None)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "run 1: completed" in out and "run 2: completed" in out
    assert "runs compared" in out
    accuracy = re.search(r"run 3: test accuracy ([0-9.]+), clients ([0-9.]+)", out)
    assert accuracy, out[-2000:]
    assert float(accuracy.group(1)) > 0.6 and float(accuracy.group(2)) > 0.6  # 4 classes
