"""``bastion users|teams|roles|keys|audit|usage|reload|openapi``: the admin operations from a
terminal.

Two ways to reach the store, the same commands and output either way:

- local (default): the store named by the config file (``--config``; by default the SQLite
  file in the state directory), opened directly. The operator is unrestricted and is named in
  the audit trail as ``local:<login>``.
- remote (``--url``, or ``BASTION_URL``): a running gateway's admin API, with the admin key
  from ``BASTION_API_KEY`` or ``--key-file`` (never from the command line, where other users
  of the machine could read it). The gateway applies its rules to that key's holder.

Either way a command becomes one admin API request (the operation of the same name in
:data:`bastion.admin.api.OPERATIONS`, its parameters read from the options of the same names):
remote, it is sent (:class:`~bastion.admin.client.AdminClient`); local, it is handed to the
admin API in-process. Output is a table for people, or ``--json`` for scripts.

``bastion openapi`` prints the admin API's OpenAPI document: made from the code, or with
``--url`` the one a running gateway serves.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, get_origin

from bastion.admin import openapi
from bastion.admin.api import ROUTER, AdminApi, description
from bastion.admin.client import AdminClient
from bastion.admin.operations import Operation, Request
from bastion.admin.service import AdminService, Caller
from bastion.admin.shapes import ListOf
from bastion.errors import BadRequestError, ConfigError, RemoteError
from bastion.policy.policy import Policy
from bastion.settings import Settings
from bastion.sources import load_settings
from bastion.state import StateDir
from bastion.store.store import Store, database_url
from bastion.store.usage import Prices

__all__ = ["COMMANDS", "add_commands", "parse_duration", "run_command"]

COMMANDS = ("users", "teams", "roles", "keys", "audit", "usage", "reload", "openapi")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` (or plain seconds) to seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if match is None:
        raise BadRequestError(f"{text!r} is not a duration (like 90s, 15m, 12h, 30d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_when(text: str) -> float:
    """A moment: an ISO 8601 time (UTC unless it says otherwise) or a duration from now."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return time.time() + parse_duration(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_since(text: str) -> float:
    """For ``audit --since``: an ISO time, or a duration meaning that long ago."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return time.time() - parse_duration(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# -- argument parsing -------------------------------------------------------------------------


def _target(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("which store")
    where.add_argument("--config", type=Path, help="config file naming the store (local)")
    where.add_argument("--url", help="a running gateway's URL: use its admin API (remote)")
    where.add_argument("--key-file", type=Path, help="file holding the admin key (remote)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _sub(commands: Any, name: str, help_: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_)
    _target(parser)
    return parser


def add_commands(commands: Any, key_commands: Any) -> None:
    """Add ``users``, ``teams``, ``roles``, ``audit`` and ``keys create|list|...``."""
    users = commands.add_parser("users", help="users and service accounts").add_subparsers(
        dest="action", required=True
    )
    _sub(users, "list", "list users")
    show = _sub(users, "show", "show one user")
    show.add_argument("name")
    create = _sub(users, "create", "create a user or service account")
    create.add_argument("name")
    create.add_argument("--role", default="user")
    create.add_argument(
        "--service", dest="kind", action="store_const", const="service", default="user",
        help="a service account, not a person",
    )  # fmt: skip
    create.add_argument("--description", default="")
    update = _sub(users, "update", "change a user's role, description or state")
    update.add_argument("name")
    update.add_argument("--role")
    update.add_argument("--description")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--disable", dest="disabled", action="store_const", const=True,
                       help="refuse all of the user's keys")  # fmt: skip
    state.add_argument("--enable", dest="disabled", action="store_const", const=False)
    delete = _sub(users, "delete", "delete a user and their keys")
    delete.add_argument("name")

    teams = commands.add_parser("teams", help="teams").add_subparsers(dest="action", required=True)
    _sub(teams, "list", "list teams")
    for name, help_ in (("show", "show one team"), ("delete", "delete a team")):
        _sub(teams, name, help_).add_argument("name")
    team_create = _sub(teams, "create", "create a team")
    team_create.add_argument("name")
    team_create.add_argument("--description", default="")
    for name, help_ in (("add", "add a user to a team"), ("remove", "remove a user from a team")):
        member = _sub(teams, name, help_)
        member.add_argument("team")
        member.add_argument("user")

    roles = commands.add_parser("roles", help="roles").add_subparsers(dest="action", required=True)
    _sub(roles, "list", "list roles and what they allow")

    audit = _sub(commands, "audit", "read the audit trail (newest first)")
    audit.add_argument("--since", help="ISO time or how long ago (1h, 7d)")
    audit.add_argument("--until", help="ISO time or how long ago")
    audit.add_argument("--actor")
    audit.add_argument("--action", help="an action, or a prefix ending in '.' (key.)")
    audit.add_argument("--outcome", choices=("ok", "denied", "failed"))
    audit.add_argument("--limit", type=int, default=50)

    usage = _sub(commands, "usage", "who used how much: requests and tokens")
    usage.add_argument("--by", default="user", help="user, key, team, model (comma-separated)")
    usage.add_argument("--period", choices=("hour", "day", "all"), default="day")
    usage.add_argument("--since", help="ISO time or how long ago (default: 7d)", default="7d")
    usage.add_argument("--until", help="ISO time or how long ago")
    usage.add_argument("--user")
    usage.add_argument("--team")
    usage.add_argument("--model")
    usage.add_argument("--csv", action="store_true", help="print CSV")

    _sub(commands, "reload", "make a running gateway re-read its config file (needs --url)")
    described = commands.add_parser("openapi", help="print the admin API's OpenAPI document")
    described.add_argument("--url", help="a running gateway's URL: print the document it serves")
    described.add_argument("--key-file", type=Path, help="file holding the admin key (with --url)")

    key_create = _sub(key_commands, "create", "issue a key to a user (shown once)")
    key_create.add_argument("--user", required=True)
    key_create.add_argument("--name", default="default")
    key_create.add_argument("--models", nargs="+", help="only these models (names or globs)")
    key_create.add_argument("--routes", nargs="+", help="only these permissions (chat, ...)")
    key_create.add_argument("--networks", nargs="+", help="only from these networks (CIDR)")
    key_create.add_argument(
        "--expires", dest="expires_at", metavar="WHEN", help="ISO time or duration from now (30d)"
    )
    key_list = _sub(key_commands, "list", "list keys")
    key_list.add_argument("--user")
    key_list.add_argument(
        "--all", dest="include_revoked", action="store_true", help="include revoked keys"
    )
    for name, help_ in (("show", "show one key"), ("revoke", "revoke a key now")):
        _sub(key_commands, name, help_).add_argument("id")
    rotate = _sub(key_commands, "rotate", "issue a replacement; the old key works for --overlap")
    rotate.add_argument("id")
    rotate.add_argument("--overlap", default="1h", help="how long the old key keeps working")


# -- from a command line to a request, and where it goes ---------------------------------------

_READ_AS: dict[str, Callable[[str], float]] = {
    "since": parse_since,
    "until": parse_since,
    "expires_at": parse_when,
    "overlap": parse_duration,
}
"""Parameters the command line gives in words (``7d``, ``1h``, an ISO time), read here."""


def _request(operation: Operation[Any], args: argparse.Namespace) -> Request:
    """The admin request for a command line: each of the operation's parameters is the
    option (or argument) of the same name."""
    values: dict[str, Any] = {}
    for param in operation.params:
        value = getattr(args, param.name, None)
        if isinstance(value, str) and param.name in _READ_AS:
            value = _READ_AS[param.name](value)
        values[param.name] = value
    return operation.request(values)


class _Local:
    """Requests handed to the admin API in-process, on the store itself, as the unrestricted
    local operator."""

    def __init__(self, settings: Settings) -> None:
        if not settings.store.enabled:
            raise ConfigError("the store is disabled in this config", "store.enabled")
        state = StateDir(settings.state_path())
        url = database_url(settings.store, state.path)
        if url.startswith("sqlite"):
            state.ensure()
        self._store = Store.open(url, settings.store)
        service = AdminService(self._store, Policy(settings), Prices.of(settings.usage))
        self._api = AdminApi(service, None)
        self._caller = Caller.local(f"local:{_login()}")

    def close(self) -> None:
        self._store.close()

    def __call__(self, request: Request) -> Any:
        handled = self._api.handle(
            self._caller, request.method, request.path.encode(), request.query.encode(),
            request.body,
        )  # fmt: skip
        return asyncio.run(handled)[1]


class _Remote:
    """The same requests sent to a running gateway's admin API."""

    def __init__(self, client: AdminClient) -> None:
        self._client = client

    def close(self) -> None:
        pass

    def __call__(self, request: Request) -> Any:
        return self._client.send(request)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# -- output ----------------------------------------------------------------------------------


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _listed(value: Sequence[str] | None) -> str:
    return "*" if value is None else ",".join(value)


