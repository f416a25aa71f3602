"""A fake vLLM-like upstream for tests: a real HTTP server on 127.0.0.1, port 0, in a thread.

It records every request it receives, so tests can assert what did (and did not) reach the
upstream, and it can be told to be slow, to stream with gaps, or to hold a stream open until
the test lets it go.

It also emulates vLLM's Responses API with its store on (``VLLM_ENABLE_RESPONSES_API_STORE``):
``POST /v1/responses`` (``stream``, ``store``, ``background``, ``previous_response_id``),
``GET /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel``, and, as OpenAI has them,
``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``. Like vLLM's, its
store is this process's memory and has no notion of who asks.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

from bastion.upstream.vllm_api import GUARDED_PREFIXES
from tests.support import fake_anthropic


@dataclass
class Seen:
    method: str
    path: str
    query: bytes
    headers: dict[str, str]
    body: bytes


@dataclass
class Behaviour:
    delay: float = 0.0
    """Seconds to wait before answering (for timeouts)."""
    events: int = 3
    gap: float = 0.0
    hold_after_first: threading.Event | None = None
    """When set, a stream sends its first event, then waits for this event."""
    status: int = 200
    flood_bytes: int = 0
    """When set, a stream sends this many bytes of SSE comments as fast as it may."""
    health_status: int = 200
    """What ``GET /health`` (vLLM's health check, asked by the gateway) answers."""
    big_event_bytes: int = 0
    """When set, a chat stream's first event carries this much content, sent in 64 KiB pieces
    (``gap`` seconds apart) with no blank line until the event's end."""
    cut_after: int | None = None
    """When set, a stream sends this many events, then closes its socket mid-body."""
    final_input: bool = True
    """Anthropic streams: the final message_delta repeats input_tokens (as vLLM's does)."""


@dataclass
class FakeUpstream:
    api_key: str | None = None
    """When set, paths under vLLM's guarded prefixes (``/v1``, ``/v2``, ``/inference``,
    ``/cohere``) need ``Authorization: Bearer`` it, and get vLLM's ``401 {"error":
    "Unauthorized"}`` without it; every other path stays open, as with vLLM's ``--api-key``."""
    routes: dict[str, frozenset[str]] | None = None
    """When set, the only paths that exist, each with its methods: others are 404, other
    methods 405, checked after the key (vLLM's middleware runs before its router)."""
    seen: list[Seen] = field(default_factory=list)
    """Every request but health checks."""
    health_checks: list[Seen] = field(default_factory=list)
    behaviour: Behaviour = field(default_factory=Behaviour)
    disconnects: list[float] = field(default_factory=list)
    stream_finished: list[float] = field(default_factory=list)
    flood_sent: int = 0
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The stored responses, by id (each upstream has its own, as each vLLM process does)."""
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.seen.clear()
        self.health_checks.clear()
        self.disconnects.clear()
        self.stream_finished.clear()
        self.flood_sent = 0
        self.behaviour = Behaviour()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = Seen(
            scope["method"],
            scope["path"],
            scope["query_string"],
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            body,
        )
        behaviour = self.behaviour
        if scope["method"] == "GET" and scope["path"] == "/health":
            self.health_checks.append(seen)
            await self._json(send, behaviour.health_status, {})
            return
        self.seen.append(seen)
        refusal = self._as_vllm_would(seen)
        if refusal is not None:
            await self._json(send, *refusal)
            return
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        payload: dict[str, Any] = {}
        if body and scope["headers"] and body[:1] == b"{":
            payload = orjson.loads(body)
        if scope["path"].startswith("/v1/messages"):
            await self._anthropic(scope["path"], payload, send)
            return
        if scope["path"].startswith("/v1/responses") and scope["path"] != "/v1/responses/render":
            await self._responses(scope, payload, send)
            return
        if payload.get("stream"):
            await self._stream(payload, receive, send)
            return
        await self._json(send, behaviour.status, self._answer(scope["path"], payload))

    async def _anthropic(self, path: str, payload: dict[str, Any], send: Any) -> None:
        model = str(payload.get("model", "fake-model"))
        if path.endswith("/count_tokens"):
            await self._json(send, self.behaviour.status, fake_anthropic.count_tokens())
        elif not payload.get("stream"):
            await self._json(send, self.behaviour.status, fake_anthropic.message(model))
        else:
            head = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            events = fake_anthropic.stream_events(model, final_input=self.behaviour.final_input)
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    def _as_vllm_would(self, seen: Seen) -> tuple[int, dict[str, Any]] | None:
        """vLLM's key middleware, then its router: a refusal, or None to answer."""
        guarded = self.api_key is not None and seen.path.startswith(GUARDED_PREFIXES)
        if guarded and seen.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        if self.routes is None:
            return None
        methods = self.routes.get(seen.path)
        if methods is None:
            return 404, {"detail": "Not Found"}
        if seen.method not in methods:
            return 405, {"detail": "Method Not Allowed"}
        return None

    def _answer(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        model = payload.get("model", "fake-model")
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if path == "/v1/chat/completions":
            return {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello from upstream"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        if path == "/v1/completions":
            return {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "text": "Hello text", "finish_reason": "stop"}],
                "usage": usage,
            }
        return {"ok": True, "path": path}

    async def _responses(self, scope: Any, payload: dict[str, Any], send: Any) -> None:
        """vLLM's Responses API routes, over this upstream's own store."""
        method, parts = scope["method"], scope["path"].split("/")[3:]
        if not parts and method == "POST":
            await self._create_response(payload, send)
            return
        stored = self.responses.get(parts[0]) if parts else None
        if stored is None:
            error = {"message": "Response not found", "type": "invalid_request_error",
                     "param": "response_id", "code": 404}  # fmt: skip
            await self._json(send, 404, {"error": error})
        elif parts[1:] == [] and method == "GET":
            await self._json(send, 200, stored)
        elif parts[1:] == [] and method == "DELETE":
            del self.responses[parts[0]]
            await self._json(send, 200, {"id": parts[0], "object": "response", "deleted": True})
        elif parts[1:] == ["cancel"] and method == "POST":
            stored["status"] = "cancelled"
            await self._json(send, 200, stored)
        elif parts[1:] == ["input_items"] and method == "GET":
            await self._json(send, 200, {"object": "list", "data": stored["_input"]})
        else:
            await self._json(send, 405, {"error": {"message": "Method Not Allowed"}})

    async def _create_response(self, payload: dict[str, Any], send: Any) -> None:
        previous = payload.get("previous_response_id")
        if previous is not None and previous not in self.responses:
            error = {"message": f"Response with id '{previous}' not found.",
                     "type": "invalid_request_error", "param": "previous_response_id",
                     "code": 404}  # fmt: skip
            await self._json(send, 404, {"error": error})
            return
        response = _response_object(payload, f"resp_{secrets.token_hex(8)}")
        if payload.get("store", True):
            self.responses[response["id"]] = response
        if not payload.get("stream"):
            await self._json(send, 200, {k: v for k, v in response.items() if k[0] != "_"})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        shown = {k: v for k, v in response.items() if k[0] != "_"}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": {**shown, "status": "in_progress", "usage": None}}),
            ("response.in_progress", {"response": {**shown, "status": "in_progress",
                                                   "usage": None}}),
            *(("response.output_text.delta", {"item_id": "msg_1", "output_index": 0,
                                              "content_index": 0, "delta": f"tok{i} "})
              for i in range(self.behaviour.events)),
            ("response.completed", {"response": {**shown, "usage": {
                **shown["usage"], "output_tokens": self.behaviour.events,
                "total_tokens": 5 + self.behaviour.events}}}),
        ]  # fmt: skip
        hold = self.behaviour.hold_after_first
        for number, (kind, data) in enumerate(events):
            event = {**data, "sequence_number": number, "type": kind}
            text = f"event: {kind}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"
            await send({"type": "http.response.body", "body": text, "more_body": True})
            while number == 0 and hold is not None and not hold.is_set():
                await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _json(send: Any, status: int, data: dict[str, Any]) -> None:
        body = orjson.dumps(data)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"server", b"fake-vllm"),
                    (b"x-upstream-secret-header", b"kept"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, payload: dict[str, Any], receive: Any, send: Any) -> None:
        behaviour = self.behaviour
        disconnected = asyncio.Event()

        async def watch() -> None:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.append(time.monotonic())
                disconnected.set()

        watcher = asyncio.create_task(watch())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        if behaviour.flood_bytes:
            await self._flood(send, behaviour.flood_bytes)
            watcher.cancel()
            return
        chat = "messages" in payload
        if behaviour.big_event_bytes:
            await self._big_event(send, payload, behaviour)
        for index in range(behaviour.events):
            if disconnected.is_set():
                return
            piece = f"tok{index} "
            if chat:
                delta = {"delta": {"content": piece}, "index": 0, "finish_reason": None}
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": payload.get("model"),
                    "choices": [delta],
                }
            else:
                chunk = {
                    "id": "c1",
                    "object": "text_completion",
                    "created": 1,
                    "model": payload.get("model"),
                    "choices": [{"text": piece, "index": 0, "finish_reason": None}],
                }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
            if behaviour.cut_after == index + 1:
                # uvicorn's ``send`` belongs to the request's cycle, which holds the socket:
                # closing it leaves the chunked body unfinished, as a crashed server would
                send.__self__.transport.close()
                watcher.cancel()
                return
            if index == 0 and behaviour.hold_after_first is not None:
                while not behaviour.hold_after_first.is_set() and not disconnected.is_set():
                    await asyncio.sleep(0.01)
            elif behaviour.gap:
                await asyncio.sleep(behaviour.gap)
        if disconnected.is_set():
            return
        options = payload.get("stream_options") or {}
        if options.get("include_usage"):
            # as vLLM does: a last chunk with no choices and the usage of the whole stream
            usage = {"prompt_tokens": 5, "completion_tokens": behaviour.events,
                     "total_tokens": 5 + behaviour.events}  # fmt: skip
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                     "model": payload.get("model"), "choices": [], "usage": usage}  # fmt: skip
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.stream_finished.append(time.monotonic())
        watcher.cancel()

    @staticmethod
    async def _big_event(send: Any, payload: dict[str, Any], behaviour: Behaviour) -> None:
        async def body(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            await asyncio.sleep(behaviour.gap)  # a turn of the loop, at least

        choice = {"delta": {"content": "<>"}, "index": 0, "finish_reason": None}
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                 "model": payload.get("model"), "choices": [choice]}  # fmt: skip
        head, tail = (b"data: " + orjson.dumps(chunk) + b"\n\n").split(b"<>")
        await body(head)
        piece = b"x" * 65536
        for _ in range(behaviour.big_event_bytes // len(piece)):
            await body(piece)
        await body(tail)

    async def _flood(self, send: Any, total: int) -> None:
        piece = b": " + b"x" * 65530 + b"\n\n"
        while self.flood_sent < total:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            self.flood_sent += len(piece)
        await send({"type": "http.response.body", "body": b""})
        self.stream_finished.append(time.monotonic())

    def start(self) -> FakeUpstream:
        """Listen on a new port, or again on the port it had (after :meth:`stop`)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self, log_config=None, lifespan="off", ws="none", access_log=False, http="httptools"
        )
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                assert self._server is not None
                serving = asyncio.create_task(self._server.serve(sockets=[sock]))
                while not self._server.started:
                    await asyncio.sleep(0.01)
                ready.set()
                await serving

            asyncio.run(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def _response_object(payload: dict[str, Any], response_id: str) -> dict[str, Any]:
    """A completed response object as vLLM writes it (``id`` first); ``_input`` is kept for
    ``input_items`` and never shown."""
    text = "Hello from upstream"
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
    usage = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8,
             "input_tokens_details": {"cached_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    background = bool(payload.get("background"))
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1,
        "model": payload.get("model", "fake-model"),
        "status": "queued" if background else "completed",
        "background": background,
        "output": [message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "previous_response_id": payload.get("previous_response_id"),
        "usage": usage,
        "_input": [{"type": "message", "role": "user", "content": payload.get("input")}],
    }
