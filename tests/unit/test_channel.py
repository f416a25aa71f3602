"""The supervisor-worker channel: both sides ask, answers find their askers, an end is seen."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bastion.server.channel import Channel


class Side:
    def __init__(self, sock: socket.socket, name: str) -> None:
        self.name = name
        self.told: list[tuple[str, dict[str, Any]]] = []
        self.release = asyncio.Event()
        self.channel = Channel(sock, self.answer)

    async def answer(self, op: str, args: dict[str, Any]) -> Any:
        if op == "echo":
            return {"from": self.name, **args}
        if op == "slow":
            await self.release.wait()
            return "late"
        if op == "big":
            return "x" * args["size"]
        if op == "fail":
            raise ValueError("no such thing")
        self.told.append((op, args))
        return None


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Side, Side]]:
    a, b = socket.socketpair()
    left, right = Side(a, "left"), Side(b, "right")
    await left.channel.start()
    await right.channel.start()
    yield left, right
    await left.channel.close()
    await right.channel.close()


async def test_either_side_asks_and_gets_its_own_answer(pair: tuple[Side, Side]) -> None:
    left, right = pair
    answers = await asyncio.gather(
        left.channel.ask("echo", {"n": 1}, timeout=5),
        right.channel.ask("echo", {"n": 2}, timeout=5),
        left.channel.ask("big", {"size": 3_000_000}, timeout=5),
    )
    assert answers[0] == {"from": "right", "n": 1}
    assert answers[1] == {"from": "left", "n": 2}
    assert answers[2] == "x" * 3_000_000


async def test_a_slow_answer_holds_up_no_other(pair: tuple[Side, Side]) -> None:
    left, right = pair
    slow = asyncio.ensure_future(left.channel.ask("slow", timeout=5))
    assert await left.channel.ask("echo", timeout=5) == {"from": "right"}
    assert not slow.done()
    right.release.set()
    assert await slow == "late"


async def test_told_messages_arrive_and_a_failed_handler_is_an_error(
    pair: tuple[Side, Side],
) -> None:
    left, right = pair
    left.channel.tell("ready", {"pid": 7})
    with pytest.raises(RuntimeError, match="ValueError: no such thing"):
        await left.channel.ask("fail", timeout=5)
    assert right.told == [("ready", {"pid": 7})]


async def test_an_unanswered_ask_times_out(pair: tuple[Side, Side]) -> None:
    left, _ = pair
    with pytest.raises(TimeoutError):
        await left.channel.ask("slow", timeout=0.05)


async def test_the_other_side_going_away_ends_waits_and_is_seen(pair: tuple[Side, Side]) -> None:
    left, right = pair
    waiting = asyncio.ensure_future(left.channel.ask("slow", timeout=5))
    await asyncio.sleep(0.01)
    await right.channel.close()
    with pytest.raises(ConnectionError):
        await waiting
    await asyncio.wait_for(left.channel.closed(), 5)
    assert not left.channel.open
    with pytest.raises(ConnectionError):
        await left.channel.ask("echo", timeout=5)
