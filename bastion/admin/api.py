"""The admin HTTP API, under ``/admin/v1``: users, teams, roles, keys and the audit trail.

Only callers whose access includes the ``admin`` permission get here (the route table says so
and ``authorize`` enforces it); what each of them may then do is decided by
:class:`~bastion.admin.service.AdminService`. Responses are JSON and never cached; a created or
rotated key's secret appears once, in the response that created it.

::

    GET    /admin/v1/whoami
    GET    /admin/v1/roles
    GET    /admin/v1/users                     POST /admin/v1/users
    GET    /admin/v1/users/{name}              PATCH, DELETE the same
    GET    /admin/v1/teams                     POST /admin/v1/teams
    GET    /admin/v1/teams/{name}              DELETE the same
    PUT    /admin/v1/teams/{name}/members/{user}   DELETE the same
    GET    /admin/v1/keys[?user=&include_revoked=true]   POST /admin/v1/keys
    GET    /admin/v1/keys/{id}
    POST   /admin/v1/keys/{id}/revoke          POST /admin/v1/keys/{id}/rotate
    GET    /admin/v1/audit[?since=&until=&actor=&action=&outcome=&limit=]
    GET    /admin/v1/usage[?by=user,model&period=hour|day|all&since=&until=&user=&team=&model=]
    POST   /admin/v1/reload                    (re-read the config file and apply it)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from bastion.admin.reloading import ReloadReport
from bastion.admin.service import AdminService, Caller
from bastion.errors import (
    BadRequestError,
    BastionError,
    ConfigRefusedError,
    MethodNotAllowedError,
    NotFoundError,
    StoreUnavailableError,
)
from bastion.pipeline.accept import json_object
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import canonical_path
from bastion.pipeline.responses import send_json
from bastion.store.calls import StoreCalls
from bastion.store.records import Actor, AuditQuery, StoredKey
from bastion.store.sync import StoreSync
from bastion.store.usage import UsageQuery

__all__ = ["PREFIX", "AdminApi"]

PREFIX = "/admin/v1"
_NO_STORE = ((b"cache-control", b"no-store"),)

Handler = Callable[["_Call"], Awaitable[tuple[int, Any]]]


class _Call:
    """One admin request: who, which path parameters, the body and the query."""

    __slots__ = ("body", "caller", "params", "query")

    def __init__(
        self, caller: Caller, params: list[str], body: dict[str, Any], query: dict[str, str]
    ) -> None:
        self.caller = caller
        self.params = params
        self.body = body
        self.query = query

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.body.get(name, default)
        if value is None:
            if required:
                raise BadRequestError(f"'{name}' is required.", param=name)
            return None
        if not isinstance(value, str):
            raise BadRequestError(f"'{name}' must be a string.", param=name)
        return value

    def number(self, name: str) -> float | None:
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestError(f"'{name}' must be a number.", param=name)
        return float(value)

    def strings(self, name: str) -> list[str] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequestError(f"'{name}' must be a list of strings.", param=name)
        return value


Reload = Callable[[], Awaitable[ReloadReport]]


class AdminApi:
    def __init__(
        self,
        service: AdminService,
        sync: StoreSync | None,
        reload: Reload | None = None,
        *,
        calls: StoreCalls,
    ) -> None:
        """``calls`` runs the service's blocking store work (threads of its own, deadlines)."""
        self._service = service
        self._calls = calls
        self._sync = sync
        self._reload = reload
        s = self._service
        # (method, shape) -> handler; a shape is the path's segments with ``*`` for a value
        self._table: dict[tuple[str, tuple[str, ...]], Handler] = {
            ("GET", ("whoami",)): self._whoami,
            ("GET", ("roles",)): self._read(lambda c: {"data": s.roles()}),
            ("GET", ("users",)): self._read(lambda c: _data(u.public() for u in s.users())),
            ("POST", ("users",)): self._create_user,
            ("GET", ("users", "*")): self._read(lambda c: s.user(c.params[0]).public()),
            ("PATCH", ("users", "*")): self._update_user,
            ("DELETE", ("users", "*")): self._delete_user,
            ("GET", ("teams",)): self._read(lambda c: _data(t.public() for t in s.teams())),
            ("POST", ("teams",)): self._create_team,
            ("GET", ("teams", "*")): self._read(lambda c: s.team(c.params[0]).public()),
            ("DELETE", ("teams", "*")): self._delete_team,
            ("PUT", ("teams", "*", "members", "*")): self._add_member,
            ("DELETE", ("teams", "*", "members", "*")): self._remove_member,
            ("GET", ("keys",)): self._read(self._list_keys),
            ("POST", ("keys",)): self._create_key,
            ("GET", ("keys", "*")): self._read(lambda c: s.key(c.params[0]).public(time.time())),
            ("POST", ("keys", "*", "revoke")): self._revoke_key,
            ("POST", ("keys", "*", "rotate")): self._rotate_key,
            ("GET", ("audit",)): self._read(self._audit),
            ("GET", ("usage",)): self._read(lambda c: _data(s.usage(usage_query(c.query)))),
            ("POST", ("reload",)): self._reload_config,
        }
        self._shapes = {shape for _, shape in self._table}

    async def __call__(self, ctx: RequestContext) -> None:
        path = canonical_path(ctx.scope.get("raw_path") or ctx.scope["path"].encode()) or ""
        segments = [x for x in path.removeprefix(PREFIX).split("/") if x]
        shape, params = self._shape(segments)
        handler = self._table.get((ctx.method, shape)) if shape is not None else None
        if handler is None:
            if shape is None:
                raise NotFoundError()
            allowed = sorted(m for m, s in self._table if s == shape)
            raise MethodNotAllowedError(headers=((b"allow", ", ".join(allowed).encode()),))
        status, payload = await handler(_Call(_caller(ctx), params, _body(ctx), _query(ctx)))
        await send_json(ctx, status, payload, _NO_STORE)

    def _shape(self, segments: list[str]) -> tuple[tuple[str, ...] | None, list[str]]:
        for shape in self._shapes:
            if len(shape) != len(segments):
                continue
            if all(s == "*" or s == seg for s, seg in zip(shape, segments, strict=True)):
                params = [seg for s, seg in zip(shape, segments, strict=True) if s == "*"]
                return shape, params
        return None, []

    # -- plumbing ---------------------------------------------------------------------------

    def _read(self, work: Callable[[_Call], Any]) -> Handler:
        async def handler(call: _Call) -> tuple[int, Any]:
            return 200, await self._calls.run(work, call)

        return handler

    async def _write(self, status: int, work: Callable[[], Any]) -> tuple[int, Any]:
        result = await self._calls.run(work)
        if self._sync is not None:  # this replica sees its own change at once
            with contextlib.suppress(StoreUnavailableError):
                await self._sync.refresh()
        return status, result

    # -- handlers ---------------------------------------------------------------------------

    async def _whoami(self, call: _Call) -> tuple[int, Any]:
        caller = call.caller
        return 200, {"principal": caller.principal, "credential": caller.actor.credential}

    async def _create_user(self, call: _Call) -> tuple[int, Any]:
        name = call.text("name", required=True)
        role = call.text("role", default="user")
        kind = call.text("kind", default="user")
        description = call.text("description", default="")
        assert name is not None and role is not None and kind is not None
        return await self._write(
            201,
            lambda: self._service.create_user(
                call.caller, name, role=role, kind=kind, description=description or ""
            ).public(),
        )

    async def _update_user(self, call: _Call) -> tuple[int, Any]:
        disabled = call.body.get("disabled")
        if disabled is not None and not isinstance(disabled, bool):
            raise BadRequestError("'disabled' must be true or false.", param="disabled")
        role = call.text("role")
        description = call.text("description")
        return await self._write(
            200,
            lambda: self._service.update_user(
                call.caller, call.params[0], role=role, disabled=disabled, description=description
            ).public(),
        )

    async def _delete_user(self, call: _Call) -> tuple[int, Any]:
        name = call.params[0]

        def work() -> dict[str, Any]:
            self._service.delete_user(call.caller, name)
            return {"name": name, "deleted": True}

        return await self._write(200, work)

    async def _create_team(self, call: _Call) -> tuple[int, Any]:
        name = call.text("name", required=True)
        description = call.text("description", default="") or ""
        assert name is not None
        return await self._write(
            201,
            lambda: self._service.create_team(call.caller, name, description=description).public(),
        )

    async def _delete_team(self, call: _Call) -> tuple[int, Any]:
        name = call.params[0]

        def work() -> dict[str, Any]:
            self._service.delete_team(call.caller, name)
            return {"name": name, "deleted": True}

        return await self._write(200, work)

    async def _add_member(self, call: _Call) -> tuple[int, Any]:
        team, user = call.params
        return await self._write(
            200, lambda: self._service.add_member(call.caller, team, user).public()
        )

    async def _remove_member(self, call: _Call) -> tuple[int, Any]:
        team, user = call.params
        return await self._write(
            200, lambda: self._service.remove_member(call.caller, team, user).public()
        )

    def _list_keys(self, call: _Call) -> dict[str, Any]:
        owner = call.query.get("user")
        revoked = call.query.get("include_revoked", "false").lower() in ("1", "true", "yes")
        now = time.time()
        return _data(k.public(now) for k in self._service.keys(owner, include_revoked=revoked))

    async def _create_key(self, call: _Call) -> tuple[int, Any]:
        owner = call.text("user", required=True)
        name = call.text("name", default="default")
        expires_at = call.number("expires_at")
        expires_in = call.number("expires_in")
        if expires_at is not None and expires_in is not None:
            raise BadRequestError("Give expires_at or expires_in, not both.", param="expires_in")
        if expires_in is not None:
            expires_at = time.time() + expires_in
        models, routes, networks = (call.strings(n) for n in ("models", "routes", "networks"))
        assert owner is not None and name is not None

        def work() -> dict[str, Any]:
            key, secret = self._service.create_key(
                call.caller, owner, name=name, models=models, routes=routes,
                networks=networks, expires_at=expires_at,
            )  # fmt: skip
            return _issued(key, secret)

        return await self._write(201, work)

    async def _revoke_key(self, call: _Call) -> tuple[int, Any]:
        key_id = call.params[0]
        return await self._write(
            200, lambda: self._service.revoke_key(call.caller, key_id).public(time.time())
        )

    async def _rotate_key(self, call: _Call) -> tuple[int, Any]:
        key_id = call.params[0]
        overlap = call.number("overlap")
        overlap = 3600.0 if overlap is None else overlap

        def work() -> dict[str, Any]:
            key, secret = self._service.rotate_key(call.caller, key_id, overlap=overlap)
            return _issued(key, secret)

        return await self._write(201, work)

    async def _reload_config(self, call: _Call) -> tuple[int, Any]:
        if self._reload is None:
            raise NotFoundError()
        await self._calls.run(self._service.may_reload, call.caller)
        try:
            report = await self._reload()
        except BastionError as exc:
            message = str(exc)
            await self._calls.run(
                self._service.record, call.caller, "config.reload", "config", "failed", 422,
                reason=message,
            )  # fmt: skip
            raise ConfigRefusedError(f"The configuration was refused: {message}") from None
        await self._calls.run(
            self._service.record, call.caller, "config.reload", "config", "ok", 200,
            restart_required=list(report.restart_required),
        )  # fmt: skip
        return 200, report.public()

    def _audit(self, call: _Call) -> dict[str, Any]:
        q = call.query
        try:
            query = AuditQuery(
                since=float(q["since"]) if "since" in q else None,
                until=float(q["until"]) if "until" in q else None,
                actor=q.get("actor"),
                action=q.get("action"),
                outcome=q.get("outcome"),
                limit=int(q.get("limit", "100")),
            )
        except ValueError:
            raise BadRequestError("since and until are Unix times; limit a number.") from None
        return _data(e.public() for e in self._service.audit(query))


