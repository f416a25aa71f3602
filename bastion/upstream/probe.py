"""``bastion probe``: what a model server leaves open to callers without a key, from outside.

For every route of vLLM's inventory (:mod:`bastion.upstream.vllm_api`) the probe sends one
request that cannot act: ``GET``, whatever the route's own method, with no body. A route
served by GET is read-only in vLLM; a route without GET is never sent its own method.

    answer      GET route            route without GET          WebSocket route
    2xx         open                 open                       open
    400 422     open                 open                       open
    401 403     needs key            needs key                  needs key
    404         absent (*)           absent                     absent
    405         unknown              open (**)                  unknown
    other       unknown              unknown                    unknown

(*) unknown for a route with a path parameter: a made-up id is as absent as the route.
(**) vLLM checks its key in a middleware before routing, so a 405 means the key check let
the request through. A server that checks keys in its handlers (FastAPI dependencies, as
llama.cpp's server does) answers 405 before looking at any key, so there a 405 says nothing:
when a GET route asks for a key while a made-up path under ``/v1`` is a plain 404 (no
middleware guards the prefix), 405s are "unknown".

With a key (``--key``), each route is asked again with it, to show what the key opens: an
answer that was 401 or 403 without the key and is anything else with it means the key
passed. The key is sent to the probed server only, never printed.
"""

from __future__ import annotations

import http.client
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from bastion import __version__
from bastion.errors import ConfigError
from bastion.upstream.vllm_api import ROUTES, VLLM_VERSION, Kind, VllmRoute

__all__ = [
    "CANARY",
    "EXIT_CLEAN",
    "EXIT_OPEN",
    "EXIT_UNREACHABLE",
    "Answer",
    "Finding",
    "Report",
    "Target",
    "Verdict",
    "ask",
    "probe",
    "render_table",
    "to_json",
]

EXIT_CLEAN = 0
"""No inference or control route answered without a key."""
EXIT_OPEN = 1
"""Some inference or control route answered without a key."""
EXIT_UNREACHABLE = 3
"""The server could not be asked at all (2 is the command's own usage or config error)."""

CANARY = "/v1/bastion-probe-absent"
"""A path no server has, under vLLM's guarded ``/v1``: 401 there means a key check runs
before routing."""

_KEY_REFUSED = frozenset({401, 403})
_ANSWERED = frozenset({400, 422})
"""Statuses of a request the server judged itself: no key check stopped it."""


class Verdict(StrEnum):
    OPEN = "open"
    NEEDS_KEY = "needs key"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send the probes: ``http(s)://host[:port][/base]``, nothing else."""

    scheme: str
    host: str
    port: int
    base: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"probe: {url!r} is not an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ConfigError("probe: no credentials in the URL; give a key with --key")
        if parts.query or parts.fragment:
            raise ConfigError("probe: the URL takes no query or fragment")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"probe: {url!r} has an invalid port") from None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base}"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None = None
    failure: str | None = None
    """Why there is no status: ``timeout``, ``connection refused``, ..."""

    def __str__(self) -> str:
        return str(self.status) if self.status is not None else self.failure or "-"


Asker = Callable[[Target, str, str | None, float], Answer]


