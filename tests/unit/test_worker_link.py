"""A worker's start: what it learns from its supervisor over the channel, and nothing else."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import yaml

from bastion.server.channel import Channel
from bastion.server.worker import WorkerLink
from bastion.settings import ModelSettings, Secret, UpstreamTarget


def model(name: str) -> dict[str, Any]:
    return {"name": name, "upstreams": [{"url": "http://127.0.0.1:9"}]}


@pytest.fixture
async def worker_of() -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    """A worker's link, and a supervisor end that answers ``hello`` with the given boot."""
    opened: list[tuple[WorkerLink, Channel]] = []

    async def make(boot: dict[str, Any]) -> WorkerLink:
        ours, theirs = socket.socketpair()

        async def answer(op: str, args: dict[str, Any]) -> Any:
            assert op == "hello"
            return boot

        supervisor = Channel(ours, answer)
        await supervisor.start()
        link = WorkerLink(theirs, listener_fd=-1)
        await link.start()
        opened.append((link, supervisor))
        return link

    yield make
    for link, supervisor in opened:
        await link.close()  # first: a worker whose supervisor goes away stops its process
        await supervisor.close()


def boot(started: dict[str, Any], now: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "index": 2,
        "path": "/etc/bastion.yaml",
        "server": {"workers": 2},
        "started_text": yaml.safe_dump(started),
        "text": yaml.safe_dump(now),
        "engine_models": [],
        **more,
    }


async def test_a_worker_started_after_a_reload_keeps_the_restart_only_settings(
    worker_of: Callable[[dict[str, Any]], Any],
) -> None:
    started = {"http": {"max_body_bytes": 1000}, "models": [model("first")]}
    now = {"http": {"max_body_bytes": 2000}, "models": [model("second")]}
    link = await worker_of(boot(started, now))
    settings = await link.hello()
    assert link.index == 2
    assert settings.http.max_body_bytes == 1000  # as its siblings run: set at their start
    assert [m.name for m in settings.models] == ["second"]  # reloadable: as reloaded
    assert settings.server.workers == 2  # the command line's, as the supervisor got it
    assert link.source.name == "/etc/bastion.yaml"


async def test_the_engine_runs_in_the_supervisor_and_its_key_comes_over_the_channel(
    worker_of: Callable[[dict[str, Any]], Any],
) -> None:
    engine = ModelSettings(
        name="gemma",
        upstreams=(UpstreamTarget(url="http://127.0.0.1:4321", api_key=Secret(value="inner")),),
    )
    link = await worker_of(boot({}, {}, engine_models=[engine.model_dump(mode="json")]))
    settings = await link.hello()
    assert settings.uses_engine
    (served,) = link.engine_models()
    assert served == engine
    upstream_key = served.upstreams[0].api_key
    assert upstream_key is not None
    assert upstream_key.resolve() == "inner"
