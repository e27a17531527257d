"""What a device needs to join: ``fedcore clients bundle`` writes it into one folder.

- ``ca.pem``: the CA that signed the SuperLink's certificate (copied from ``--ca``);
- ``identity.pem`` (with ``--identity``, or ``--generate-key --ca-key``: issued for the new
  key): the device's identity certificate (``fedcore clients certify``): the device then takes
  part in secure aggregation only with the checks against a malicious server;
- ``fedcore-client.env``: where the SuperLink is, the device's name, class, data, key and
  models folder (the only place a run's ``onnx:NAME`` model is read from);
- ``fedcore-client.service``: a systemd unit running the lean agent (``fedcore-device``) as user
  ``fedcore``,
  restarted when it stops, sandboxed, with ``MemoryMax`` the device class's memory for
  applications (``ram_gib * app_memory_share``) and ``MemoryHigh`` 90 % of it;
- ``install.sh``: Raspberry Pi OS / Debian: a venv with the device install of fedcore (its wheel
  from the folder, or ``FEDCORE_WHEEL``, without the ``server`` extra: no Flower, no SQLAlchemy,
  no Typer; offline when the dependencies' wheels are in the folder too), the user,
  ``/etc/fedcore``, a key pair made on the device (``python -m deploy.keys``, printed for the
  operator to enrol) and the unit, enabled but started only once enrolled;
- ``termux-start.sh``: Android (Termux): makes the key pair on first start, then runs
  ``fedcore-device`` in the foreground with the same settings.

The private key is made on the device by default; ``--generate-key`` puts one in the bundle
instead (a lab, or devices without a shell). Nothing is overwritten.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from deploy.certs import write_new

UNIT, ENV, INSTALL, TERMUX = (
    "fedcore-client.service",
    "fedcore-client.env",
    "install.sh",
    "termux-start.sh",
)
IDENTITY = "identity.pem"
AGENT_BIN = "/opt/fedcore/venv/bin/fedcore-device"
CONFIG_DIR = "/etc/fedcore"
STATE_DIR = "/var/lib/fedcore"
MODELS_DIR = f"{STATE_DIR}/models"  # model files a run may name (`onnx:NAME`), the operator's


class BundleError(ValueError):
    """A bundle that cannot be written (one line)."""


@dataclass(frozen=True)
class BundleSpec:
    """What goes into a device's bundle."""

    name: str
    superlink: str
    device: str
    memory_bytes: int  # the device class's memory for applications
    data: str = f"{STATE_DIR}/data.npz"  # the device's examples, where it will have them
    agent: str = AGENT_BIN  # the fedcore-device command on the device (in its venv)
    identity: bool = False  # the bundle carries the device's identity certificate