def ask(target: Target, path: str, key: str | None, timeout: float) -> Answer:
    """One ``GET`` without a body on a fresh connection; only the status is read."""
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        context = ssl.create_default_context()
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    headers = {"User-Agent": f"bastion-probe/{__version__}", "Connection": "close"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request("GET", target.base + path, headers=headers)
        return Answer(connection.getresponse().status)
    except TimeoutError:
        return Answer(failure="timeout")
    except ConnectionRefusedError:
        return Answer(failure="connection refused")
    except ssl.SSLError as exc:
        return Answer(failure=f"TLS: {exc.reason or 'handshake failed'}")
    except http.client.HTTPException:
        return Answer(failure="no valid HTTP answer")
    except OSError as exc:
        return Answer(failure=exc.strerror or type(exc).__name__)
    finally:
        connection.close()


@dataclass(frozen=True, slots=True)
class Finding:
    route: VllmRoute
    answer: Answer
    verdict: Verdict
    keyed: Answer | None = None
    keyed_verdict: Verdict | None = None

    @property
    def exposed(self) -> bool:
        """An inference or control route that answers without a key."""
        return self.verdict is Verdict.OPEN and self.route.kind is not Kind.INFO


@dataclass(frozen=True, slots=True)
class Report:
    target: Target
    findings: tuple[Finding, ...] = ()
    keys_before_routing: bool = False
    """A made-up path under ``/v1`` needs a key: a middleware checks before routing."""
    keys_in_handlers: bool = False
    """Keys are checked by the routes themselves, so a 405 tells nothing about a key."""
    unreachable: str | None = None

    @property
    def exposed(self) -> list[Finding]:
        return [f for f in self.findings if f.exposed]

    @property
    def exit_code(self) -> int:
        if self.unreachable is not None:
            return EXIT_UNREACHABLE
        return EXIT_OPEN if self.exposed else EXIT_CLEAN


def _verdict(route: VllmRoute, answer: Answer, keys_in_handlers: bool) -> Verdict:
    status = answer.status
    if status is None:
        return Verdict.UNKNOWN
    if status in _KEY_REFUSED:
        return Verdict.NEEDS_KEY
    if status == 404:
        return (
            Verdict.UNKNOWN if route.has_parameters and "GET" in route.methods else Verdict.ABSENT
        )
    if status == 405:
        if "GET" in route.methods or route.websocket or keys_in_handlers:
            return Verdict.UNKNOWN
        return Verdict.OPEN
    if 200 <= status < 300 or status in _ANSWERED:
        return Verdict.OPEN
    return Verdict.UNKNOWN


def _keyed_verdict(route: VllmRoute, plain: Answer, keyed: Answer, in_handlers: bool) -> Verdict:
    """With the key: did it open the route? A 401 that the key turns into anything but a
    refusal or a 404 shows the key passed, whatever the status."""
    passed = keyed.status is not None and keyed.status not in _KEY_REFUSED | {404}
    if passed and plain.status in _KEY_REFUSED:
        return Verdict.OPEN
    return _verdict(route, keyed, in_handlers)


def probe(
    target: Target,
    *,
    key: str | None = None,
    timeout: float = 5.0,
    routes: Sequence[VllmRoute] = ROUTES,
    asker: Asker = ask,
) -> Report:
    """Ask the server about every route, without a key (and with ``key`` when given)."""
    canary = asker(target, CANARY, None, timeout)
    if canary.status is None:
        return Report(target, unreachable=str(canary))
    answers = [(r, asker(target, r.sample_path(), None, timeout)) for r in routes]
    before_routing = canary.status in _KEY_REFUSED
    in_handlers = not before_routing and any(
        "GET" in r.methods and a.status in _KEY_REFUSED for r, a in answers
    )
    findings = []
    for route, answer in answers:
        verdict = _verdict(route, answer, in_handlers)
        if key is None:
            findings.append(Finding(route, answer, verdict))
            continue
        keyed = asker(target, route.sample_path(), key, timeout)
        keyed_verdict = _keyed_verdict(route, answer, keyed, in_handlers)
        findings.append(Finding(route, answer, verdict, keyed, keyed_verdict))
    return Report(target, tuple(findings), before_routing, in_handlers)


def _keyed_text(verdict: Verdict | None) -> str:
    return "key refused" if verdict is Verdict.NEEDS_KEY else str(verdict)


def render_table(report: Report) -> str:
    """The report for a person: one line per route, then what it means."""
    if report.unreachable is not None:
        return f"{report.target}: no answer ({report.unreachable})\n"
    keyed = any(f.keyed is not None for f in report.findings)
    rows = [["route", "kind", "answer", "verdict"] + (["with key", "verdict"] if keyed else [])]
    for f in report.findings:
        row = [f.route.name, str(f.route.kind), str(f.answer), str(f.verdict)]
        if keyed:
            row += [str(f.keyed), _keyed_text(f.keyed_verdict)]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"{report.target}: vLLM {VLLM_VERSION}'s routes, each asked with one GET (nothing sent "
        "can act)",
        "",
        *("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows),
        "",
        *_summary(report),
    ]
    return "\n".join(lines) + "\n"


def _summary(report: Report) -> list[str]:
    counts = Counter(f.verdict for f in report.findings)
    lines = [", ".join(f"{counts[v]} {v}" for v in Verdict)]
    if report.keys_in_handlers:
        lines.append(
            "This server checks keys in its handlers: a 405 to a GET cannot show whether a "
            "POST needs a key, so those routes are 'unknown'."
        )
    exposed = report.exposed
    if exposed:
        names = ", ".join(f.route.name for f in exposed)
        lines.append(f"OPEN WITHOUT A KEY: {len(exposed)} inference or control routes: {names}")
    else:
        lines.append("No inference or control route answers without a key.")
    return lines


def to_json(report: Report) -> dict[str, Any]:
    """The report for a program (``--json``)."""
    if report.unreachable is not None:
        return {
            "url": str(report.target),
            "unreachable": report.unreachable,
            "exit_code": report.exit_code,
        }
    routes = []
    for f in report.findings:
        entry: dict[str, Any] = {
            "route": f.route.name,
            "kind": str(f.route.kind),
            "bastion": str(f.route.decision),
            "sent": f"GET {f.route.sample_path()}",
            "answer": f.answer.status if f.answer.status is not None else f.answer.failure,
            "verdict": str(f.verdict),
        }
        if f.keyed is not None:
            keyed = f.keyed
            entry["with_key"] = {
                "answer": keyed.status if keyed.status is not None else keyed.failure,
                "verdict": str(f.keyed_verdict),
            }
        routes.append(entry)
    return {
        "url": str(report.target),
        "vllm_version": VLLM_VERSION,
        "keys_before_routing": report.keys_before_routing,
        "keys_in_handlers": report.keys_in_handlers,
        "routes": routes,
        "open": [f.route.name for f in report.exposed],
        "exit_code": report.exit_code,
    }
