"""Store calls run in threads of their own, within a deadline; an outage is logged once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from bastion.errors import NotFoundError, StoreTimeoutError, StoreUnavailableError
from bastion.settings import StoreSettings
from bastion.store.calls import Outage, StoreCalls

DOWN = StoreUnavailableError("the store failed: connection refused")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bastion.store"]


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(settle=5.0, clock=clock)
    outage.answered()
    assert lines(caplog) == []  # a healthy store says nothing
    for _ in range(30):  # failures and successes by turns, closer than settle: one outage
        outage.failed(DOWN)
        clock.now += 1.0
        outage.answered()
    assert outage.ongoing
    assert len(lines(caplog)) == 1
    assert lines(caplog)[0].startswith("identity store unreachable: the store failed")
    clock.now += 4.0  # 5 s since the last failure
    outage.answered()
    assert not outage.ongoing
    assert lines(caplog)[1] == "identity store reachable again after 34.0 s (30 calls failed)"
    outage.answered()
    outage.failed(DOWN)  # a new outage is told again
    assert len(lines(caplog)) == 3 and "unreachable" in lines(caplog)[2]


def test_an_outage_does_not_end_without_an_answer(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = Outage(settle=5.0, clock=clock)
    outage.failed(DOWN)
    clock.now += 60.0  # no call at all meanwhile: nothing says the store is back
    assert outage.ongoing
    assert len(lines(caplog)) == 1


@pytest.fixture
def calls() -> Iterator[StoreCalls]:
    made = StoreCalls(StoreSettings(poll_interval=0.01), threads=2)
    yield made
    made.close()


async def test_results_and_the_stores_own_refusals_pass_through(calls: StoreCalls) -> None:
    assert await calls.run(lambda a, b=0: a + b, 1, b=2) == 3

    def missing() -> None:
        raise NotFoundError("No user named 'x'.")

    with pytest.raises(NotFoundError):
        await calls.run(missing)

    def down() -> None:
        raise DOWN

    with pytest.raises(StoreUnavailableError):
        await calls.run(down)
    assert (calls.failures, calls.timeouts) == (1, 0)
    assert calls.outage.ongoing


async def test_a_call_that_never_ends_is_given_up_at_the_deadline(calls: StoreCalls) -> None:
    calls.deadline = 0.2
    release = threading.Event()
    ran: list[str] = []

    def stuck(name: str) -> None:
        ran.append(name)
        release.wait(10)

    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(calls.run(stuck, f"call{i}") for i in range(3)), return_exceptions=True
        )
        assert time.monotonic() - started < 1.0
        assert all(isinstance(o, StoreTimeoutError) for o in outcomes)
        assert (calls.failures, calls.timeouts) == (3, 3)
        # the store threads are stuck; the default executor (bcrypt's) is not
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 1.0) == 42
    finally:
        release.set()
    await calls.run(lambda: None)  # queued after the third: the third was dropped by now
    assert ran == ["call0", "call1"]  # the call queued behind them was dropped, never run
