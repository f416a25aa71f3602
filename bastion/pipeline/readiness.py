"""``/ready``: can this gateway process serve? And, asked ``?verbose``, what it knows.

Ready means started (configuration loaded, store open, the limiter built with its failure
mode decided: all before the port is bound) and not draining. Upstream health is per model
and stays out of it: a model whose upstreams are all down answers its callers 503
``no_healthy_upstream``, but taking every gateway replica out of its load balancer because
of one model would stop all the other models as well.

The plain answer is public (a load balancer's or Kubernetes' probe has no credential) and
says only ``ready`` or ``draining``. The verbose one names the models, so it needs the
``metrics`` permission, as the metrics that already carry them do; it never shows an
upstream's address.
"""

from __future__ import annotations

import time
from typing import Protocol

import orjson

from bastion.pipeline.route import ModelRegistry

__all__ = ["DRAINING", "READY", "ProcessState", "Readiness", "verbose_asked"]

READY = b'{"status":"ready"}'
DRAINING = b'{"status":"draining"}'


class ProcessState(Protocol):
    """What the process as a whole knows (the long-lived services, the server)."""

    @property
    def draining(self) -> bool:
        """True from the first SIGTERM or SIGINT on."""
        ...

    def store_state(self) -> str:
        """``ok``, ``unreachable`` or ``off`` (no store)."""
        ...

    def limits_state(self) -> dict[str, str]:
        """The limiter's backend and whether it answers (``backend``, ``state``, and for
        Redis ``on_backend_failure``)."""
        ...


class Readiness:
    """Answers ``/ready`` for one gateway (one configuration) in one process."""

    def __init__(self, models: ModelRegistry, state: ProcessState, *, checked: bool) -> None:
        """``checked``: active health checks are on, so an upstream counts as healthy only
        once a check has passed."""
        self._models = models
        self._state = state
        self._checked = checked

    @property
    def ready(self) -> bool:
        return not self._state.draining

    def report(self) -> bytes:
        """The verbose answer: status, store, limiter, and each model's healthy upstreams."""
        state = self._state
        now = time.monotonic()
        models = {
            entry.name: {
                "healthy": entry.balancer.count_available(now, checked=self._checked),
                "total": len(entry.balancer.members),
            }
            for entry in self._models.entries()
        }
        return orjson.dumps(
            {
                "status": "draining" if state.draining else "ready",
                "draining": state.draining,
                "store": state.store_state(),
                "limits": state.limits_state(),
                "health_checks": self._checked,
                "models": models,
            }
        )


def verbose_asked(query: bytes) -> bool:
    """``?verbose`` (with or without a value) is in the query string."""
    return any(p == b"verbose" or p.startswith(b"verbose=") for p in query.split(b"&"))
