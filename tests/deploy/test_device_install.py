"""The device install: a fresh venv with this checkout's wheel and its base dependencies only
(``pip install fedcore``, offline from this machine's wheels) runs the lean agent, which trains
a round against a real SuperLink, and imports none of the server's stack; the ``fedcore``
command there says what to run instead, and so does ``--dataset`` (its shards are cut by
server code: a device gives its own ``--data``)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from aggregator.store import Store
from benchmarks.device_env import (
    SERVER_MODULES,
    NoWheels,
    build_device_env,
    isolated_environment,
    wheel_sources,
)
from deploy.node import NodeData
from tests.deploy.fleet import example, loopback_address, needs_flower
from tests.requirements import missing

pytestmark = pytest.mark.slow  # builds a wheel and a venv (about a minute)

TARGET_MB = 120  # the bound for a device's environment
DEVICE_IMPORTS = ["deploy.agent", "client_runtime.fleet.agent", "client_runtime.handlers",
                  "client_runtime.trainer", "device_profiles", "fedcore.models"]  # fmt: skip


@pytest.fixture(scope="module")
def device_env(tmp_path_factory):
    try:
        wheel_sources()
    except NoWheels as exc:
        missing(str(exc), "FEDCORE_REQUIRE_DEVICE_ENV")
    work = tmp_path_factory.mktemp("device")
    return build_device_env(work / "venv", work)


def run(env, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120,
                          env=isolated_environment(), cwd=env.root, **kwargs)  # fmt: skip


def python_json(env, code: str):
    """Run ``code`` with the device venv's python; what it printed, as JSON."""
    done = run(env, str(env.python), "-c", "import json\n" + code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_device_install_has_no_server_parts(device_env):
    code = (
        "import importlib.util\n"
        f"print(json.dumps([m for m in {list(SERVER_MODULES)!r} "
        "if importlib.util.find_spec(m) is not None]))\n"
    )
    assert python_json(device_env, code) == []  # not even installed


def test_the_agent_runs_and_imports_none_of_them(device_env):
    done = run(device_env, str(device_env.bin("fedcore-device")), "--help")
    assert done.returncode == 0, done.stderr
    assert "--superlink" in done.stdout
    code = (
        "import importlib, sys\n"
        f"for m in {DEVICE_IMPORTS!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    loaded = set(python_json(device_env, code))
    assert not loaded & set(SERVER_MODULES), sorted(loaded & set(SERVER_MODULES))
    # the installed copy, not this checkout
    where = run(device_env, str(device_env.python), "-c", "import deploy; print(deploy.__file__)")
    assert str(device_env.root) in where.stdout


def test_fedcore_there_says_what_to_run_instead(device_env):
    done = run(device_env, str(device_env.bin("fedcore")), "--help")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "this is a device install" in line and "fedcore-device" in line
    assert "pip install 'fedcore[server]'" in line


def test_the_device_install_fits_its_budget(device_env):
    megabytes = device_env.site_packages_size() / 1e6
    print(f"device install: {megabytes:.1f} MB besides pip and setuptools; "
          f"whole venv {device_env.size() / 1e6:.1f} MB")  # fmt: skip
    assert megabytes <= TARGET_MB


def test_a_vendored_data_set_needs_the_server_parts(device_env):
    done = run(device_env, str(device_env.bin("fedcore-device")), "--superlink", "127.0.0.1:9",
               "--dataset", "digits", "--partition-id", "0")  # fmt: skip
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "--dataset" in line and "pip install 'fedcore[server]'" in line and "--data" in line


@needs_flower
def test_agents_from_the_device_install_train_a_round(device_env, fleet, tmp_path):
    text = example(rounds=1)
    scenario = tmp_path / "one.toml"
    scenario.write_text(text)
    address, db = loopback_address(), tmp_path / "runs.db"
    server = fleet.server("server", scenario, address, db, "--connect-timeout", "120",
                          "--round-timeout", "120")  # fmt: skip
    fleet.env.pop("PYTHONPATH", None)  # the agents import the device venv's own copy
    for i in range(2):  # each device holds its own examples, as a real one does
        x, y = NodeData(dataset="digits", partition_id=i, num_partitions=2).load(
            {"scenario": text})
        np.savez(tmp_path / f"device{i}.npz", x=x, y=y)
        fleet.spawn(f"device{i}", [str(device_env.bin("fedcore-device")), "--superlink", address,
                                   "--data", str(tmp_path / f"device{i}.npz"), "--partition-id",
                                   str(i), "--max-wait", "2"])  # fmt: skip
    assert server.wait(timeout=300) == 0, fleet.output("server") + fleet.output("device0")
    (row,) = Store(str(db)).get_run(1).rounds
    assert row.num_accepted == 2, [c.reason for c in row.clients]