def _data(items: Any) -> dict[str, Any]:
    return {"object": "list", "data": list(items)}


def _issued(key: StoredKey, secret: str) -> dict[str, Any]:
    return {"key": key.public(time.time()), "secret": secret}


def _caller(ctx: RequestContext) -> Caller:
    identity = ctx.identity
    assert identity is not None  # authenticate ran
    address = str(ctx.address) if ctx.address is not None else ctx.client_host
    actor = Actor(identity.principal, identity.credential_id, address, ctx.request_id)
    return Caller(actor, identity.principal, ctx.access)


def _body(ctx: RequestContext) -> dict[str, Any]:
    return json_object(ctx.body) if ctx.body else {}


def _query(ctx: RequestContext) -> dict[str, str]:
    raw = ctx.scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def usage_query(query: dict[str, str]) -> UsageQuery:
    """A usage report's parameters, from a query string (or the CLI's options)."""
    period = query.get("period", "day")
    if period not in ("hour", "day", "all"):
        raise BadRequestError("period is hour, day or all", param="period")
    try:
        since = float(query["since"]) if query.get("since") else None
        until = float(query["until"]) if query.get("until") else None
    except ValueError:
        raise BadRequestError("since and until are Unix times.") from None
    return UsageQuery(
        by=tuple(b for b in query.get("by", "user").split(",") if b),
        period=period,  # type: ignore[arg-type]
        since=since,
        until=until,
        user=query.get("user") or None,
        team=query.get("team") or None,
        model=query.get("model") or None,
    )
