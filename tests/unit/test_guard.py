from __future__ import annotations

import pytest

from bastion.auth.guard import FailureGuard
from bastion.errors import RateLimitError
from bastion.settings import BruteForceSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **settings: float) -> FailureGuard:
    values = {"max_failures": 3, "window": 60, "block": 300} | settings
    return FailureGuard(BruteForceSettings(**values), clock)  # type: ignore[arg-type]


def test_an_address_is_blocked_after_too_many_failures_then_released() -> None:
    clock = Clock()
    g = guard(clock)
    for _ in range(2):
        g.failed("10.0.0.1")
        g.check("10.0.0.1")
    g.failed("10.0.0.1")
    with pytest.raises(RateLimitError) as caught:
        g.check("10.0.0.1")
    assert dict(caught.value.headers)[b"retry-after"] == b"300"
    g.check("10.0.0.2")  # others are not affected
    clock.now += 299.5
    with pytest.raises(RateLimitError) as caught:
        g.check("10.0.0.1")
    assert dict(caught.value.headers)[b"retry-after"] == b"1"
    clock.now += 1
    g.check("10.0.0.1")
    assert (g.blocks, g.refused) == (1, 2)


def test_failures_spread_over_windows_do_not_add_up() -> None:
    clock = Clock()
    g = guard(clock)
    for _ in range(10):
        g.failed("10.0.0.1")
        g.failed("10.0.0.1")
        clock.now += 61
        g.check("10.0.0.1")
    assert g.blocks == 0


def test_zero_disables_blocking() -> None:
    g = guard(Clock(), max_failures=0)
    for _ in range(1000):
        g.failed("10.0.0.1")
    g.check("10.0.0.1")


def test_tracking_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.auth.guard as module

    monkeypatch.setattr(module, "_MAX_TRACKED", 100)
    clock = Clock()
    g = guard(clock)
    for i in range(1000):
        g.failed(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.001
    assert len(g._seen) <= 100
