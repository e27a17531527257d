"""Deployment: the Flower App that ``flower-superlink`` and ``flower-supernode`` run.

``deploy.serverapp:app`` is the ServerApp (the scenario comes from the run config) and
``deploy.clientapp:app`` the ClientApp (a device's data comes from its ``--node-config``);
both wrap the same round loop and client handlers the simulations use. ``deploy.appdir``
writes the Flower App folder that ``flwr run`` submits, and ``deploy.processes`` starts and
stops the Flower processes for ``fedcore server`` and ``fedcore client``. Identity:
``deploy.certs`` (CA and server certificate), ``deploy.keys`` (a device's key pair),
``deploy.enrolment`` (enrolled keys on a running SuperLink), ``deploy.gateway`` (the Fleet-only
front that keeps Flower's Control API on loopback), ``deploy.probe`` (a device's TLS check).

Imports: ``cli -> deploy -> simulations -> aggregator``; the ClientApp side imports only
``client_runtime`` and ``fedcore`` (and ``simulations.datasets`` for a vendored data set).
"""
