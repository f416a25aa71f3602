"""Sample data for the console: users, teams, keys through the admin API, and a week of usage
written to the store's usage tables (what the screenshots show, and what the browser tests
read back from the charts).

The week of usage is written with :class:`bastion.store.usage.UsageLedger` straight into the
gateway's store (its hourly rollup is what reports read), because real requests can only be
"now"; it is made by a seeded random generator, so every run draws the same week.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from bastion.admin.client import AdminClient
from bastion.store.store import Store
from bastion.store.usage import UsageLedger, UsageRecord

MODELS = ("llama-3.1-8b", "gemma-3-270m")
"""The models the sample gateway serves (each through the fake upstream)."""

PEOPLE = (
    # name, role, kind, teams, share of the traffic
    ("ada", "operator", "user", ("research",), 0.35),
    ("grace", "user", "user", ("research",), 0.2),
    ("linus", "user", "user", ("platform",), 0.15),
    ("ci-bot", "user", "service", ("platform",), 0.3),
    ("dashboards", "viewer", "service", (), 0.0),
)
TEAMS = {"research": "Models and evaluations", "platform": "CI and internal tools"}


@dataclass
class Sample:
    """What :func:`populate` made: each user's key id, and the keys' secrets by user."""

    key_ids: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)


def populate(client: AdminClient) -> Sample:
    """Users, service accounts, teams and one key each, through the admin API."""
    sample = Sample()
    for team, description in TEAMS.items():
        client.call("teams.create", name=team, description=description)
    for name, role, kind, teams, _share in PEOPLE:
        client.call("users.create", name=name, role=role, kind=kind)
        for team in teams:
            client.call("teams.add", team=team, user=name)
        issued = client.call(
            "keys.create", user=name, name="laptop" if kind == "user" else "deploy"
        )
        sample.key_ids[name] = issued["key"]["id"]
        sample.secrets[name] = issued["secret"]
    client.call(
        "keys.create", user="grace", name="notebook", models=["gemma-*"], expires_in=30 * 86400
    )
    return sample


def week_of_usage(sample: Sample, now: float | None = None, seed: int = 16) -> list[UsageRecord]:
    """A week of requests, busier in the working hours, ending an hour before ``now``."""
    end = (now if now is not None else time.time()) - 3600
    draw = random.Random(seed)
    records: list[UsageRecord] = []
    for hour in range(7 * 24, 0, -1):
        at = end - hour * 3600
        local_hour = time.gmtime(at).tm_hour
        busy = 1.0 if 8 <= local_hour < 19 else 0.25
        for name, _role, _kind, teams, share in PEOPLE:
            for _ in range(draw.randint(0, round(12 * share * busy * 3))):
                records.append(_record(draw, at, name, sample.key_ids[name], teams))
    return records


def _record(draw: random.Random, at: float, name: str, key: str, teams: tuple[str, ...]) -> Any:
    model = MODELS[0] if draw.random() < 0.7 else MODELS[1]
    failed = draw.random() < 0.02
    prompt = 0 if failed else draw.randint(200, 2400)
    completion = 0 if failed else draw.randint(50, 900)
    return UsageRecord(
        at=at + draw.uniform(0, 3599),
        request_id=f"sample-{draw.getrandbits(48):012x}",
        principal=name,
        credential=key,
        teams=teams,
        model=model,
        route="chat",
        status=502 if failed else 200,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=draw.uniform(120, 2400),
        ttft_ms=draw.uniform(40, 300),
    )


def write_usage(store_url: str, records: list[UsageRecord]) -> None:
    """Writes the records and their hourly rollup to the store at ``store_url``."""
    store = Store.open(store_url)
    try:
        UsageLedger(store).append(records)
    finally:
        store.close()