def env_file(spec: BundleSpec, config_dir: str = CONFIG_DIR) -> str:
    """``fedcore-client.env``: KEY=value lines (systemd's EnvironmentFile and ``. file``)."""
    values = {
        "FEDCORE_NAME": spec.name,
        "FEDCORE_SUPERLINK": spec.superlink,
        "FEDCORE_DEVICE": spec.device,
        "FEDCORE_DATA": spec.data,
        "FEDCORE_CA": f"{config_dir}/ca.pem",
        "FEDCORE_KEY": f"{config_dir}/node.key",
        "FEDCORE_MODELS": MODELS_DIR,
        **({"FEDCORE_IDENTITY": f"{config_dir}/{IDENTITY}"} if spec.identity else {}),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def agent_command(agent: str, identity: bool = False) -> str:
    """The ``fedcore-device`` command line, reading the env file's variables."""
    return (
        f"{agent} --superlink ${{FEDCORE_SUPERLINK}} --root-certificates ${{FEDCORE_CA}} "
        "--key ${FEDCORE_KEY} --data ${FEDCORE_DATA} --device ${FEDCORE_DEVICE} --max-wait 600 "
        f"--models ${{FEDCORE_MODELS}} --state-dir {STATE_DIR}"
        + (" --identity ${FEDCORE_IDENTITY}" if identity else "")
    )


def unit_file(spec: BundleSpec) -> str:
    """The systemd unit (``systemd-analyze verify`` accepts it without a word)."""
    mib = max(1, spec.memory_bytes // 2**20)
    return f"""[Unit]
Description=fedcore device agent ({spec.name}, {spec.device})
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=fedcore
Group=fedcore
EnvironmentFile={CONFIG_DIR}/{ENV}
WorkingDirectory={STATE_DIR}
ExecStart={agent_command(spec.agent, spec.identity)}
Restart=always
RestartSec=15
# the device class's memory for applications ({spec.device}: {mib} MiB)
MemoryMax={mib}M
MemoryHigh={mib * 9 // 10}M
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths={STATE_DIR}
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes

[Install]
WantedBy=multi-user.target
"""


def install_script(spec: BundleSpec) -> str:
    """``install.sh`` for Raspberry Pi OS / Debian (run as root from the bundle folder)."""
    venv = str(Path(spec.agent).parent.parent)
    return f"""#!/bin/sh
# Install the fedcore device agent for {spec.name} ({spec.device}); run as root from this folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wheel=${{FEDCORE_WHEEL:-$(ls "$here"/fedcore-*.whl 2>/dev/null | head -n 1)}}
if [ -z "$wheel" ]; then
    echo "install.sh: put fedcore's wheel in this folder or set FEDCORE_WHEEL" >&2
    exit 2
fi
command -v python3 >/dev/null || apt-get install -y python3 python3-venv
id fedcore >/dev/null 2>&1 ||
    useradd --system --home-dir {STATE_DIR} --shell /usr/sbin/nologin fedcore
install -d -m 0755 {CONFIG_DIR}
install -d -m 0750 -o fedcore -g fedcore {STATE_DIR}
install -d -m 0755 {MODELS_DIR}
[ -d {venv} ] || python3 -m venv {venv}
# the device install: fedcore's base dependencies only (no `server` extra); offline when the
# dependencies' wheels lie in this folder too
if [ "$(ls "$here"/*.whl 2>/dev/null | wc -l)" -gt 1 ]; then
    {venv}/bin/pip install --no-index --find-links "$here" "$wheel"
else
    {venv}/bin/pip install "$wheel"
fi
install -m 0644 "$here/ca.pem" {CONFIG_DIR}/ca.pem
if [ -f "$here/{IDENTITY}" ]; then install -m 0644 "$here/{IDENTITY}" {CONFIG_DIR}/{IDENTITY}; fi
install -m 0644 "$here/{ENV}" {CONFIG_DIR}/{ENV}
if [ -f "$here/node.key" ] && [ ! -f {CONFIG_DIR}/node.key ]; then
    install -m 0600 -o fedcore -g fedcore "$here/node.key" {CONFIG_DIR}/node.key
fi
if [ ! -f {CONFIG_DIR}/node.key ]; then
    keys=$(mktemp -d)
    {venv}/bin/python -m deploy.keys --out "$keys"
    install -m 0600 -o fedcore -g fedcore "$keys/node.key" {CONFIG_DIR}/node.key
    install -m 0644 "$keys/node.pub" {CONFIG_DIR}/node.pub
    rm -rf "$keys"
fi
install -m 0644 "$here/{UNIT}" /etc/systemd/system/{UNIT}
systemctl daemon-reload
systemctl enable {UNIT}
echo "Put this device's examples in {spec.data} (arrays x and y)."
echo "On the server: fedcore clients enroll {spec.name} --public-key node.pub" \\
    "--device-class {spec.device}"
echo "with this public key:"
cat {CONFIG_DIR}/node.pub 2>/dev/null || echo "(the bundle's node.pub)"
echo "Then here: systemctl start {UNIT}"
"""


def termux_script(spec: BundleSpec) -> str:
    """``termux-start.sh``: Android's Termux; the bundle folder holds the key and settings.

    Install once: ``pkg install python`` and ``pip install fedcore-*.whl`` (the device install)."""
    return f"""#!/bin/sh
# Start the fedcore device agent for {spec.name} in Termux (Android), in the foreground.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
agent=${{FEDCORE_AGENT:-fedcore-device}}
python=${{FEDCORE_PYTHON:-python3}}
set -a
. "$here/{ENV}"
set +a
FEDCORE_CA="$here/ca.pem"
FEDCORE_KEY="$here/node.key"
FEDCORE_DATA=${{FEDCORE_DATA_FILE:-$here/data.npz}}
identity=""
if [ -f "$here/{IDENTITY}" ]; then identity="--identity $here/{IDENTITY}"; fi
mkdir -p "$here/models"
if [ ! -f "$FEDCORE_KEY" ]; then
    "$python" -m deploy.keys --out "$here"
    echo "Enrol this device on the server: fedcore clients enroll {spec.name} --public-key node.pub"
    cat "$here/node.pub"
    exit 0
fi
command -v termux-wake-lock >/dev/null && termux-wake-lock || true
exec "$agent" --superlink "$FEDCORE_SUPERLINK" --root-certificates "$FEDCORE_CA" \\
    --key "$FEDCORE_KEY" --data "$FEDCORE_DATA" --device "$FEDCORE_DEVICE" \\
    --max-wait "${{FEDCORE_MAX_WAIT:-600}}" --models "$here/models" --state-dir "$here" $identity
"""


def write_bundle(
    out: Path,
    spec: BundleSpec,
    ca: Path,
    generate_key: bool = False,
    identity: Path | None = None,
    ca_key: Path | None = None,
) -> list[Path]:
    """Write the bundle into ``out`` (new files only); the paths written. The identity
    certificate is ``identity`` (made for the device's key beforehand) or, with
    ``generate_key``, issued here for the new key with the CA's ``ca_key``."""
    if not ca.is_file():
        raise BundleError(f"--ca: no such file: {ca}")
    if identity is not None and not identity.is_file():
        raise BundleError(f"--identity: no such file: {identity}")
    if identity is not None and ca_key is not None:
        raise BundleError("--identity and --ca-key: give one (a certificate, or its CA's key)")
    if ca_key is not None:
        if not generate_key:
            raise BundleError("--ca-key: certifies the key --generate-key makes; for a device's "
                              "own key use `fedcore clients certify` and --identity")
        from deploy.certs import CertError, load_ca

        try:
            load_ca(ca, ca_key)  # before anything is written
        except CertError as exc:
            raise BundleError(f"--ca-key: {exc}") from None
    if spec.identity != (identity is not None or ca_key is not None):
        raise BundleError("--identity: the spec and the files disagree")
    names = [UNIT, ENV, INSTALL, TERMUX, "ca.pem", *([IDENTITY] if spec.identity else [])]
    if generate_key:
        names += ["node.key", "node.pub"]
    existing = [out / n for n in names if (out / n).exists()]
    if existing:
        raise BundleError(f"--out: {existing[0]} exists; refusing to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text, mode in (
        (UNIT, unit_file(spec), 0o644),
        (ENV, env_file(spec), 0o644),
        (INSTALL, install_script(spec), 0o755),
        (TERMUX, termux_script(spec), 0o755),
    ):
        write_new(out / name, text.encode("utf-8"), mode)
        written.append(out / name)
    shutil.copyfile(ca, out / "ca.pem")
    written.append(out / "ca.pem")
    if identity is not None:
        shutil.copyfile(identity, out / IDENTITY)
        written.append(out / IDENTITY)
    if generate_key:
        from deploy.keys import generate_node_keys

        private, public, _ = generate_node_keys(out)
        written += [private, public]
        if ca_key is not None:
            written.append(_certify_new_key(spec.name, ca, ca_key, private, out / IDENTITY))
    return written


def _certify_new_key(name: str, ca: Path, ca_key: Path, private: Path, out: Path) -> Path:
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    from deploy.certs import CertError, issue_identity

    key = load_ssh_private_key(private.read_bytes(), None)
    try:
        return issue_identity(ca, ca_key, name, key.public_key(), out)  # type: ignore[arg-type]
    except CertError as exc:
        raise BundleError(f"--ca-key: {exc}") from None


__all__ = ["BundleError", "BundleSpec", "write_bundle", "unit_file", "env_file"]