_COLUMNS: dict[str, list[tuple[str, Callable[[dict[str, Any]], str]]]] = {
    "users": [
        ("NAME", lambda r: r["name"]),
        ("KIND", lambda r: r["kind"]),
        ("ROLE", lambda r: r["role"]),
        ("TEAMS", lambda r: ",".join(r["teams"]) or "-"),
        ("STATE", lambda r: "disabled" if r["disabled"] else "enabled"),
        ("CREATED", lambda r: _when(r["created_at"])),
    ],
    "teams": [
        ("NAME", lambda r: r["name"]),
        ("MEMBERS", lambda r: ",".join(r["members"]) or "-"),
        ("DESCRIPTION", lambda r: r["description"] or "-"),
    ],
    "roles": [
        ("NAME", lambda r: r["name"] + ("" if r["builtin"] else " (custom)")),
        ("ROUTES", lambda r: ",".join(r["routes"])),
        ("MODELS", lambda r: ",".join(r["models"])),
        ("NETWORKS", lambda r: _listed(r["networks"])),
    ],
    "keys": [
        ("ID", lambda r: r["id"]),
        ("USER", lambda r: r["user"]),
        ("NAME", lambda r: r["name"]),
        ("PREFIX", lambda r: r["prefix"] + "…"),
        ("STATE", lambda r: r["state"]),
        ("EXPIRES", lambda r: _when(r["expires_at"])),
        ("LAST USED", lambda r: _when(r["last_used_at"])),
        ("MODELS", lambda r: _listed(r["models"])),
        ("ROUTES", lambda r: _listed(r["routes"])),
    ],
    "audit": [
        ("TIME", lambda r: _when(r["at"])),
        ("ACTOR", lambda r: r["actor"]),
        ("ACTION", lambda r: r["action"]),
        ("TARGET", lambda r: r["target"]),
        ("OUTCOME", lambda r: r["outcome"] + (f" {r['status']}" if r["status"] else "")),
        ("FROM", lambda r: r["address"]),
        ("DETAIL", lambda r: "-" if not r["detail"] else json.dumps(r["detail"], sort_keys=True)),
    ],
}


