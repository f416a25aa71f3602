"""Owners of stored responses: memory bounded, shared through the store (SQLite and
PostgreSQL), never handed from one principal to another."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from bastion.errors import ServiceUnavailableError, StoreUnavailableError
from bastion.settings import ResponsesSettings, StoreSettings
from bastion.store.calls import StoreCalls
from bastion.store.owners import NOBODY, OwnerLedger, ResponseOwner, ResponseOwners
from bastion.store.store import Store

ALICE = ResponseOwner("alice", "m", "a:8000")
BOB = ResponseOwner("bob", "m", "b:8000")


@pytest.fixture
def calls() -> Iterator[StoreCalls]:
    made = StoreCalls(StoreSettings())
    yield made
    made.close()


def test_the_ledger_records_finds_and_prunes(store: Store) -> None:
    ledger = OwnerLedger(store)
    long_name = "x" * 500  # kept whole: a name cut short could match another
    ledger.write([("r1", ALICE), ("r2", BOB._replace(principal=long_name))], now=1000.0)
    ledger.write([("r3", BOB)], now=5000.0)
    assert ledger.find("r1") == ALICE
    assert ledger.find("r2") == BOB._replace(principal=long_name)
    assert ledger.find("nope") is None
    assert ledger.prune(retention_days=1.0, now=1000.0 + 86400 + 1) == 2
    assert (ledger.find("r1"), ledger.find("r3")) == (None, BOB)


def test_an_id_claimed_by_a_second_principal_belongs_to_nobody(store: Store) -> None:
    ledger = OwnerLedger(store)
    ledger.write([("r1", ALICE)])
    ledger.write([("r1", ALICE._replace(upstream="c:1"))])  # the same owner again: kept
    assert ledger.find("r1") == ALICE
    ledger.write([("r1", BOB)])
    assert ledger.find("r1") == ALICE._replace(principal=NOBODY)
    ledger.write([("r1", ALICE)])  # and it stays nobody's
    assert ledger.find("r1") == ALICE._replace(principal=NOBODY)


def test_memory_forgets_the_least_recently_used() -> None:
    async def run() -> None:
        owners = ResponseOwners(ResponsesSettings(max_owners=2))
        owners.remember("a", ALICE)
        owners.remember("b", ALICE)
        assert await owners.owner("a") == ALICE  # now the most recently used
        owners.remember("c", ALICE)
        assert (await owners.owner("a"), await owners.owner("b")) == (ALICE, None)
        assert len(owners) == 2

    asyncio.run(run())


def test_memory_never_hands_an_id_to_another_principal() -> None:
    async def run() -> None:
        owners = ResponseOwners(ResponsesSettings())
        owners.remember("a", ALICE)
        owners.remember("a", ALICE)
        assert owners.contested == 0
        owners.remember("a", BOB)
        assert await owners.owner("a") == BOB._replace(principal=NOBODY)
        owners.remember("a", ALICE)
        assert (await owners.owner("a"), owners.contested) == (ALICE._replace(principal=NOBODY), 2)

    asyncio.run(run())


def test_a_replica_reads_what_another_wrote(store: Store, calls: StoreCalls) -> None:
    async def run() -> None:
        ledger = OwnerLedger(store)
        first = ResponseOwners(ResponsesSettings(), ledger, calls)
        second = ResponseOwners(ResponsesSettings(), ledger, calls)
        first.remember("r1", ALICE)
        assert await second.owner("r1") is None  # not written yet
        first.start()
        deadline = time.monotonic() + 5
        while first.pending or first.written == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        assert await second.owner("r1") == ALICE
        assert len(second) == 1  # kept: the next request does not read the store
        second.remember("r1", BOB)  # the upstream reused the id for someone else
        await second.flush()
        assert ledger.find("r1") == ALICE._replace(principal=NOBODY)
        await first.stop()

    asyncio.run(run())


def test_owners_wait_while_the_store_is_away(store: Store, calls: StoreCalls) -> None:
    class Away(OwnerLedger):
        down = True

        def write(self, owners: object, now: float | None = None) -> None:
            if self.down:
                raise StoreUnavailableError("injected outage")
            super().write(owners, now)  # type: ignore[arg-type]

    async def run() -> None:
        ledger = Away(store)
        owners = ResponseOwners(ResponsesSettings(max_owners=2), ledger, calls)
        owners.remember("r1", ALICE)
        with pytest.raises(StoreUnavailableError):
            await owners.flush()
        owners.remember("r2", ALICE)
        owners.remember("r3", ALICE)  # over the bound: dropped, counted
        assert (owners.pending, owners.dropped) == (2, 1)
        ledger.down = False
        await owners.flush()
        assert (ledger.find("r1"), ledger.find("r2"), ledger.find("r3")) == (ALICE, ALICE, None)

    asyncio.run(run())


def test_lookups_of_unknown_ids_are_bounded(store: Store, calls: StoreCalls) -> None:
    """A flood of made-up ids cannot hold every store connection (key sync needs one)."""
    release = threading.Event()

    class Slow(OwnerLedger):
        def find(self, response_id: str) -> ResponseOwner | None:
            release.wait(5)
            return super().find(response_id)

    async def run() -> None:
        owners = ResponseOwners(ResponsesSettings(), Slow(store), calls)
        waiting = [asyncio.ensure_future(owners.owner(f"r{i}")) for i in range(4)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailableError) as refused:
            await owners.owner("r9")
        assert refused.value.headers == ((b"retry-after", b"1"),)
        owners.remember("known", ALICE)
        assert await owners.owner("known") == ALICE  # memory answers regardless
        release.set()
        assert await asyncio.gather(*waiting) == [None] * 4
        assert await owners.owner("r9") is None

    asyncio.run(run())


def test_without_a_store_nothing_is_written_or_read() -> None:
    async def run() -> None:
        owners = ResponseOwners(ResponsesSettings())
        owners.start()
        owners.remember("r1", ALICE)
        assert owners.pending == 0
        assert await owners.owner("r2") is None
        await owners.stop()

    asyncio.run(run())


def test_an_id_written_a_moment_after_the_first_read_is_found(
    store: Store, calls: StoreCalls
) -> None:
    """Created through one replica, asked for through another at once: the other replica's
    write lands while this one pauses before reading again."""

    class Late(OwnerLedger):
        reads = 0

        def find(self, response_id: str) -> ResponseOwner | None:
            self.reads += 1
            if self.reads == 1:
                self.write([(response_id, ALICE)])  # lands just after this read
                return None
            return super().find(response_id)

    async def run() -> None:
        ledger = Late(store)
        owners = ResponseOwners(ResponsesSettings(), ledger, calls)
        assert await owners.owner("r1") == ALICE
        assert ledger.reads == 2
        started = time.monotonic()
        assert await owners.owner("r2") is None  # never created: read three times
        assert ledger.reads == 5 and time.monotonic() - started >= 0.05

    asyncio.run(run())
