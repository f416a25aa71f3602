"""Keeps a gateway's in-process view of the store current, off the request path.

Requests never wait on the database. A background task asks the store for its revision every
``poll_interval`` (one indexed single-row read); when it moved, the usable keys are read again
and swapped into the API key authenticator at once. A revocation made through any replica or
the CLI is therefore refused everywhere within ``poll_interval`` plus one reload.

The same task writes back what requests leave behind: keys' last-used times and the audit
events of refused requests, in batches. If the store is unreachable those wait (bounded) and
are written when it returns. Every store call goes through :class:`~bastion.store.calls.StoreCalls`
(threads of the store's own, a deadline each), which logs an outage once, not per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from bastion.auth.apikeys import ApiKeyAuthenticator, ApiKeyRecord
from bastion.auth.identity import Restrictions
from bastion.errors import StoreUnavailableError
from bastion.settings import StoreSettings
from bastion.store.audit import AuditTrail
from bastion.store.calls import StoreCalls
from bastion.store.records import KeyGrant
from bastion.store.store import Store
from bastion.store.usage import UsageLedger, UsageQueue

__all__ = ["STOP_BUDGET", "StoreSync", "grant_record"]

log = logging.getLogger("bastion.store")

STOP_BUDGET = 8.0
"""Seconds a stopping gateway gives the store to take what is pending: within the 10 s a
supervisor allows a worker beyond ``server.drain_timeout``."""


def grant_record(grant: KeyGrant) -> ApiKeyRecord:
    return ApiKeyRecord(
        name=grant.principal,
        hash="sha256:" + grant.digest.hex(),
        role=grant.role,
        restrictions=Restrictions.of(grant.routes, grant.models, grant.networks),
        expires_at=grant.expires_at,
        key_id=grant.id,
        teams=grant.teams,
    )


class StoreSync:
    def __init__(
        self,
        store: Store,
        authenticator: ApiKeyAuthenticator,
        config_keys: Sequence[ApiKeyRecord],
        settings: StoreSettings,
        trail: AuditTrail,
        calls: StoreCalls,
        usage: UsageQueue | None = None,
        retention_days: float = 90.0,
    ) -> None:
        self._store = store
        self._calls = calls
        self._usage = usage
        self._ledger = UsageLedger(store)
        self._retention_days = retention_days
        self._prune_due = 0.0
        self._authenticator = authenticator
        self._config_keys = tuple(config_keys)
        self._stored: list[ApiKeyRecord] = []
        self._settings = settings
        self._trail = trail
        self._revision: int | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.reloads = 0
        self.failures = 0

    @property
    def revision(self) -> int | None:
        return self._revision

    async def start(self) -> None:
        """Load the keys once (an unreachable store fails the start), then keep them current."""
        self._stopping.clear()
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._poll(), name="bastion-store-poll"),
            asyncio.create_task(self._write(), name="bastion-store-write"),
        ]

    async def refresh(self) -> None:
        """Reload now if the store changed (after an admin write, so it is seen at once)."""
        async with self._lock:
            current = await self._calls.run(self._store.revision)
            if current != self._revision:
                snapshot = await self._calls.run(self._store.snapshot)
                self._stored = [grant_record(g) for g in snapshot.keys]
                self._authenticator.replace([*self._config_keys, *self._stored])
                self._revision = snapshot.revision
                self.reloads += 1
            stale_after = self._settings.stale_after
            self._authenticator.store_valid_until = (
                time.time() + stale_after if stale_after > 0 else math.inf
            )

    def replace_config_keys(self, keys: Sequence[ApiKeyRecord]) -> None:
        """A reloaded configuration's keys, alongside the store's as last loaded."""
        self._config_keys = tuple(keys)
        self._authenticator.replace([*self._config_keys, *self._stored])

    async def stop(self) -> None:
        """Stop polling and writing, then write what is still pending.

        A write under way is let finish, never cut off: a cancelled call still queued for a
        store thread is dropped unrun, and the records it had taken with it. Each kind of
        pending work is written on its own, so audit events the store refuses do not keep
        usage records from it. The whole takes at most :data:`STOP_BUDGET` seconds (or the
        store's deadline, if shorter); what is left unwritten then is logged with its count.
        """
        self._stopping.set()
        poll, write = self._tasks if self._tasks else (None, None)
        self._tasks = []
        if poll is not None:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self._calls.deadline, STOP_BUDGET)):
                if write is not None:
                    await write  # ends after the step under way
                for step in (self._write_usage, self._write_audit, self._write_used):
                    await self._guarded(step)
        usage = len(self._usage) if self._usage is not None else 0
        audit = self._trail.pending
        if usage or audit:
            log.error(
                "shutting down with %d usage record%s and %d audit event%s not written to the "
                "identity store: it did not answer in time or failed",
                usage, "" if usage == 1 else "s", audit, "" if audit == 1 else "s",
            )  # fmt: skip

    async def _write_usage(self) -> None:
        if self._usage is None or not self._usage.pending:
            return
        rows, rollup = self._usage.take()
        try:
            await self._calls.run(self._ledger.write, rows, rollup)
        except (StoreUnavailableError, asyncio.CancelledError):
            # cancelled: only when a stop ran out of time; the rows count as unwritten
            self._usage.put_back(rows, rollup)
            raise
        self._usage.written += len(rows)
        if time.monotonic() >= self._prune_due:
            self._prune_due = time.monotonic() + 3600
            await self._calls.run(self._ledger.prune, self._retention_days)

    async def _write_used(self) -> None:
        used, self._authenticator.used = self._authenticator.used, {}
        if not used:
            return
        try:
            await self._calls.run(self._store.touch_keys, used)
        except StoreUnavailableError:
            for key_id, when in used.items():  # requests since then hold newer times
                self._authenticator.used.setdefault(key_id, when)
            raise

    async def _write_audit(self) -> None:
        events = self._trail.take()
        if not events:
            return
        try:
            await self._calls.run(self._store.append_audit, events)
        except StoreUnavailableError:
            self._trail.put_back(events)
            raise

    async def _poll(self) -> None:
        """Follow the store's revision (its own task: a slow write never delays a reload)."""
        while True:
            await asyncio.sleep(self._settings.poll_interval)
            await self._guarded(self.refresh)

    async def _write(self) -> None:
        """Write what requests left behind: audit and usage each second, last-used times
        every ``last_used_interval``."""
        settings = self._settings
        used_due = time.monotonic() + settings.last_used_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(1.0, settings.poll_interval))
            if self._stopping.is_set():
                return  # stop() writes what is left
            await self._guarded(self._write_audit)
            await self._guarded(self._write_usage)
            if time.monotonic() >= used_due:
                used_due = time.monotonic() + settings.last_used_interval
                await self._guarded(self._write_used)

    async def _guarded(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run one step; a failure is counted (and logged once per outage by the calls)."""
        try:
            await step()
        except StoreUnavailableError:
            self.failures += 1
        except Exception:  # never let the tasks die: the cache would silently age
            log.exception("identity store sync failed")
