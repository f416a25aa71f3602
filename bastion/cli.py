"""The ``bastion`` command. The only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bastion import __version__
from bastion.admin.cli import add_commands, run_command
from bastion.auth.apikeys import display_prefix, generate_key, hash_key
from bastion.errors import BastionError, ConfigError
from bastion.policy.policy import Policy
from bastion.settings import Secret, Settings, load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bastion", description="A secure, fast gateway for vLLM and OpenAI-compatible servers."
    )
    parser.add_argument("--version", action="version", version=f"bastion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML config file (default: embedded model)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port, 0 for any (overrides server.port)")

    config = commands.add_parser("config", help="work with config files")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config and print it, masked")
    check.add_argument("file", type=Path)

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


def _with_overrides(settings: Settings, host: str | None, port: int | None) -> Settings:
    server: dict[str, Any] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if not server:
        return settings
    data = settings.model_dump(mode="python", exclude_unset=True)
    data["server"] = {**data.get("server", {}), **server}
    return Settings.model_validate(data)


def _serve(args: argparse.Namespace) -> int:
    from bastion.server.run import run

    def load() -> Settings:
        return _with_overrides(load_settings(args.config), args.host, args.port)

    settings = load()
    with contextlib.suppress(KeyboardInterrupt):
        run(settings, load=load, source=str(args.config or "built-in defaults"))
    return 0


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) <= {"env", "file", "value"} and value.get("value") is not None:
            return "***"
        return {k: ("sha256:***" if k == "hash" else _masked(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
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
    settings = load_settings(args.file)
    _check_secrets(settings)
    Policy(settings)  # roles, permissions and networks named in the file must exist
    effective = _masked(settings.model_dump(mode="json", exclude_none=True))
    sys.stdout.write(f"# {args.file}: valid\n")
    sys.stdout.write(yaml.safe_dump(effective, sort_keys=False))
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
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
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
