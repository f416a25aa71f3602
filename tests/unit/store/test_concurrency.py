"""Several writers at once (threads, each with a Store of its own, as replicas have): no write
is lost, refused or counted twice."""

from __future__ import annotations

import threading
from collections.abc import Callable

from bastion.errors import ConflictError
from bastion.store.records import Actor, AuditQuery
from bastion.store.store import Store

THREADS = 4
EACH = 10


def run_together(work: list[Callable[[], None]]) -> list[BaseException]:
    """Run each callable in a thread of its own, all released at once; their errors."""
    start = threading.Barrier(len(work))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(job: Callable[[], None]) -> None:
        start.wait()
        try:
            job()
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_writers_in_parallel_lose_nothing(store_url: str) -> None:
    stores = [Store.open(store_url) for _ in range(THREADS)]
    try:

        def create(worker: int) -> Callable[[], None]:
            def job() -> None:
                for index in range(EACH):
                    stores[worker].create_principal(
                        Actor(f"worker{worker}"), f"w{worker}-user{index}", role="user"
                    )

            return job

        assert run_together([create(worker) for worker in range(THREADS)]) == []

        check = stores[0]
        names = sorted(p.name for p in check.principals())
        assert names == sorted(f"w{w}-user{i}" for w in range(THREADS) for i in range(EACH))
        assert len({p.id for p in check.principals()}) == THREADS * EACH
        assert check.revision() == 1 + THREADS * EACH
        assert all(store.revision() == 1 + THREADS * EACH for store in stores)
        audit = check.audit(AuditQuery(action="user.create", limit=1000))
        assert len(audit) == THREADS * EACH
        for worker in range(THREADS):
            assert sorted(e.target for e in audit if e.actor == f"worker{worker}") == sorted(
                f"w{worker}-user{i}" for i in range(EACH)
            )
    finally:
        for store in stores:
            store.close()


def test_the_same_name_at_once_is_created_once(store_url: str) -> None:
    stores = [Store.open(store_url) for _ in range(THREADS)]
    try:

        def create(worker: int) -> Callable[[], None]:
            def job() -> None:
                stores[worker].create_principal(Actor(f"worker{worker}"), "alice", role="user")

            return job

        errors = run_together([create(worker) for worker in range(THREADS)])
        assert len(errors) == THREADS - 1
        # The losers are told it exists (409), not that the store failed (503).
        assert all(isinstance(error, ConflictError) for error in errors), errors
        assert [p.name for p in stores[0].principals()] == ["alice"]
        assert stores[0].revision() == 2
        assert len(stores[0].audit(AuditQuery(action="user.create"))) == 1
    finally:
        for store in stores:
            store.close()


def test_keys_created_in_parallel_are_all_usable(store_url: str) -> None:
    stores = [Store.open(store_url) for _ in range(THREADS)]
    secrets: list[str] = []
    lock = threading.Lock()
    try:
        stores[0].create_principal(Actor("admin"), "alice", role="user")

        def create(worker: int) -> Callable[[], None]:
            def job() -> None:
                for _ in range(EACH):
                    _, secret = stores[worker].create_key(Actor("admin"), "alice")
                    with lock:
                        secrets.append(secret)

            return job

        assert run_together([create(worker) for worker in range(THREADS)]) == []
        snapshot = stores[1].snapshot()
        assert snapshot.revision == 2 + THREADS * EACH
        assert len(snapshot.keys) == len(set(secrets)) == THREADS * EACH
    finally:
        for store in stores:
            store.close()