_USAGE_TOTALS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
                 "mean_latency_ms", "cost", "currency", "unpriced_tokens")  # fmt: skip


def _usage_columns(
    rows: Sequence[dict[str, Any]],
) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    first = rows[0] if rows else {}
    names = [n for n in first if n not in _USAGE_TOTALS] + [n for n in _USAGE_TOTALS if n in first]
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    for name in names:
        columns.append((name.upper().replace("_", " "), _cell(name)))
    return columns


def _cell(name: str) -> Callable[[dict[str, Any]], str]:
    if name == "period":
        return lambda row: _when(row["period"])
    if name == "cost":
        return lambda row: f"{row['cost']:.6f}"
    return lambda row: str(row[name])


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def table(kind: str, rows: Sequence[dict[str, Any]]) -> str:
    columns = _usage_columns(rows) if kind == "usage" else _COLUMNS[kind]
    cells = [[h for h, _ in columns], *([get(r) for _, get in columns] for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in cells
    )


def _show(
    out: TextIO, kind: str, op: str, result: Any, as_json: bool, as_csv: bool = False
) -> None:
    if as_csv:
        out.write(_csv(result))
        return
    if as_json:
        out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return
    if isinstance(result, list):
        out.write(table(kind, result) if result else f"no {kind}\n")
        return
    if isinstance(result, dict) and "secret" in result:
        key = result["key"]
        out.write(
            f"{key['id']}  user={key['user']}  name={key['name']}  "
            f"expires={_when(key['expires_at'])}\n\n"
            f"    {result['secret']}\n\n"
            "This key is shown only now; Bastion keeps its hash. Give it to its holder.\n"
        )
        return
    if op == "reload":
        restart = result["restart_required"]
        out.write(
            f"reloaded {result['source']}: serving {', '.join(result['models'])}\n"
            + (f"needs a restart to take effect: {', '.join(restart)}\n" if restart else "")
        )
        return
    if isinstance(result, dict) and result.get("deleted"):
        out.write(f"deleted {result['name']}\n")
        return
    out.write(table(kind, [result]))


def run_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one of :data:`COMMANDS` (or ``keys create|list|show|revoke|rotate``)."""
    out = sys.stdout if out is None else out  # looked up now, not when the module was imported
    kind = args.command
    if kind == "openapi":  # only with --url: BASTION_URL must not change a generated file
        described = description() if args.url is None else _remote(args.url, args).call(kind)
        out.write(openapi.render(described))
        return 0
    op = (
        kind
        if kind in ("audit", "usage", "reload")
        else f"{kind}.{args.action if kind != 'keys' else args.keys_command}"
    )
    if op == "reload" and not (args.url or os.environ.get("BASTION_URL")):
        raise RemoteError(
            "reload talks to a running gateway: give --url (or BASTION_URL), "
            "or send the gateway's process SIGHUP"
        )
    operation = ROUTER.by_name[op]
    request = _request(operation, args)
    backend = _backend(args)
    try:
        result = backend(request)
    finally:
        backend.close()
    if get_origin(operation.returns) is ListOf:
        result = result["data"]
    _show(out, kind, op, result, args.json, getattr(args, "csv", False))
    return 0


def _backend(args: argparse.Namespace) -> _Local | _Remote:
    url = args.url or os.environ.get("BASTION_URL")
    if url is None:
        return _Local(load_settings(args.config, os.environ))
    return _Remote(_remote(url, args))


def _remote(url: str, args: argparse.Namespace) -> AdminClient:
    """The client of the gateway at ``url``, with the admin key from ``--key-file`` or
    ``BASTION_API_KEY``."""
    if args.key_file is not None:
        try:
            key = args.key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RemoteError(f"cannot read {args.key_file}: {exc.strerror}") from None
    else:
        key = os.environ.get("BASTION_API_KEY", "")
    if not key:
        raise RemoteError("give the admin key in BASTION_API_KEY or with --key-file")
    return AdminClient(url, key)
