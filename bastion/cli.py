"""The ``bastion`` command. The only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from bastion import __version__, build
from bastion.admin.cli import add_commands, run_command
from bastion.auth.apikeys import display_prefix, generate_key, hash_key
from bastion.errors import BastionError, ConfigError
from bastion.policy.policy import Policy
from bastion.settings import Secret, Settings
from bastion.sources import ConfigSource, KeyPath, Sourced, dotted, load_sourced, server_flags

__all__ = ["main"]


def _version() -> str:
    """The version and the build that runs (compiled or pure Python, see :mod:`bastion.build`)."""
    return f"bastion {__version__}, {build.describe()}"


class _PrintVersion(argparse.Action):
    """argparse's own version action, without re-wrapping the line to the terminal's width."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        sys.stdout.write(_version() + "\n")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bastion", description="A secure, fast gateway for vLLM and OpenAI-compatible servers."
    )
    parser.add_argument(
        "--version", action=_PrintVersion, nargs=0, help="print the version and build, then exit"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML config file (default: embedded model)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port, 0 for any (overrides server.port)")
    serve.add_argument(
        "--workers", type=int, help="processes serving the port (overrides server.workers)"
    )

    config = commands.add_parser("config", help="work with config files")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check",
        help="validate a config and print it, masked, with where each value came from",
        description="Validate the configuration serve would run with (the file, BASTION_* "
        "environment variables and the flags given here), read every secret it names, and "
        "print the settings given with their origins, then the whole effective configuration "
        "(secrets masked).",
        epilog="exit status: 0 valid; 2 invalid (the error names the setting and its origin)",
    )
    check.add_argument("file", type=Path, nargs="?", help="YAML config file (default: none)")
    check.add_argument("--host", help="as serve's --host")
    check.add_argument("--port", type=int, help="as serve's --port")
    config_commands.add_parser(
        "schema",
        help="print the config file's JSON Schema (for editors)",
        description="Print the JSON Schema (draft 2020-12) of the config file; "
        "docs/configuration.md says how to point an editor at it.",
    )

    probe = commands.add_parser(
        "probe",
        help="show what a model server leaves open to callers without a key",
        description="Ask a running vLLM (or any model server) about each of vLLM's routes with "
        "one GET that cannot act, without a key and, with --key, with one.",
        epilog="exit status: 0 no inference or control route answers without a key; 1 some do; "
        "2 bad arguments; 3 the server did not answer",
    )
    probe.add_argument("url", help="the server, e.g. http://10.0.0.5:8000")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds per request (5)")
    probe.add_argument("--json", action="store_true", help="print JSON for scripts")
    probe.add_argument(
        "--key",
        metavar="env:NAME|file:PATH",
        help="also ask with this key, read from an environment variable or a file "
        "(never the key itself: the command line is visible to every local user)",
    )

    keys = commands.add_parser("keys", help="work with API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_commands.add_parser("generate", help="make a new key and its hash")
    generate.add_argument("--name", default="my-key", help="name for the config entry")
    generate.add_argument("--role", default="user", help="admin, operator, user, viewer or custom")
    generate.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_commands(commands, keys_commands)
    return parser


def _flags(
    host: str | None, port: int | None, workers: int | None = None
) -> dict[str, tuple[KeyPath, Any]]:
    given = {"host": host, "port": port, "workers": workers}
    return server_flags({k: v for k, v in given.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    # the environment is read again at each reload, as at start
    source = ConfigSource(args.config, _flags(args.host, args.port, args.workers))
    text = source.read()
    sourced = source.sourced(text)
    settings = sourced.settings
    if settings.server.workers > 1:
        from bastion.server.workers import supervise

        with contextlib.suppress(KeyboardInterrupt):
            return supervise(source, text, settings)
        return 0
    from bastion.server.run import run

    try:
        with contextlib.suppress(KeyboardInterrupt):
            run(settings, load=source.load, source=sourced.description)
    except BastionError as exc:
        if settings.logging.format != "json":
            raise
        # The log is JSON by now: the reason the gateway stopped is one of its lines.
        logging.getLogger("bastion").error("%s", exc)
        return 2
    return 0


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/:@]*):[^/@]*@")


WORKER_COMMAND = "_worker"
"""argv[1] of a worker process: ``bastion _worker CHANNEL_FD LISTENER_FD`` (hidden from help;
``bastion.server.children`` starts it)."""


def _worker(argv: Sequence[str]) -> int:
    """A worker started by the supervisor (``bastion.server.workers``); not for people."""
    from bastion.server.worker import run_worker

    if len(argv) != 2 or not all(fd.isdigit() for fd in argv):
        raise ConfigError(f"{WORKER_COMMAND} is started by 'bastion serve --workers N' only")
    return run_worker(int(argv[0]), int(argv[1]))


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) <= {"env", "file", "value"} and value.get("value") is not None:
            return "***"
        return {k: ("sha256:***" if k == "hash" else _masked(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)  # postgresql://user:***@host/db
    return value


def _check_secrets(settings: Settings) -> None:
    for where, secret in (
        ("store.url", settings.store.url),
        ("limits.redis.url", settings.limits.redis.url),
    ):
        if isinstance(secret, Secret):
            try:
                secret.resolve()
            except ConfigError as exc:
                raise ConfigError(str(exc), where) from None
    for name, header in settings.tracing.headers.items():
        try:
            header.resolve()
        except ConfigError as exc:
            raise ConfigError(str(exc), f"tracing.headers.{name}") from None
    for model in settings.models:
        for index, upstream in enumerate(model.upstreams):
            if isinstance(upstream.api_key, Secret):
                try:
                    upstream.api_key.resolve()
                except ConfigError as exc:
                    raise ConfigError(str(exc), f"models.{model.name}.upstreams.{index}") from None


def _config_check(args: argparse.Namespace) -> int:
    sourced = load_sourced(args.file, os.environ, _flags(args.host, args.port))
    settings = sourced.settings
    _check_secrets(settings)
    Policy(settings)  # roles, permissions and networks named in the file must exist
    effective = _masked(settings.model_dump(mode="json", exclude_none=True))
    sys.stdout.write(f"# {sourced.description}: valid\n")
    sys.stdout.write(_origins(sourced))
    sys.stdout.write(f"# to run on: {_version()}\n")
    sys.stdout.write(yaml.safe_dump(effective, sort_keys=False))
    return 0


def _origins(sourced: Sourced) -> str:
    """Comment lines: each setting given, its value (masked) and where it came from; then
    how many were left at their defaults."""
    settings = sourced.settings
    given = list(_leaves(_masked(settings.model_dump(mode="json", exclude_unset=True))))
    total = len(list(_leaves(_masked(settings.model_dump(mode="json")))))
    rows = [
        (dotted(path), _shown(value), str(sourced.origin_of(path) or "unknown"))
        for path, value in given
    ]
    defaults = max(total - len(rows), 0)
    head = f"# {len(rows)} setting{'s' if len(rows) != 1 else ''} given"
    lines = [f"{head}, {defaults} at {'their defaults' if defaults != 1 else 'its default'}:"]
    width = max((len(r[0]) for r in rows), default=0)
    value_width = min(max((len(r[1]) for r in rows), default=0), 32)
    lines += [f"#   {p:<{width}}  {v:<{value_width}}  {o}" for p, v, o in rows]
    return "\n".join(lines) + "\n"


def _leaves(value: Any, at: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Each setting in a dump: a section's keys and a list of sections' entries are
    followed; a list of values, an empty section or a masked secret is one setting."""
    if isinstance(value, dict) and (value or not at):
        for key, item in value.items():
            yield from _leaves(item, (*at, key))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            yield from _leaves(item, (*at, index))
    else:
        yield at, value


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _config_schema() -> int:
    from bastion.schema import config_schema

    sys.stdout.write(json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n")
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    key = generate_key()
    digest = hash_key(key)
    if args.json:
        out = {"key": key, "hash": digest, "prefix": display_prefix(key)}
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    sys.stdout.write(
        f"key:  {key}\n"
        f"hash: {digest}\n\n"
        "Give the key to its user (it is shown only now) and put the hash in the config:\n\n"
        "auth:\n  api_keys:\n"
        f'    - name: {args.name}\n      role: {args.role}\n      hash: "{digest}"\n'
    )
    return 0


def _key_source(given: str) -> Secret:
    kind, _, where = given.partition(":")
    if kind == "env" and where:
        return Secret(env=where)
    if kind == "file" and where:
        return Secret(file=Path(where))
    raise ConfigError("--key takes env:NAME or file:PATH, never the key itself")


def _probe(args: argparse.Namespace) -> int:
    from bastion.upstream.probe import Target, probe, render_table, to_json

    target = Target.from_url(args.url)
    if not args.timeout > 0:
        raise ConfigError("--timeout must be a positive number of seconds")
    key = _key_source(args.key).resolve() if args.key is not None else None
    report = probe(target, key=key, timeout=args.timeout)
    if args.json:
        sys.stdout.write(json.dumps(to_json(report), indent=2) + "\n")
    else:
        sys.stdout.write(render_table(report))
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [WORKER_COMMAND]:
        try:
            return _worker(argv[1:])
        except BastionError as exc:
            sys.stderr.write(f"bastion: worker: error: {exc}\n")
            return 2
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config" and args.config_command == "schema":
            return _config_schema()
        if args.command == "config":
            return _config_check(args)
        if args.command == "probe":
            return _probe(args)
        if args.command == "keys" and args.keys_command == "generate":
            return _keys_generate(args)
        return run_command(args)
    except BastionError as exc:
        sys.stderr.write(f"bastion: error: {exc}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
