"""Who owns each response an upstream stores, known to every replica.

vLLM keeps a created response in its own process memory and serves it to anyone who names
its id; the gateway therefore remembers, per response id, the principal that created it, the
model and the upstream that keeps it. Each replica holds the owners it has seen in memory
(least recently used forgotten first, ``responses.max_owners``). With a store, owners are
also written there, in batches off the request path, and a replica that has not seen an id
reads it from the store once (a read-through on a miss), so any replica answers for any
response.

Remembering is a dict write on the request path; the writer task is woken at once, so a
new owner normally reaches the store within milliseconds (one write), and until then other
replicas answer 404 for it (an id the store does not know is read again 10 and 50 ms later,
to cover a client that creates through one replica and retrieves through another at once).
Rows older than ``responses.retention_days`` are pruned.

An id claimed by two different principals (an upstream that reused an id) belongs to
nobody from then on: both get 404, rather than one reading the other's response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from bastion.errors import ServiceUnavailableError, StoreUnavailableError
from bastion.settings import ResponsesSettings
from bastion.store import schema
from bastion.store.calls import StoreCalls
from bastion.store.store import Store

__all__ = ["NOBODY", "OwnerLedger", "ResponseOwner", "ResponseOwners"]

log = logging.getLogger("bastion.store")

NOBODY = ""
"""The principal of a contested id: no caller is this principal."""
_READS = 4
"""Store reads for unknown ids at once; more are refused (503) so that a flood of made-up
ids cannot take the store's connections from key synchronization."""
_REREAD_AFTER = (0.01, 0.04)
"""An id the store does not know is read again after these pauses: a client that creates
through one replica and retrieves through another at once is often faster than the first
replica's write (measured: 12 of 50 such retrievals, PostgreSQL on the same host; none with
the rereads)."""
_PRUNE_EVERY = 3600.0

o = schema.response_owners


class ResponseOwner(NamedTuple):
    principal: str
    model: str
    upstream: str
    """The display name (``host:port``) of the upstream that keeps the response."""


class OwnerLedger:
    """The store's table of owners (blocking; run through :class:`StoreCalls`)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def write(self, owners: Sequence[tuple[str, ResponseOwner]], now: float | None = None) -> None:
        """Record owners; an id already held by another principal becomes nobody's."""
        if not owners:
            return
        at = time.time() if now is None else now
        rows = [{"response_id": rid, **owner._asdict(), "created_at": at} for rid, owner in owners]
        with self._store.writing() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(o)
            same = o.c.principal == statement.excluded.principal
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["response_id"],
                    set_={"principal": case((same, o.c.principal), else_=NOBODY)},
                ),
                rows,
            )

    def find(self, response_id: str) -> ResponseOwner | None:
        statement = select(o.c.principal, o.c.model, o.c.upstream).where(
            o.c.response_id == response_id
        )
        with self._store.reading() as conn:
            row = conn.execute(statement).first()
        return None if row is None else ResponseOwner(row[0], row[1], row[2])

    def prune(self, retention_days: float, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - retention_days * 86400
        with self._store.writing() as conn:
            return int(conn.execute(delete(o).where(o.c.created_at < cutoff)).rowcount or 0)


class ResponseOwners:
    """The owners this replica knows (memory, bounded) over the store's (when there is one)."""

    def __init__(
        self,
        settings: ResponsesSettings,
        ledger: OwnerLedger | None = None,
        calls: StoreCalls | None = None,
    ) -> None:
        self._max = settings.max_owners
        self._retention_days = settings.retention_days
        self._ledger = ledger if calls is not None else None
        """None without a store: memory is all there is."""
        self._calls = calls
        self._known: OrderedDict[str, ResponseOwner] = OrderedDict()
        self._pending: dict[str, ResponseOwner] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reading = 0
        self.written = 0
        self.dropped = 0
        """Owners never written: the store was away while more than ``max_owners`` waited."""
        self.contested = 0

    def __len__(self) -> int:
        return len(self._known)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def remember(self, response_id: str, owner: ResponseOwner) -> None:
        """A response was created (called as its id passes by: no I/O here)."""
        known = self._known
        before = known.get(response_id)
        if before is not None:
            known.move_to_end(response_id)
            if before.principal != owner.principal:
                self.contested += 1
                log.warning("a stored response's id was claimed by a second principal; "
                            "it now belongs to nobody")  # fmt: skip
                owner = owner._replace(principal=NOBODY)
        known[response_id] = owner
        if len(known) > self._max:
            known.popitem(last=False)
        if self._ledger is None:
            return
        if len(self._pending) >= self._max and response_id not in self._pending:
            self.dropped += 1
            return
        self._pending[response_id] = owner
        self._wake.set()

    async def owner(self, response_id: str) -> ResponseOwner | None:
        """Who owns ``response_id`` (None: nobody this gateway knows of). Reads the store
        when memory does not know the id; StoreUnavailableError if it cannot."""
        found = self._known.get(response_id)
        if found is not None:
            self._known.move_to_end(response_id)
            return found
        if self._ledger is None:
            return None
        found = await self._read(response_id)
        for pause in _REREAD_AFTER:  # perhaps created on another replica a moment ago
            if found is not None:
                break
            await asyncio.sleep(pause)
            found = self._known.get(response_id) or await self._read(response_id)
        if found is not None and response_id not in self._known:
            self._known[response_id] = found
            if len(self._known) > self._max:
                self._known.popitem(last=False)
        return self._known.get(response_id, found)

    async def _read(self, response_id: str) -> ResponseOwner | None:
        assert self._ledger is not None and self._calls is not None
        if self._reading >= _READS:
            raise ServiceUnavailableError(
                "Too many stored responses are being looked up; retry shortly.",
                headers=((b"retry-after", b"1"),),
            )
        self._reading += 1
        try:
            return await self._calls.run(self._ledger.find, response_id)
        finally:
            self._reading -= 1

    def start(self) -> None:
        """Start writing owners to the store (nothing to do without one)."""
        if self._ledger is not None and self._task is None:
            self._task = asyncio.create_task(self._write(), name="bastion-response-owners")

    async def stop(self) -> None:
        """Stop the writer and write what waits (best effort, a few seconds)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StoreUnavailableError, TimeoutError):
            await asyncio.wait_for(self.flush(), timeout=5.0)

    async def flush(self) -> None:
        """Write the owners that wait; they wait again if the store cannot take them."""
        if not self._pending or self._ledger is None or self._calls is None:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._calls.run(self._ledger.write, list(batch.items()))
        except StoreUnavailableError:
            for response_id, owner in batch.items():  # owners remembered since are newer
                self._pending.setdefault(response_id, owner)
            raise
        self.written += len(batch)

    async def _write(self) -> None:
        """Write as soon as owners wait (what arrives during a write is the next batch);
        prune old rows every hour; after a failure, wait a second."""
        assert self._ledger is not None and self._calls is not None
        prune_due = time.monotonic()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                if time.monotonic() >= prune_due:
                    prune_due = time.monotonic() + _PRUNE_EVERY
                    await self._calls.run(self._ledger.prune, self._retention_days)
            except StoreUnavailableError:
                self._wake.set()
                await asyncio.sleep(1.0)
            except Exception:  # never let the task die: owners would pile up unwritten
                log.exception("writing the owners of stored responses failed")
                await asyncio.sleep(1.0)
