"""The admin HTTP API, under ``/admin/v1``: users, teams, roles, keys and the audit trail.

Only callers whose access includes the ``admin`` permission get here (the route table says so
and ``authorize`` enforces it); what each of them may then do is decided by
:class:`~bastion.admin.service.AdminService`. Responses are JSON and never cached; a created or
rotated key's secret appears once, in the response that created it.

Every operation is declared once, in :data:`OPERATIONS` (see :mod:`bastion.admin.operations`):
its method and path, its parameters, its answer and its handler. The CLI performs the same
operations by building the same requests, sent to a gateway (:mod:`bastion.admin.client`) or
handed to :meth:`AdminApi.handle` in-process; the API's OpenAPI document is made from the same
table (:func:`description`, served as ``GET /admin/v1/openapi.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from bastion.admin import openapi, shapes
from bastion.admin.operations import (
    PREFIX,
    Choice,
    Choices,
    Flag,
    Integer,
    Number,
    Operation,
    Router,
    Strings,
    Text,
    body,
    path,
    query,
)
from bastion.admin.overview import Overview
from bastion.admin.reloading import ReloadReport
from bastion.admin.service import MAX_OVERLAP, AdminService, Caller
from bastion.errors import (
    BadRequestError,
    BastionError,
    ConfigRefusedError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
)
from bastion.pipeline.accept import json_object
from bastion.pipeline.context import RequestContext
from bastion.pipeline.responses import send_json
from bastion.store.calls import StoreCalls
from bastion.store.records import Actor, AuditQuery, StoredKey
from bastion.store.store import KINDS, NAME_PATTERN, NAME_RULE
from bastion.store.sync import StoreSync
from bastion.store.usage import GROUPS, UsageQuery

__all__ = ["OPERATIONS", "PREFIX", "ROUTER", "AdminApi", "Call", "description"]

_NO_STORE = ((b"cache-control", b"no-store"),)

Reload = Callable[[], Awaitable[ReloadReport]]
Run = Callable[..., Awaitable[Any]]
"""Runs blocking store work off the event loop (``StoreCalls.run``, or ``asyncio.to_thread``)."""


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets: the service, who asks, and the operation's checked arguments."""

    service: AdminService
    caller: Caller
    args: dict[str, Any]
    reload: Reload | None = None
    run: Run = asyncio.to_thread
    overview: Overview | None = None
    """The running gateway's facts (None: the CLI on a local store, which has none)."""


# -- handlers ------------------------------------------------------------------------------------


def _listed(items: Iterable[Any]) -> dict[str, Any]:
    return {"object": "list", "data": list(items)}


def _issued(key: StoredKey, secret: str) -> dict[str, Any]:
    return {"key": key.public(time.time()), "secret": secret}


def _whoami(call: Call) -> dict[str, Any]:
    return {"principal": call.caller.principal, "credential": call.caller.actor.credential}


def _create_user(call: Call) -> dict[str, Any]:
    a = call.args
    return call.service.create_user(
        call.caller, a["name"], role=a["role"], kind=a["kind"], description=a["description"]
    ).public()


def _update_user(call: Call) -> dict[str, Any]:
    a = call.args
    return call.service.update_user(
        call.caller, a["name"], role=a["role"], disabled=a["disabled"],
        description=a["description"],
    ).public()  # fmt: skip


def _delete_user(call: Call) -> dict[str, Any]:
    call.service.delete_user(call.caller, call.args["name"])
    return {"name": call.args["name"], "deleted": True}


def _delete_team(call: Call) -> dict[str, Any]:
    call.service.delete_team(call.caller, call.args["name"])
    return {"name": call.args["name"], "deleted": True}


def _list_keys(call: Call) -> dict[str, Any]:
    now = time.time()
    found = call.service.keys(call.args["user"], include_revoked=call.args["include_revoked"])
    return _listed(k.public(now) for k in found)


