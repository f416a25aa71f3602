"""The audit trail of refused requests, recorded without slowing the request that was refused.

A refusal (401, 403, an address blocked for guessing) leaves one :class:`AuditEvent` in a
bounded in-memory list; the store synchronizer writes them in batches. Under a flood that
outruns the database the oldest pending events are dropped and counted (``dropped``), and the
loss is logged once: memory stays bounded whatever a caller sends. Without a store, events go
to the ``bastion.audit`` log instead.

An event names who (when known), the route, the address, the request id and why, never the
credential that was presented.
"""

from __future__ import annotations

import logging

import orjson

from bastion.errors import GatewayError
from bastion.store.records import AuditEvent

__all__ = ["AuditTrail"]

log = logging.getLogger("bastion.audit")

_AUDITED = frozenset({401, 403})
_BLOCKED = "too_many_authentication_failures"


class AuditTrail:
    def __init__(self, *, to_store: bool, max_pending: int = 50_000) -> None:
        self._to_store = to_store
        self._max = max_pending
        self._pending: list[AuditEvent] = []
        self.recorded = 0
        self.dropped = 0
        self._warned = False

    @staticmethod
    def wants(error: GatewayError) -> bool:
        """Is this refusal audited here (and not already by the admin service)?"""
        return (error.status in _AUDITED or error.code == _BLOCKED) and not error.audited

    @property
    def pending(self) -> int:
        return len(self._pending)

    def refused(self, event: AuditEvent) -> None:
        """Record the event of a refused request (built by the ``account`` phase)."""
        self.record(event)

    def record(self, event: AuditEvent) -> None:
        """Record an event off the request path (refusals; console sign-ins and sign-outs)."""
        self.recorded += 1
        if not self._to_store:
            log.info("audit %s", orjson.dumps(event.public()).decode())
            return
        self._pending.append(event)
        if len(self._pending) > self._max:
            excess = len(self._pending) - self._max
            del self._pending[:excess]
            self._lost(excess)

    def take(self) -> list[AuditEvent]:
        events, self._pending = self._pending, []
        return events

    def put_back(self, events: list[AuditEvent]) -> None:
        """Events that could not be written, to be tried again (oldest dropped past the bound)."""
        self._pending[:0] = events
        excess = len(self._pending) - self._max
        if excess > 0:
            del self._pending[:excess]
            self._lost(excess)

    def _lost(self, count: int) -> None:
        self.dropped += count
        if not self._warned:
            self._warned = True
            log.error(
                "audit events are arriving faster than the store takes them; the oldest are "
                "being dropped (counted in bastion's audit_dropped)"
            )
