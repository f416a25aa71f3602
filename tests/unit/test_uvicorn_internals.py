"""What Bastion's server takes from uvicorn, uvloop and asyncio beyond their documented API,
listed and checked against the installed versions.

``bastion/server/protocol.py`` subclasses uvicorn's httptools protocol and puts the loop's own
TLS layer under it; ``bastion/server/run.py`` subclasses ``uvicorn.Server``. Both lean on
names that are not public API, so pyproject.toml pins uvicorn, uvloop and httptools to
versions that pass this file. After an upgrade that fails here, re-check the Bastion code the
failure names (docs/architecture.md lists every item and why it is used), then update the
expectation here, in one commit with the fix.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import inspect
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import httptools
import pytest
import trustme
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from bastion.server.cycle import Cycle
from bastion.server.protocol import GuardedHttpToolsProtocol, protocol_class
from bastion.settings import HttpSettings
from bastion.types import DOWNSTREAM_SCOPE_KEY, Message, Receive, Scope, Send
from tests.support.tls import client_context

PROTOCOL = "bastion/server/protocol.py GuardedHttpToolsProtocol"
SERVER = "bastion/server/run.py _Server"

# (owner, name, parameters as (name=default), what Bastion does with it)
CALLABLES: list[tuple[Any, str, str, str]] = [
    (HttpToolsProtocol, "__init__", "(self, config, server_state, app_state, _loop=None)",
     f"{PROTOCOL}.__init__ passes uvicorn's arguments through, then adds its own state"),
    (HttpToolsProtocol, "connection_made", "(self, transport)",
     f"{PROTOCOL}._ready calls it once a connection is ready for HTTP (after TLS)"),
    (HttpToolsProtocol, "connection_lost", "(self, exc)", f"{PROTOCOL}.connection_lost"),
    (HttpToolsProtocol, "pause_writing", "(self)", f"{PROTOCOL}.pause_writing"),
    (HttpToolsProtocol, "resume_writing", "(self)", f"{PROTOCOL}.resume_writing"),
    (HttpToolsProtocol, "on_message_begin", "(self)", f"{PROTOCOL}.on_message_begin"),
    (HttpToolsProtocol, "on_headers_complete", "(self)",
     f"{PROTOCOL}.on_headers_complete re-implements it (making Bastion's Cycle)"),
    (HttpToolsProtocol, "_start_asgi_task", "(self, cycle, app)",
     f"{PROTOCOL}._start_cycle starts the request's task with it"),
    (HttpToolsProtocol, "data_received", "(self, data)",
     f"{PROTOCOL}.data_received re-implements it"),
    (HttpToolsProtocol, "on_url", "(self, url)", f"{PROTOCOL}.on_url re-implements it"),
    (HttpToolsProtocol, "on_header", "(self, name, value)",
     f"{PROTOCOL}.on_header re-implements it"),
    (HttpToolsProtocol, "_unset_keepalive_if_required", "(self)",
     f"{PROTOCOL}.data_received calls this private method, as uvicorn's own does"),
    (uvicorn.Server, "__init__", "(self, config)", f"{SERVER}.__init__"),
    (uvicorn.Server, "serve", "(self, sockets=None)", "bastion/server/run.py serve() awaits it"),
    (uvicorn.Server, "capture_signals", "(self)",
     f"{SERVER}.capture_signals replaces it (no signal re-raised after the shut-down)"),
    (uvicorn.Server, "handle_exit", "(self, sig, frame)",
     f"{SERVER}._on_signal calls it for SIGINT and SIGTERM"),
    (asyncio.sslproto.SSLProtocol, "__init__",
     "(self, loop, app_protocol, sslcontext, waiter, server_side=False, server_hostname=None, "
     "call_connection_made=True, ssl_handshake_timeout=None, ssl_shutdown_timeout=None)",
     "bastion/server/protocol.py _start_tls builds asyncio's TLS layer itself (private module)"),
]  # fmt: skip

REIMPLEMENTED = {
    # uvicorn's method: sha256 of its source in the uvicorn that Bastion's copy follows (0.55)
    "data_received": "010a7ae59a",
    "on_url": "37be44e962",
    "on_header": "1e86ebb6ce",
    "on_response_complete": "64e254f28e",
    "on_headers_complete": "1ea8589acf",
    "_unset_keepalive_if_required": "00a6a4e472",
}


def parameters(function: Callable[..., Any]) -> str:
    """``(a, b=None)``: names, kinds and defaults, not annotations (they are strings here)."""
    shown = []
    for parameter in inspect.signature(function).parameters.values():
        text = parameter.name
        if parameter.kind is parameter.VAR_POSITIONAL:
            text = "*" + text
        elif parameter.kind is parameter.VAR_KEYWORD:
            text = "**" + text
        if parameter.default is not parameter.empty:
            text += f"={parameter.default!r}"
        shown.append(text)
    return f"({', '.join(shown)})"


@pytest.mark.parametrize(
    ("owner", "name", "expected", "used_by"),
    CALLABLES,
    ids=[f"{owner.__name__}.{name}" for owner, name, _, _ in CALLABLES],
)
def test_each_name_bastion_relies_on_is_still_there_with_its_parameters(
    owner: Any, name: str, expected: str, used_by: str
) -> None:
    found = inspect.getattr_static(owner, name, None)
    assert callable(found) or isinstance(found, classmethod | staticmethod), (
        f"{owner.__module__}.{owner.__qualname__}.{name} is gone; re-check {used_by}"
    )
    assert parameters(getattr(owner, name)) == expected, (
        f"{owner.__qualname__}.{name} takes other parameters now; re-check {used_by}"
    )


def test_uvicorns_serve_is_a_coroutine_that_enters_capture_signals() -> None:
    """``_Server`` stops uvicorn re-raising SIGTERM by replacing ``capture_signals``: it works
    only while ``serve`` enters it (tests/integration/test_shutdown.py checks the outcome)."""
    assert inspect.iscoroutinefunction(uvicorn.Server.serve)
    assert "with self.capture_signals():" in inspect.getsource(uvicorn.Server.serve), (
        f"uvicorn.Server.serve no longer enters capture_signals; re-check {SERVER}"
    )


@pytest.mark.parametrize("name", sorted(REIMPLEMENTED))
def test_the_methods_bastion_re_implements_are_unchanged_in_uvicorn(name: str) -> None:
    source = inspect.getsource(getattr(HttpToolsProtocol, name))
    digest = hashlib.sha256(source.encode()).hexdigest()[:10]
    assert digest == REIMPLEMENTED[name], (
        f"uvicorn {uvicorn.__version__} changed HttpToolsProtocol.{name}, which "
        f"{PROTOCOL}.{name} re-implements: carry the change over (or decide it does not apply), "
        f"then record {digest} here. Its source now:\n{source}"
    )


CYCLE_SEND = "abdd8601b3"
"""sha256 of RequestResponseCycle.send in the uvicorn that bastion/server/cycle.py follows."""


def test_the_cycles_send_that_bastion_re_implements_is_unchanged_in_uvicorn() -> None:
    source = inspect.getsource(RequestResponseCycle.send)
    digest = hashlib.sha256(source.encode()).hexdigest()[:10]
    assert digest == CYCLE_SEND, (
        f"uvicorn {uvicorn.__version__} changed RequestResponseCycle.send, which "
        f"bastion/server/cycle.py Cycle.send re-implements: carry the change over, then "
        f"record {digest} here. Its source now:\n{source}"
    )


def test_the_parsers_callback_errors_are_what_the_protocol_catches() -> None:
    """A refusal is raised inside a parser callback and caught as HttpParserCallbackError,
    which must come before httptools' other errors (it is one of them)."""
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)
    assert issubclass(httptools.HttpParserUpgrade, Exception)


