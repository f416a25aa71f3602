"""The bound on connections per client address: counted per address, freed on close, and
reported once a minute per address however many connections it loses."""

from __future__ import annotations

import logging

import pytest

from bastion.server.protocol import AddressLimit


def test_each_address_holds_at_most_the_limit() -> None:
    limit = AddressLimit(2)
    assert limit.admit("10.0.0.1", 0) and limit.admit("10.0.0.1", 0)
    assert not limit.admit("10.0.0.1", 0)
    assert limit.admit("10.0.0.2", 0)  # another address has its own count
    assert limit.refused == 1
    limit.release("10.0.0.1")
    assert limit.held("10.0.0.1") == 1
    assert limit.admit("10.0.0.1", 0)  # a closed connection frees its place
    limit.release("10.0.0.2")
    assert limit.held("10.0.0.2") == 0


def test_a_connection_without_an_address_is_refused() -> None:
    limit = AddressLimit(5)
    assert not limit.admit(None, 0)
    assert limit.refused == 1


def test_an_address_over_the_limit_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = AddressLimit(1)
    limit.admit("10.0.0.1", 0)
    limit.admit("10.0.0.2", 0)
    with caplog.at_level(logging.WARNING, logger="bastion.server"):
        for now in (1, 2, 30, 60.5):
            assert not limit.admit("10.0.0.1", now)
        assert not limit.admit("10.0.0.2", 3)
        assert not limit.admit("10.0.0.1", 61.5)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("10.0.0.1" in line for line in lines) == 2  # at 1 s and at 61.5 s
    assert sum("10.0.0.2" in line for line in lines) == 1
    assert limit.refused == 6
