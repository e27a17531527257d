"""Opening the store from a command: one-line errors, never a driver traceback."""

from __future__ import annotations

from typing import Any

from cli.errors import fail


def open_store(db: str | None, migrate: bool = False, create: bool = False) -> Any:
    """An ``aggregator.store.Store`` for ``--db`` (imported lazily: SQLAlchemy is heavy).

    Only ``migrate`` (``fedcore db upgrade``) creates a store; every other command refuses a
    mistyped ``--db`` with ``no store at PATH`` rather than reading a new, empty one; so does
    ``create`` (``fedcore clients enroll``: enrolling devices is how a server's store starts).
    """
    from aggregator.store import Store, StoreError

    try:
        return Store(db, migrate=migrate, create=migrate or create)
    except StoreError as exc:
        fail(str(exc))


def run_dict(run: Any) -> dict[str, Any]:
    """A stored run as JSON-ready data."""
    return {
        "id": run.id,
        "name": run.name,
        "runtime": run.runtime,
        "status": run.status,
        "seed": run.seed,
        "rounds": len(run.rounds),
        "num_rounds": run.config.get("federation", {}).get("rounds"),
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
    }


def round_dict(row: Any, clients: bool = False) -> dict[str, Any]:
    """A stored round as JSON-ready data (optionally with each client's outcome)."""
    data = {
        "number": row.number,
        "selected": row.num_selected,
        "accepted": row.num_accepted,
        "train_loss": row.train_loss,
        "test_loss": row.test_loss,
        "test_accuracy": row.test_accuracy,
        "seconds": row.seconds,
        "bytes_up": row.bytes_up,
        "bytes_down": row.bytes_down,
        "epsilon": row.epsilon,
        "checkpoint_sha256": row.checkpoint_sha256,
        "metrics": row.metrics or {},  # a simulated population's time, energy, availability
        # federated evaluation: {"metric", "summary", "clients": [[id, n, loss, metric]...]}
        "evaluation": row.evaluation,
    }
    if clients:
        data["clients"] = [
            {
                "client_id": c.client_id,
                "node_id": c.node_id,
                "device_class": c.device_class,
                "accepted": c.accepted,
                "num_examples": c.num_examples,
                "train_loss": c.train_loss,
                "seconds": c.seconds,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "reason": c.reason,
            }
            for c in row.clients
        ]
    return data
