"""A fresh device environment, built offline: this checkout's wheel and its base dependencies
only (``pip install fedcore``, no ``server`` extra), from the wheels on this machine.

Used by ``python -m benchmarks.deploy`` (its installed size) and by the device-install test
(what it imports). Wheels come from ``$FEDCORE_WHEELHOUSE`` (folders of wheels, ``:``-separated)
or else from the local indexes and wheel folders in pip's own configuration (``file://``
URLs and paths); pip runs with no other configuration and a dead proxy, so nothing is
downloaded. ``python -m benchmarks.device_env DIR`` builds one and prints its size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fedcore", "client_runtime", "aggregator", "device_profiles", "cli", "simulations",
            "deploy")  # fmt: skip
# what a device install must not have (the list: the server's stack; pydantic: the
# scenario schema's)
SERVER_MODULES = ("sqlalchemy", "alembic", "typer", "rich", "click", "ray", "matplotlib",
                  "uvicorn", "fastapi", "flwr", "pydantic", "numba", "llvmlite")  # fmt: skip
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "", "PIP_CONFIG_FILE": os.devnull,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip


class NoWheels(RuntimeError):
    """No local wheels to build a device environment from (the message says where it looked)."""


@dataclass(frozen=True)
class DeviceEnv:
    """A device environment: its folder and its interpreter."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        """A script the install put in the environment's ``bin``."""
        return self.root / "bin" / name

    def size(self) -> int:
        """Bytes of every file in the environment (apparent sizes, links not followed)."""
        return installed_size(self.root)

    def site_packages_size(self) -> int:
        """Bytes under ``site-packages`` less pip and setuptools (what the install added)."""
        [site] = self.root.glob("lib/python3*/site-packages")
        total = 0
        for entry in site.iterdir():
            name = entry.name.lower()
            if name.startswith(("pip", "setuptools", "_distutils_hack", "distutils-precedence")):
                continue
            total += installed_size(entry) if entry.is_dir() else entry.lstat().st_size
        return total


def installed_size(root: Path) -> int:
    """Apparent bytes of the files under ``root`` (symbolic links count as links)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            total += (Path(folder) / name).lstat().st_size
    return total


def wheel_sources(env: dict[str, str] | None = None) -> list[str]:
    """pip arguments that name local wheels only; ``NoWheels`` if there are none."""
    env = dict(os.environ if env is None else env)
    if env.get("FEDCORE_WHEELHOUSE"):
        dirs = [d for d in env["FEDCORE_WHEELHOUSE"].split(os.pathsep) if Path(d).is_dir()]
        if not dirs:
            raise NoWheels(f"FEDCORE_WHEELHOUSE names no folder: {env['FEDCORE_WHEELHOUSE']}")
        return ["--no-index", *[arg for d in dirs for arg in ("--find-links", d)]]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, env=env
    ).stdout
    indexes, links = [], []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        for item in value.strip().strip("'\"").split():
            local = item.startswith("file://") or Path(item).is_dir()
            if key.endswith("index-url") and item.startswith("file://"):
                indexes.append(item)
            elif key.endswith("find-links") and local:
                links.append(item)
    if not indexes and not links:
        raise NoWheels(
            "no local wheels: set FEDCORE_WHEELHOUSE to a folder of wheels (`pip download -d "
            "DIR numpy cryptography protobuf safetensors threadpoolctl`)"
        )
    args = ["--no-index"] if not indexes else ["--index-url", indexes[0]]
    args += [arg for url in indexes[1:] for arg in ("--extra-index-url", url)]
    return args + [arg for d in dict.fromkeys(links) for arg in ("--find-links", d)]


def build_wheel(out: Path) -> Path:
    """This checkout's wheel, built offline from a copy of its sources (the tree stays clean)."""
    source = out / "source"
    for name in PACKAGES:
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels = out / "wheel"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--wheel-dir", str(wheels), str(source)], {**os.environ, **OFFLINE})  # fmt: skip
    shutil.rmtree(source)
    [wheel] = wheels.glob("fedcore-*.whl")
    return wheel


def build_device_env(root: Path, work: Path) -> DeviceEnv:
    """A fresh venv at ``root`` (with pip, as on a device) holding this checkout's wheel and
    its base dependencies only, installed offline; ``work`` keeps the wheel."""
    sources = wheel_sources()
    wheel = build_wheel(work)
    _run([sys.executable, "-m", "venv", str(root)], dict(os.environ))
    env = DeviceEnv(root)
    _run([str(env.python), "-m", "pip", "install", "-q", *sources, str(wheel)],
         {**isolated_environment(), **OFFLINE})  # fmt: skip
    if not env.bin("fedcore-device").exists():  # pip saw them installed elsewhere: did nothing
        raise RuntimeError(f"the device install in {root} has no fedcore-device script")
    return env


def isolated_environment() -> dict[str, str]:
    """This process's environment without what points a Python at other packages (``PYTHON*``
    such as a ``PYTHONPATH`` that Ray leaves behind, ``VIRTUAL_ENV``) or configures pip."""
    drop = ("PIP_", "PYTHON", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _run(argv: list[str], env: dict[str, str]) -> None:
    """Run a build step; ``RuntimeError`` with the end of its output if it fails."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-3000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{tail}")


def main() -> None:
    """``python -m benchmarks.device_env DIR``: build a device environment, print its size."""
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.device_env DIR")
    root = Path(sys.argv[1])
    if root.exists():
        raise SystemExit(f"{root} exists; give a new folder")
    env = build_device_env(root, root.with_name(root.name + "-wheel"))
    added = env.site_packages_size() / 1e6
    print(f"device environment {root}: {env.size() / 1e6:.1f} MB "
          f"({added:.1f} MB installed besides pip and setuptools)")  # fmt: skip


if __name__ == "__main__":
    main()
