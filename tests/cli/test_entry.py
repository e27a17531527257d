"""The installed ``fedcore`` script on a device install: one line and exit 2, not a traceback."""

import subprocess
import sys

import pytest


def run_main(hide: str) -> subprocess.CompletedProcess:
    """``cli.main()`` in a fresh interpreter where importing ``hide`` fails as if missing."""
    code = f"import sys\nsys.modules[{hide!r}] = None\nfrom cli import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("hide", ["typer", "rich"])
def test_a_device_install_is_told_what_to_run(hide):
    result = run_main(hide)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"fedcore: {hide} is not installed: this is a device install")
    assert "`fedcore-device`" in line and "pip install 'fedcore[server]'" in line


def test_with_the_server_parts_the_command_runs():
    result = subprocess.run(
        [sys.executable, "-c", "from cli import main\nmain()\n", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "simulate" in result.stdout and "client" in result.stdout