def _create_key(call: Call) -> dict[str, Any]:
    a = call.args
    expires_at = a["expires_at"]
    if expires_at is not None and a["expires_in"] is not None:
        raise BadRequestError("Give expires_at or expires_in, not both.", param="expires_in")
    if a["expires_in"] is not None:
        expires_at = time.time() + a["expires_in"]
    key, secret = call.service.create_key(
        call.caller, a["user"], name=a["name"], models=a["models"], routes=a["routes"],
        networks=a["networks"], expires_at=expires_at,
    )  # fmt: skip
    return _issued(key, secret)


def _rotate_key(call: Call) -> dict[str, Any]:
    key, secret = call.service.rotate_key(
        call.caller, call.args["id"], overlap=call.args["overlap"]
    )
    return _issued(key, secret)


def _audit(call: Call) -> dict[str, Any]:
    a = call.args
    found = call.service.audit(
        AuditQuery(a["since"], a["until"], a["actor"], a["action"], a["outcome"], a["limit"])
    )
    return _listed(e.public() for e in found)


def _usage(call: Call) -> dict[str, Any]:
    a = call.args
    report = call.service.usage(
        UsageQuery(a["by"], a["period"], a["since"], a["until"], a["user"], a["team"], a["model"])
    )
    return _listed(report)


async def _reload_config(call: Call) -> dict[str, Any]:
    if call.reload is None:
        raise NotFoundError()
    service, caller = call.service, call.caller
    await call.run(service.may_reload, caller)
    try:
        report = await call.reload()
    except BastionError as exc:
        message = str(exc)
        await call.run(
            service.record, caller, "config.reload", "config", "failed", 422, reason=message
        )
        raise ConfigRefusedError(f"The configuration was refused: {message}") from None
    await call.run(
        service.record, caller, "config.reload", "config", "ok", 200,
        restart_required=list(report.restart_required),
    )  # fmt: skip
    return report.public()


async def _upstreams(call: Call) -> dict[str, Any]:
    if call.overview is None:
        raise NotFoundError()
    return _listed(call.overview.upstreams())


def _limits(call: Call) -> dict[str, Any]:
    if call.overview is None:
        raise NotFoundError()
    return call.overview.report(call.service.usage, call.service.users())


async def _openapi(call: Call) -> dict[str, Any]:
    return description()


# -- the table -----------------------------------------------------------------------------------

_NAME = Text(128)
_NEW_NAME = Text(128, NAME_PATTERN, NAME_RULE)
_ROLE = Text(64)
_DESCRIPTION = Text(500)
_KEY_ID = Text(64)
_LAST_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: later is a mistake, not a moment
_TIME = Number(0, _LAST_TIME)
_USER_NAME = path("name", _NAME, "the user's name")
_TEAM_NAME = path("name", _NAME, "the team's name")
_KEY = path("id", _KEY_ID, "the key's id (key_...)")
_Op = Operation  # the table below gives its type: Operation[Call]

