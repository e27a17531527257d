"""The processes behind ``fedcore server``: a Flower SuperLink (behind the Fleet-only gateway
off loopback) and the ``flwr run`` that submits the app, started in order, followed while the
run commits its rounds, stopped in reverse."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.errors import err_console
from cli.live import RoundProgress

if TYPE_CHECKING:
    from aggregator.store import Store
    from deploy.processes import FlowerProcess, Tls
    from simulations.interrupts import Interrupts


class StartError(RuntimeError):
    """The SuperLink or ``flwr run`` did not start."""


class Deployment:
    """The SuperLink and the submitted run: started in order, stopped in reverse."""

    def __init__(
        self, work: Path, host: str, port: int, tls: Tls | None, public_control: bool = False,
        keep_state: bool = False,
    ) -> None:
        self.work, self.host, self.port, self.tls = work, host, port, tls
        self.public_control = public_control
        self.keep_state = keep_state  # the SuperLink's state in a file in ``work``, not memory
        self.home = work / "flwr-home"
        self.superlink: FlowerProcess | None = None
        self.gateway: FlowerProcess | None = None  # the Fleet-only front, off loopback
        self.submitted: FlowerProcess | None = None
        self.watch: list[Any] = []  # revocations and refusals, checked while following
        self.lost_superlink: str | None = None  # why the SuperLink exited under a running run

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in (self.submitted, self.gateway, self.superlink):
            if process is not None:
                process.stop()

    def start(self, settings: Any, store: Store, run_id: int) -> None:
        """Start the SuperLink, wait until it listens, register the enrolled devices' keys
        (with TLS), submit the app with ``flwr run``."""
        from deploy import processes as p
        from deploy.appdir import write_app
        from deploy.enrolment import (
            EnrolmentError,
            Refusals,
            Revocations,
            describe_key,
            register_enrolled,
        )

        env = p.flower_env(self.home)
        # in memory unless kept (``--logs``): a file costs the SuperLink 2-3x the CPU per call
        state = self.work / "superlink-state.db" if self.keep_state else None
        # Off loopback only the Fleet API is public: the SuperLink (Fleet, Control and runtime
        # APIs on one port) listens on loopback behind the Fleet-only gateway.
        fronted = not p.is_loopback(self.host) and not self.public_control
        link_host, link_port = ("127.0.0.1", p.free_port()) if fronted else (self.host, self.port)
        args = p.superlink_args(
            link_host, link_port, state, self.tls, node_auth=self.tls is not None
        )
        # the store reaches the ServerApp through the SuperLink's environment, not the run
        # config (which every SuperNode receives)
        link_env = {**env, **settings.environment()}
        self.superlink = p.FlowerProcess(
            "flower-superlink", args, link_env, self.work / "superlink.log"
        )
        try:
            self.superlink.wait_listening(link_host, link_port)
            if fronted:
                listen = local_address(self.host, self.port, keep_wildcard=True)
                gateway = p.gateway_args(listen, f"127.0.0.1:{link_port}", self.tls)
                self.gateway = p.FlowerProcess(
                    "fleet gateway", gateway, env, self.work / "gateway.log"
                )
                self.gateway.wait_listening(self.host, self.port)
        except p.ProcessError as exc:
            raise StartError(str(exc)) from None
        app = write_app(self.work / "app", settings.run_config())
        control = local_address(link_host, link_port)
        p.write_connection(self.home, control, None if self.tls is None else self.tls.ca_certfile)
        if self.tls is not None:
            try:
                names = register_enrolled(store, run_id, self.home)
            except EnrolmentError as exc:
                raise StartError(str(exc)) from None
            err_console.print(f"enrolled devices allowed to join: {', '.join(names)}")
            self.watch = [
                Revocations(store, run_id, self.home, set(names.values())),
                Refusals(self.work / "superlink.log", describe_key(store)),
            ]
        self.submitted = p.FlowerProcess(
            "flwr run", p.flwr_run_args(app), env, self.work / "flwr-run.log"
        )

    def follow(
        self,
        store: Store,
        run_id: int,
        ui: RoundProgress,
        interrupts: Interrupts,
        poll: float = 0.5,
    ) -> str | None:
        """Show stored rounds as they commit until the run ends; why it stopped early, or None.

        An interrupt is passed on to the ServerApp (another process) as a queued pause.
        """
        from aggregator.store import StoreError
        from aggregator.store.enrolment import device_names
        from cli.render import RoundRow, untrusted

        assert self.superlink is not None and self.submitted is not None
        shown, asked = 0, False
        while True:
            for watcher in self.watch:
                for line in watcher.check():
                    err_console.print(line, markup=False)
            if interrupts.signal is not None and not asked:
                asked = True
                try:
                    store.queue_control(run_id, "pause")
                except StoreError:  # it ended meanwhile (or an operator paused it): nothing to ask
                    pass
            run = store.get_run(run_id)
            for row in sorted(run.rounds, key=lambda r: r.number)[shown:]:
                ui.add(RoundRow.of(row))
                shown += 1
                names = device_names(store, run_id) if self.watch else {}
                for c in row.clients:
                    if not c.accepted:
                        who = f"client {c.client_id}"
                        who += f" ({names[c.node_id]})" if c.node_id in names else ""
                        why = f"round {row.number}: {who} rejected: {untrusted(c.reason)}"
                        err_console.print(why, markup=False)
            # Before the run's status and `flwr run`: both follow a SuperLink that died (the
            # ServerApp records a failure, `flwr run` exits), and the run is then paused.
            if not self.superlink.running():
                self.lost_superlink = f"the SuperLink exited ({self.superlink.popen.returncode})"
                return f"the SuperLink exited ({self.superlink.popen.returncode}): " + (
                    self.superlink.tail(3) or "no output"
                )
            if run.status != "running":
                self._let_flwr_run_finish()
                return None
            if not self.submitted.running():
                time.sleep(1.0)  # the ServerApp may still be committing its last words
                if store.get_run(run_id).status != "running" or not self.superlink.running():
                    continue
                return f"`flwr run` exited ({self.submitted.popen.returncode}): " + (
                    self.submitted.tail(3) or "no output"
                )
            if self.gateway is not None and not self.gateway.running():
                return f"the Fleet gateway exited ({self.gateway.popen.returncode}): " + (
                    self.gateway.tail(3) or "no output"
                )
            time.sleep(poll)

    def _let_flwr_run_finish(self, timeout: float = 10.0) -> None:
        """``flwr run --stream`` leaves once the SuperLink has sent the run's last logs."""
        assert self.submitted is not None
        deadline = time.monotonic() + timeout
        while self.submitted.running() and time.monotonic() < deadline:
            time.sleep(0.2)


def local_address(host: str, port: int, keep_wildcard: bool = False) -> str:
    """Where ``flwr run`` on this machine reaches a SuperLink bound to ``host`` (with
    ``keep_wildcard``: ``host:port`` as an address to bind)."""
    if keep_wildcard:
        pass
    elif host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
