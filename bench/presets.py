"""Named Bastion configurations, one per feature switch, so every change to the request path
is measured with that feature on.

A preset is a function from the benchmark's fixed facts (ports, a freshly generated key, a
scratch directory for files such as an htpasswd) to a config mapping and the ``Authorization``
header callers send. Presets named here but not written yet raise :class:`PresetNotReadyError`: the
benchmark refuses to run them rather than silently measuring something else.

To add one: write ``_name(facts) -> Preset`` and put it in ``PRESETS``; list it in
docs/performance.md.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["PRESETS", "RESERVED", "Preset", "PresetFacts", "PresetNotReadyError", "build_preset"]


class PresetNotReadyError(ValueError):
    """The preset is reserved for a feature whose benchmark config is not written yet."""


@dataclass(frozen=True)
class PresetFacts:
    port: int
    upstream_url: str
    workdir: Path
    key: str
    key_hash: str
    model: str = "bench-model"
    otlp_url: str = "http://127.0.0.1:18090/v1/traces"
    """Where the harness's OTLP sink listens (started for presets that set ``otlp_sink``)."""


@dataclass(frozen=True)
class Preset:
    config: dict[str, Any]
    authorization: str
    otlp_sink: bool = False
    """The harness runs its OTLP traces sink (``bench/otlp_sink.py``) beside the upstream."""


def _apikey(facts: PresetFacts) -> Preset:
    """The baseline, as shipped: one model, one upstream, API-key authentication, the access
    log on (written to the process's log file, in text form)."""
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": facts.port,
            "state_dir": str(facts.workdir / "state"),  # its own store, not the user's
        },
        "models": [{"name": facts.model, "upstreams": [{"url": facts.upstream_url}]}],
        "auth": {"api_keys": [{"name": "bench", "hash": facts.key_hash, "role": "user"}]},
    }
    return Preset(config, f"Bearer {facts.key}")


def _apikey_nolog(facts: PresetFacts) -> Preset:
    """The baseline with the access log off: what the access log costs is the difference."""
    preset = _apikey(facts)
    return Preset({**preset.config, "logging": {"access_log": False}}, preset.authorization)


def _apikey_nostore(facts: PresetFacts) -> Preset:
    """The baseline with the identity store off (config keys only): what keeping the store
    current in the background costs is the difference."""
    preset = _apikey(facts)
    return Preset({**preset.config, "store": {"enabled": False}}, preset.authorization)


def _apikey_nousage(facts: PresetFacts) -> Preset:
    """The baseline with usage records off (store on): what recording usage costs is the
    difference."""
    preset = _apikey(facts)
    return Preset({**preset.config, "usage": {"enabled": False}}, preset.authorization)


def _apikey_nometrics(facts: PresetFacts) -> Preset:
    """The baseline with Prometheus metrics off: what counting every request costs is the
    difference."""
    preset = _apikey(facts)
    return Preset({**preset.config, "metrics": {"enabled": False}}, preset.authorization)


def _metrics(facts: PresetFacts) -> Preset:
    """Metrics with everything an operator can turn on: the per-team label and the separate
    scrape listener (on a free port)."""
    preset = _apikey(facts)
    metrics = {"team_label": True, "listen": "127.0.0.1:0"}
    return Preset({**preset.config, "metrics": metrics}, preset.authorization)


