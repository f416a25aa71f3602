"""The tables as each migration first created them, frozen.

A migration must create what it created the day it was released, whatever the current
schema (:mod:`bastion.store.schema`) has become since: a fresh install runs migration 1 and
then every later one, and if migration 1 built today's tables, migration 5's
``ALTER TABLE ... ADD COLUMN`` would fail on a column that is already there. So each
migration's tables are copied here once and never edited; a change to the schema is a new
migration with explicit DDL. ``tests/unit/store/test_frozen.py`` checks that a database
built by the migrations has exactly the current schema's shape.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["V1", "V2", "V3", "V4"]

_ID = BigInteger().with_variant(Integer, "sqlite")

V1 = MetaData()
"""Migration 1: identity and the audit trail."""

Table(
    "bastion_revision",
    V1,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
    comment="One row; bumped by every change that the gateways' caches must see.",
)
Table(
    "principals",
    V1,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("role", String(64), nullable=False),
    Column("description", String(500), nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("created_by", String(160), nullable=False),
)
Table(
    "teams",
    V1,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("description", String(500), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(160), nullable=False),
)
Table(
    "team_members",
    V1,
    Column("team_id", String(32), ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "principal_id", String(32), ForeignKey("principals.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Index("ix_team_members_principal", "principal_id"),
)  # fmt: skip
Table(
    "api_keys",
    V1,
    Column("id", String(32), primary_key=True),
    Column(
        "principal_id", String(32), ForeignKey("principals.id", ondelete="CASCADE"),
        nullable=False, index=True,
    ),
    Column("name", String(128), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("models", Text),
    Column("routes", Text),
    Column("networks", Text),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(160), nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
    Column("rotated_from", String(32)),
)  # fmt: skip
Table(
    "audit_log",
    V1,
    Column("id", _ID, primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("actor", String(160), nullable=False),
    Column("credential", String(64), nullable=False),
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status", Integer, nullable=False),
    Column("address", String(64), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("detail", Text),
)

V2 = MetaData()
"""Migration 2: usage records and hourly rollups."""

Table(
    "usage_records",
    V2,
    Column("id", _ID, primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("request_id", String(128), nullable=False),
    Column("principal", String(160), nullable=False),
    Column("credential", String(64), nullable=False),
    Column("teams", String(500), nullable=False),
    Column("model", String(200), nullable=False),
    Column("route", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    comment="One row per inference request; pruned after usage.retention_days.",
)
Table(
    "usage_hourly",
    V2,
    Column("hour", BigInteger, primary_key=True, autoincrement=False),
    Column("principal", String(160), primary_key=True),
    Column("credential", String(64), primary_key=True),
    Column("team", String(128), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("latency_ms", Float, nullable=False),
    comment="Rollup by hour (Unix hour number), principal, key, team ('' for none) and model.",
)

V3 = MetaData()
"""Migration 3: owners of stored responses."""

Table(
    "response_owners",
    V3,
    Column("response_id", String(128), primary_key=True),
    Column("principal", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("upstream", Text, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    comment="Who created each response an upstream stores (principal '': contested, nobody); "
    "pruned after responses.retention_days.",
)

V4 = MetaData()
"""Migration 4: web console sessions and OIDC sign-ins under way."""

Table(
    "console_sessions",
    V4,
    Column("id_hash", String(64), primary_key=True),
    Column("principal", Text, nullable=False),
    Column("method", String(16), nullable=False),
    Column("credential", Text, nullable=False),
    Column("role", String(64), nullable=False),
    Column("teams", Text, nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("last_seen_at", Float, nullable=False),
    Column("revoked_at", Float),
    comment="Web console sessions, by the SHA-256 of their id (the id itself is never kept).",
)
Table(
    "console_logins",
    V4,
    Column("state_hash", String(64), primary_key=True),
    Column("nonce", String(64), nullable=False),
    Column("verifier", String(128), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    comment="OIDC sign-ins under way, by the SHA-256 of their state; each is used once.",
)