# fmt: off
OPERATIONS: tuple[Operation[Call], ...] = (
    _Op("whoami", "GET", "/whoami", _whoami, "The caller's principal and credential id",
        returns=shapes.Whoami, permission="console"),
    _Op("roles.list", "GET", "/roles", lambda c: _listed(c.service.roles()),
        "Roles with their routes, models and networks", returns=shapes.ListOf[shapes.Role]),
    _Op("users.list", "GET", "/users", lambda c: _listed(u.public() for u in c.service.users()),
        "All users and service accounts", returns=shapes.ListOf[shapes.User]),
    _Op("users.create", "POST", "/users", _create_user, "Create a user or service account",
        params=(
            body("name", _NEW_NAME, required=True),
            body("role", _ROLE, default="user"),
            body("kind", Choice(KINDS), default="user", doc="user (a person) or service"),
            body("description", _DESCRIPTION, default=""),
        ), returns=shapes.User, status=201, writes=True),
    _Op("users.show", "GET", "/users/{name}", lambda c: c.service.user(c.args["name"]).public(),
        "One user", params=(_USER_NAME,), returns=shapes.User),
    _Op("users.update", "PATCH", "/users/{name}", _update_user,
        "Change a user's role, description or state",
        params=(
            _USER_NAME,
            body("role", _ROLE),
            body("disabled", Flag(), doc="true: refuse all of the user's keys"),
            body("description", _DESCRIPTION),
        ), returns=shapes.User, writes=True),
    _Op("users.delete", "DELETE", "/users/{name}", _delete_user,
        "Delete a user with their keys", params=(_USER_NAME,), returns=shapes.Deleted,
        writes=True),
    _Op("teams.list", "GET", "/teams", lambda c: _listed(t.public() for t in c.service.teams()),
        "All teams with their members", returns=shapes.ListOf[shapes.Team]),
    _Op("teams.create", "POST", "/teams",
        lambda c: c.service.create_team(
            c.caller, c.args["name"], description=c.args["description"]
        ).public(),
        "Create a team",
        params=(
            body("name", _NEW_NAME, required=True), body("description", _DESCRIPTION, default="")
        ),
        returns=shapes.Team, status=201, writes=True),
    _Op("teams.show", "GET", "/teams/{name}", lambda c: c.service.team(c.args["name"]).public(),
        "One team", params=(_TEAM_NAME,), returns=shapes.Team),
    _Op("teams.delete", "DELETE", "/teams/{name}", _delete_team, "Delete a team",
        params=(_TEAM_NAME,), returns=shapes.Deleted, writes=True),
    _Op("teams.add", "PUT", "/teams/{team}/members/{user}",
        lambda c: c.service.add_member(c.caller, c.args["team"], c.args["user"]).public(),
        "Add a user to a team", params=(path("team", _NAME), path("user", _NAME)),
        returns=shapes.Team, writes=True),
    _Op("teams.remove", "DELETE", "/teams/{team}/members/{user}",
        lambda c: c.service.remove_member(c.caller, c.args["team"], c.args["user"]).public(),
        "Remove a user from a team", params=(path("team", _NAME), path("user", _NAME)),
        returns=shapes.Team, writes=True),
    _Op("keys.list", "GET", "/keys", _list_keys, "Keys (never a secret)",
        params=(
            query("user", _NAME, doc="only this user's keys"),
            query("include_revoked", Flag(), default=False, doc="revoked keys too"),
        ), returns=shapes.ListOf[shapes.Key], errors=(404,)),
    _Op("keys.create", "POST", "/keys", _create_key, "Issue a key to a user (shown once)",
        params=(
            body("user", _NAME, required=True),
            body("name", _NEW_NAME, default="default"),
            body("models", Strings(), doc="only these models (names or globs)"),
            body("routes", Strings(), doc="only these permissions"),
            body("networks", Strings(), doc="only from these networks (CIDR)"),
            body("expires_at", _TIME, doc="a Unix time"),
            body("expires_in", Number(0, _LAST_TIME), doc="seconds from now"),
        ), returns=shapes.IssuedKey, status=201, errors=(404,), writes=True),
    _Op("keys.show", "GET", "/keys/{id}",
        lambda c: c.service.key(c.args["id"]).public(time.time()),
        "One key, with when it was last used", params=(_KEY,), returns=shapes.Key),
    _Op("keys.revoke", "POST", "/keys/{id}/revoke",
        lambda c: c.service.revoke_key(c.caller, c.args["id"]).public(time.time()),
        "Revoke a key now", params=(_KEY,), returns=shapes.Key, writes=True),
    _Op("keys.rotate", "POST", "/keys/{id}/rotate", _rotate_key,
        "Issue a replacement; the old key keeps working for the overlap",
        params=(_KEY, body("overlap", Number(0, MAX_OVERLAP), default=3600.0, doc="seconds")),
        returns=shapes.IssuedKey, status=201, writes=True),
    _Op("audit", "GET", "/audit", _audit, "The audit trail, newest first",
        params=(
            query("since", _TIME),
            query("until", _TIME),
            query("actor", Text(200)),
            query("action", Text(64), doc="an action, or a prefix ending in '.' (key.)"),
            query("outcome", Choice(("ok", "denied", "failed"))),
            query("limit", Integer(1, 10_000), default=100),
        ), returns=shapes.ListOf[shapes.AuditEvent]),
    _Op("usage", "GET", "/usage", _usage, "Usage totals: requests and tokens",
        params=(
            query("by", Choices(GROUPS), default=("user",), doc="comma-separated groups"),
            query("period", Choice(("hour", "day", "all")), default="day"),
            query("since", _TIME),
            query("until", _TIME),
            query("user", _NAME),
            query("team", _NAME),
            query("model", Text(200)),
        ), returns=shapes.ListOf[shapes.UsageRow], permission="console"),
    _Op("upstreams", "GET", "/upstreams", _upstreams,
        "Each model's upstreams and their health, as this gateway process sees them",
        returns=shapes.ListOf[shapes.ModelUpstreams], errors=(404,), permission="console",
        blocking=False),
    _Op("limits", "GET", "/limits", _limits,
        "The configured limits, and who is nearest to a budget",
        returns=shapes.Limits, errors=(404,), permission="console"),
    _Op("reload", "POST", "/reload", _reload_config, "Re-read the config file and apply it",
        returns=shapes.Reloaded, errors=(404, 422), blocking=False),
    _Op("openapi", "GET", "/openapi.json", _openapi,
        "This API described: its OpenAPI 3.1 document", returns=shapes.OpenApiDocument,
        blocking=False),
)
# fmt: on

