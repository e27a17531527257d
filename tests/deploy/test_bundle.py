"""``fedcore clients bundle``: a device's unit (checked by systemd), env file and scripts."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from deploy.certs import create_certificates
from device_profiles import get_profile

runner = CliRunner()
AGENT = str(Path(sys.executable).parent / "fedcore-device")


def make_bundle(tmp_path, *extra):
    ca = tmp_path / "certs" / "ca.pem"
    if not ca.exists():
        create_certificates(tmp_path / "certs", ["127.0.0.1"])
    args = ["clients", "bundle", "--name", "pi-1", "--superlink", "10.0.0.1:9092", "--device",
            "rpi-zero-2w", "--ca", str(ca), "--out", str(tmp_path / "b"), "--agent", AGENT,
            *extra]  # fmt: skip
    return runner.invoke(app, args), tmp_path / "b"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies_and_takes_memory_from_the_device_class(tmp_path):
    done, out = make_bundle(tmp_path)
    assert done.exit_code == 0, done.output
    unit = out / "fedcore-client.service"
    check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout + check.stderr == "", check.stderr
    mib = get_profile("rpi-zero-2w").memory_budget_bytes // 2**20
    assert f"MemoryMax={mib}M\n" in unit.read_text()
    assert f"ExecStart={AGENT} --superlink ${{FEDCORE_SUPERLINK}}" in unit.read_text()
    env = (out / "fedcore-client.env").read_text()
    assert "FEDCORE_SUPERLINK=10.0.0.1:9092\n" in env and "FEDCORE_DEVICE=rpi-zero-2w\n" in env
    for script in ("install.sh", "termux-start.sh"):
        assert os.access(out / script, os.X_OK)
        subprocess.run(["sh", "-n", str(out / script)], check=True)
    assert not (out / "node.key").exists()  # made on the device by default
    again, _ = make_bundle(tmp_path)
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


def test_bad_options_are_one_line(tmp_path):
    ca = create_certificates(tmp_path / "certs", ["127.0.0.1"]).ca_cert
    base = ["clients", "bundle", "--name", "pi-1", "--superlink", "h:1", "--device",
            "rpi-4-2gb", "--ca", str(ca), "--out", str(tmp_path / "b")]  # fmt: skip
    for swap, message in (
        (("--device", "toaster"), "--device-class"),
        (("--superlink", "nohost"), "--superlink"),
        (("--name", "bad name"), "--name"),
        (("--ca", str(tmp_path / "none.pem")), "no such file"),
    ):
        args = list(base)
        args[args.index(swap[0]) + 1] = swap[1]
        done = runner.invoke(app, args)
        assert done.exit_code == 2 and message in done.output, done.output
    assert not (tmp_path / "b").exists()


def test_termux_script_makes_the_key_on_first_start(tmp_path):
    done, out = make_bundle(tmp_path)
    assert done.exit_code == 0, done.output
    env = {**os.environ, "FEDCORE_AGENT": AGENT, "FEDCORE_PYTHON": sys.executable}
    first = subprocess.run(
        ["sh", str(out / "termux-start.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert "fedcore clients enroll pi-1 --public-key node.pub" in first.stdout
    assert (out / "node.key").stat().st_mode & 0o777 == 0o600
    assert first.stdout.strip().splitlines()[-1] == (out / "node.pub").read_text().strip()