def _store_key(facts: PresetFacts) -> Preset:
    """The caller's key issued by the identity store (SQLite in the state directory), as
    ``bastion keys create`` makes it: the store's key cache, last-used recording and revision
    polling all on."""
    from bastion.store.records import Actor
    from bastion.store.store import Store

    preset = _apikey(facts)
    state = Path(preset.config["server"]["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    store = Store.open(f"sqlite:///{state / 'bastion.db'}")
    try:
        actor = Actor("bench")
        store.create_principal(actor, "bench", role="user")
        _, secret = store.create_key(actor, "bench", name="bench")
    finally:
        store.close()
    config = {**preset.config, "auth": {}}
    # a config key for nobody, so that start-up does not bootstrap an administrator
    config["auth"] = {"api_keys": [{"name": "unused", "hash": facts.key_hash, "role": "viewer"}]}
    return Preset(config, f"Bearer {secret}")


def _memory_limits(facts: PresetFacts) -> Preset:
    """The baseline with limits on, in memory: per key requests and tokens per minute,
    concurrency and a daily budget (all too high to refuse), so every request is admitted,
    reserves tokens, has its usage read from the response and reconciled."""
    preset = _apikey(facts)
    huge = 10**12
    per_key = {"requests_per_minute": huge, "tokens_per_minute": huge, "concurrency": 100_000,
               "tokens_per_day": huge}  # fmt: skip
    limits = {"backend": "memory", "per_key": per_key}
    return Preset({**preset.config, "limits": limits}, preset.authorization)


def _redis_limits(facts: PresetFacts) -> Preset:
    """``memory-limits`` with the limits kept in the local Redis (127.0.0.1:6379, its own
    key prefix per run): one Redis script per admission and one per finish."""
    preset = _memory_limits(facts)
    limits = {
        **preset.config["limits"],
        "backend": "redis",
        "redis": {
            "url": "redis://127.0.0.1:6379/0",
            "key_prefix": f"bench-{facts.port}-{time.time_ns()}:",
        },
    }
    return Preset({**preset.config, "limits": limits}, preset.authorization)


def _production(facts: PresetFacts) -> Preset:
    """Everything a production gateway runs at once: API-key auth with model rules (a
    custom role and the key narrowed to the served model), per-key limits on requests,
    tokens, concurrency and a daily budget (in memory, all too high to refuse), usage
    records in the identity store, metrics, and the access log in JSON. Issue 15's targets
    are judged on this preset."""
    preset = _memory_limits(facts)
    key = {"name": "bench", "hash": facts.key_hash, "role": "inference",
           "models": [facts.model]}  # fmt: skip
    config = {
        **preset.config,
        "auth": {"api_keys": [key]},
        "roles": {"inference": {"routes": ["inference", "models"], "models": ["bench-*"]}},
        "usage": {"enabled": True},
        "metrics": {"enabled": True},
        "logging": {"access_log": True, "format": "json"},
    }
    return Preset(config, preset.authorization)


def _production_redis(facts: PresetFacts) -> Preset:
    """``production`` with its limits kept in the local Redis, as ``redis-limits``. Its
    ``redis.timeout`` is 1 s, not the shipped 0.1 s: on a shared two-core machine the loaded
    gateway's event loop stalls past 0.1 s at times, and the limiter then fails closed (503),
    so the run would measure refusals instead of admissions."""
    preset = _production(facts)
    limits = _redis_limits(facts).config["limits"]
    limits = {**limits, "redis": {**limits["redis"], "timeout": 1.0}}
    return Preset({**preset.config, "limits": limits}, preset.authorization)


def _production_no_console(facts: PresetFacts) -> Preset:
    """``production`` with the web console off (it is on wherever the store is): what the
    console costs the request path, which should be nothing."""
    preset = _production(facts)
    return Preset({**preset.config, "console": {"enabled": False}}, preset.authorization)


def _access_log_json(facts: PresetFacts) -> Preset:
    """The baseline with the access log in JSON."""
    preset = _apikey(facts)
    return Preset({**preset.config, "logging": {"format": "json"}}, preset.authorization)


def _basic(facts: PresetFacts) -> Preset:
    """HTTP Basic against an htpasswd file with a bcrypt (cost 5) entry, as Apache's
    ``htpasswd -B -C 5`` writes it; verification cached as shipped."""
    password = facts.key  # any secret will do; this one is fresh per run
    stored = bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).replace(b"$2b$", b"$2y$", 1)
    path = facts.workdir / "htpasswd"
    path.write_bytes(b"bench:" + stored + b"\n")
    preset = _apikey(facts)
    config = {**preset.config, "auth": {"htpasswd": {"file": str(path)}}}
    token = base64.b64encode(f"bench:{password}".encode()).decode()
    return Preset(config, f"Basic {token}")


def _jwt(facts: PresetFacts) -> Preset:
    """A bearer JWT (RS256) checked against a JWKS file; one token re-used, as a client does,
    so what is measured is the cached path plus the first verification."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", use="sig")
    path = facts.workdir / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    issuer = "https://idp.bench.invalid"
    now = int(time.time())
    claims = {"iss": issuer, "aud": "bastion", "sub": "bench", "iat": now, "exp": now + 86400}
    token = jwt.encode(claims, key, "RS256", headers={"kid": "bench"})
    preset = _apikey(facts)
    auth = {"jwt": {"issuer": issuer, "audience": "bastion", "jwks_file": str(path)}}
    return Preset({**preset.config, "auth": auth}, f"Bearer {token}")


def _tracing(ratio: float) -> Callable[[PresetFacts], Preset]:
    def build(facts: PresetFacts) -> Preset:
        """The baseline with tracing on, sampling ``ratio`` of the requests (failures and
        slow requests kept at their end, as shipped), exported to the harness's sink."""
        preset = _apikey(facts)
        tracing = {"enabled": True, "endpoint": facts.otlp_url, "sample_ratio": ratio}
        config = {**preset.config, "tracing": tracing}
        return Preset(config, preset.authorization, otlp_sink=True)

    return build


PRESETS: dict[str, Callable[[PresetFacts], Preset]] = {
    "jwt": _jwt,
    "apikey": _apikey,
    "basic": _basic,
    "apikey-nolog": _apikey_nolog,
    "apikey-nostore": _apikey_nostore,
    "apikey-nousage": _apikey_nousage,
    "apikey-nometrics": _apikey_nometrics,
    "metrics": _metrics,
    "store-key": _store_key,
    "memory-limits": _memory_limits,
    "redis-limits": _redis_limits,
    "access-log-json": _access_log_json,
    "production": _production,
    "production-redis": _production_redis,
    "production-no-console": _production_no_console,
    "tracing-0": _tracing(0.0),
    "tracing-1": _tracing(0.01),
    "tracing-100": _tracing(1.0),
}

# Hooks for later sessions: the feature each name is meant to switch on.
RESERVED: dict[str, str] = {}


def build_preset(name: str, facts: PresetFacts) -> Preset:
    """The config for preset ``name``; raises for reserved or unknown names."""
    build = PRESETS.get(name)
    if build is not None:
        return build(facts)
    if name in RESERVED:
        raise PresetNotReadyError(
            f"preset {name!r} ({RESERVED[name]}) is reserved but not defined yet: "
            f"add it to bench/presets.py, or pass --bastion-config FILE"
        )
    known = ", ".join(sorted(PRESETS))
    reserved = ", ".join(sorted(RESERVED))
    raise PresetNotReadyError(
        f"unknown preset {name!r}; defined: {known}; reserved for later: {reserved}"
    )