ROUTER = Router(OPERATIONS)


@functools.cache
def description() -> dict[str, Any]:
    """The OpenAPI document of :data:`OPERATIONS` (made once; treat it as read-only)."""
    return openapi.document(OPERATIONS)


class AdminApi:
    def __init__(
        self,
        service: AdminService,
        sync: StoreSync | None,
        reload: Reload | None = None,
        *,
        calls: StoreCalls | None = None,
        overview: Overview | None = None,
    ) -> None:
        """``calls`` runs the service's blocking store work (threads of its own, deadlines);
        without it (the CLI on a local store) a worker thread of asyncio's does."""
        self._service = service
        self._sync = sync
        self._reload = reload
        self._run: Run = calls.run if calls is not None else asyncio.to_thread
        self._overview = overview

    async def __call__(self, ctx: RequestContext) -> None:
        raw_path = ctx.scope.get("raw_path") or ctx.scope["path"].encode()
        status, payload = await self.handle(
            _caller(ctx), ctx.method, raw_path, ctx.scope.get("query_string", b""), ctx.body
        )
        await send_json(ctx, status, payload, _NO_STORE)

    async def handle(
        self, caller: Caller, method: str, raw_path: bytes, query_string: bytes, content: bytes
    ) -> tuple[int, Any]:
        """Perform one admin request, from the HTTP server or from the CLI in-process: its
        status and JSON answer. Refusals raise."""
        operation, in_path = ROUTER.find(method, raw_path)
        access = caller.access
        if access is not None and not (
            access.allows_route("admin") or access.allows_route(operation.permission)
        ):
            raise PermissionDeniedError()
        in_body = json_object(content) if content else {}
        args = operation.arguments(in_path, _query(query_string), in_body)
        call = Call(self._service, caller, args, self._reload, self._run, self._overview)
        if not operation.blocking:
            return operation.status, await operation.handler(call)
        result = await self._run(operation.handler, call)
        if operation.writes and self._sync is not None:  # this replica sees its change at once
            with contextlib.suppress(StoreUnavailableError):
                await self._sync.refresh()
        return operation.status, result


def _caller(ctx: RequestContext) -> Caller:
    identity = ctx.identity
    assert identity is not None  # authenticate ran
    address = str(ctx.address) if ctx.address is not None else ctx.client_host
    actor = Actor(identity.principal, identity.credential_id, address, ctx.request_id)
    return Caller(actor, identity.principal, ctx.access)


def _query(raw: bytes) -> dict[str, str]:
    """The query string's parameters; of one given twice, the last."""
    parsed = parse_qs(raw.decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}
