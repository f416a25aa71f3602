"""The store's tables, as SQLAlchemy Core objects (one definition for SQLite and PostgreSQL).

Times are Unix seconds (double precision): the same on both databases, and what the gateway
compares with ``time.time()`` on the hot path. Lists (a key's models, routes, networks) are
JSON text. Nothing here ever holds a secret: keys are kept as their SHA-256 digest.

This module describes the *current* schema. Changing it means adding a migration to
:mod:`bastion.store.migrations` that brings an existing database to the same shape.
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

__all__ = [
    "api_keys",
    "audit_log",
    "console_logins",
    "console_sessions",
    "metadata",
    "principals",
    "response_owners",
    "revision",
    "schema_version",
    "team_members",
    "teams",
    "usage_hourly",
    "usage_records",
]

metadata = MetaData()

schema_version = Table(
    "bastion_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)

revision = Table(
    "bastion_revision",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
    comment="One row; bumped by every change that the gateways' caches must see.",
)

principals = Table(
    "principals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # user | service
    Column("role", String(64), nullable=False),
    Column("description", String(500), nullable=False, default=""),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("created_by", String(160), nullable=False),
)

teams = Table(
    "teams",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("description", String(500), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(160), nullable=False),
)

team_members = Table(
    "team_members",
    metadata,
    Column("team_id", String(32), ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "principal_id",
        String(32),
        ForeignKey("principals.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Index("ix_team_members_principal", "principal_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "principal_id",
        String(32),
        ForeignKey("principals.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
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
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
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

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
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

usage_hourly = Table(
    "usage_hourly",
    metadata,
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

response_owners = Table(
    "response_owners",
    metadata,
    Column("response_id", String(128), primary_key=True),
    Column("principal", Text, nullable=False),  # whole: a cut name could match another
    Column("model", Text, nullable=False),
    Column("upstream", Text, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    comment="Who created each response an upstream stores (principal '': contested, nobody); "
    "pruned after responses.retention_days.",
)

console_sessions = Table(
    "console_sessions",
    metadata,
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

console_logins = Table(
    "console_logins",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("nonce", String(64), nullable=False),
    Column("verifier", String(128), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    comment="OIDC sign-ins under way, by the SHA-256 of their state; each is used once.",
)