# -- the same names, exercised: a real connection through Bastion's protocol on each loop --


class _Pieces:
    """A SpliceSource that delivers fixed pieces."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces

    async def relay(self, sink: Callable[[bytes], None]) -> None:
        for piece in self.pieces:
            sink(piece)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _exchange(tls: ssl.SSLContext | None, client: ssl.SSLContext | None) -> dict[str, Any]:
    """Serve two requests on one connection and a refused third; what each side saw."""
    loop = asyncio.get_running_loop()
    made: list[GuardedHttpToolsProtocol] = []
    seen: dict[str, Any] = {"scopes": [], "keep_alive_armed_at_request": []}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["scopes"].append(scope)
        seen["keep_alive_armed_at_request"].append(made[0] in made[0].idle_watch.waiting)
        await receive()
        start: Message = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)  # no length: uvicorn frames the body as chunked
        await scope[DOWNSTREAM_SCOPE_KEY].splice(_Pieces(b"abc", b"defg"), lambda p: p)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        cycle = made[0].cycle
        seen.setdefault("cycles", []).append((type(cycle), cycle.response_complete))

    protocol = protocol_class(HttpSettings(max_headers=20), tls=tls)
    config = uvicorn.Config(app, http=protocol, lifespan="off", log_config=None)
    config.load()
    state = ServerState()

    def factory() -> asyncio.Protocol:
        made.append(protocol(config=config, server_state=state, app_state={}, _loop=loop))
        return made[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        answers = []
        for path in (b"/one", b"/two"):
            writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\nX-Pad: padded \t\r\n\r\n" % path)
            answers.append(await reader.readuntil(b"0\r\n\r\n"))
        seen["keep_alive_armed_after"] = made[0] in made[0].idle_watch.waiting
        seen["uvicorns_timer"] = made[0].timeout_keep_alive_task
        many = b"".join(b"X-%d: v\r\n" % i for i in range(30))
        writer.write(b"GET /three HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
        answers.append(await reader.read())  # refused, then closed
        writer.close()
        await writer.wait_closed()
        seen["answers"] = answers
    finally:
        server.close()
        await server.wait_closed()
    return seen


def _run(loop_kind: str, coroutine: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    if loop_kind == "uvloop":
        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    return server, client_context(ca)


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_connection_through_bastions_protocol_uses_uvicorn_as_expected(
    loop_kind: str, secure: bool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server, client = tls if secure else (None, None)
    seen = _run(loop_kind, _exchange(server, client))
    first, second, refused = seen["answers"]
    for answer in (first, second):  # uvicorn chunks a body sent without a length; the
        head, body = answer.split(b"\r\n\r\n", 1)  # splice writes pieces in that framing
        assert b"\r\ntransfer-encoding: chunked" in head
        assert body == b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    scope = seen["scopes"][0]
    assert scope[DOWNSTREAM_SCOPE_KEY] is not None  # on_headers_complete kept Bastion's key
    assert scope["path"] == "/one" and (b"x-pad", b"padded") in scope["headers"]
    assert seen["cycles"] == [(Cycle, True), (Cycle, True)]  # Bastion's send
    # the keep-alive deadline armed after the first response was disarmed when the second
    # request's bytes arrived (data_received -> _unset_keepalive_if_required); uvicorn's own
    # timer per response is never armed
    assert seen["keep_alive_armed_at_request"] == [False, False]
    assert seen["keep_alive_armed_after"] is True
    assert seen["uvicorns_timer"] is None
    assert refused.startswith(b"HTTP/1.1 431 ")  # raised in on_header, caught in data_received
    assert b"headers_too_large" in refused
    assert len(seen["scopes"]) == 2  # the refused head never reached the application


def test_uvloops_tls_layer_is_built_with_bastions_arguments() -> None:
    """uvloop's SSLProtocol is compiled (no signature to read): build one as the protocol
    does, on a uvloop loop (the TLS test above runs the whole handshake through it)."""
    from bastion.server.protocol import _tls_layer

    async def build() -> type:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        layer = _tls_layer(loop)(
            loop, asyncio.Protocol(), context, waiter, server_side=True, ssl_handshake_timeout=5.0
        )
        waiter.cancel()
        return type(layer)

    assert uvloop.run(build()) is uvloop.loop.SSLProtocol  # type: ignore[attr-defined]


async def _idle_connection_closed(keep_alive: float) -> tuple[bytes, float]:
    """One request on a kept-alive connection, then silence: what the client read, and how
    long after the response the server closed the connection."""
    loop = asyncio.get_running_loop()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    protocol = protocol_class(HttpSettings(keep_alive_timeout=keep_alive))
    config = uvicorn.Config(app, http=protocol, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    server = await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}, _loop=loop),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await reader.readuntil(b"ok")
        answered = loop.time()
        rest = await asyncio.wait_for(reader.read(), 10)  # b"" once the server closes
        closed_after = loop.time() - answered
        writer.close()
        return answer + rest, closed_after
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    loop_kind: str,
) -> None:
    answer, closed_after = _run(loop_kind, _idle_connection_closed(0.4))
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok")
    # the idle watch notices a deadline at most a tick (timeout / 4) late
    assert 0.35 <= closed_after < 0.4 + 0.1 + 0.5
