"""The id of a response an upstream creates, read from its answer as it passes.

``POST /v1/responses`` makes the upstream keep the response under an id of its own choosing;
only the answer says which. A non-streaming answer is a JSON object whose ``id`` usually comes
first (the response object declares it first): one anchored regex on the head, and a full
parse only of a whole body that does not start that way. A stream's first event is
``response.created``, carrying the response object: its head is held (not the relayed bytes:
a copy of its first pieces) until that event ends, then read once. Nothing after it is looked
at, so the per-piece cost of the rest of the stream is one attribute test.

When the id is found, its owner is remembered (:class:`~bastion.store.owners.ResponseOwners`)
at once, before the stream ends, so that a background response can be cancelled or
re-attached to while it runs. An answer that is not a success, an id that is not a safe
token, or a head that never says: nothing is remembered, so the response is unreachable
through the gateway (closed, not open).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from bastion.pipeline.endpoints import RESOURCE_ID
from bastion.store.owners import ResponseOwner, ResponseOwners

__all__ = ["CreatedResponse"]

_JSON_ID = re.compile(rb'\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_-]{1,128})"')
_JSON_HEAD = 512
"""Bytes of a JSON answer in which ``{"id": "..."`` must have appeared."""
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")


class CreatedResponse:
    """Watches one create's answer for the created response's id (made per request by
    :class:`~bastion.pipeline.ownership.Ownership`; fed by ``forward``)."""

    __slots__ = ("_head", "_limit", "_model", "_owners", "_principal", "_sse", "_upstream", "open")

    def __init__(
        self, owners: ResponseOwners, principal: str, model: str, max_event_bytes: int
    ) -> None:
        self._owners = owners
        self._principal = principal
        self._model = model
        self._limit = max_event_bytes
        self._head = b""
        self._sse = False
        self._upstream = ""
        self.open = False
        """Still looking: ``feed`` wants the next piece."""

    def begin(self, upstream: str, status: int, sse: bool) -> bool:
        """The answer's head from ``upstream``: True if its body is worth watching."""
        self._upstream = upstream
        self._sse = sse
        self.open = 200 <= status < 300
        return self.open

    def whole(self, body: bytes) -> None:
        """A complete body."""
        if not self._sse:
            found = _JSON_ID.match(body)
            self._found(found.group(1).decode() if found else _parsed_id(body))
            return
        self.feed(body)
        self.open = False

    def feed(self, piece: bytes) -> None:
        """The next piece of a body relayed piece by piece."""
        head = self._head + piece if self._head else piece
        if not self._sse:
            found = _JSON_ID.match(head)
            if found is not None:
                self._found(found.group(1).decode())
            elif len(head) >= _JSON_HEAD:
                self.open = False
            else:
                self._head = head
            return
        end = _EVENT_END.search(head, max(0, len(self._head) - 3))
        if end is not None:
            self._found(_created_id(head[: end.start()]))
        elif len(head) > self._limit:
            self.open = False  # a first event this large is not read
        else:
            self._head = head

    def _found(self, response_id: str | None) -> None:
        self.open = False
        self._head = b""
        if response_id is not None and RESOURCE_ID.fullmatch(response_id):
            owner = ResponseOwner(self._principal, self._model, self._upstream)
            self._owners.remember(response_id, owner)


def _parsed_id(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = document.get("id") if isinstance(document, dict) else None
    return found if isinstance(found, str) else None


def _created_id(event: bytes) -> str | None:
    """The response id a ``response.created`` event carries (None for any other event)."""
    data = b"\n".join(
        line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")
    )
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("type") != "response.created":
        return None
    response = document.get("response")
    found = response.get("id") if isinstance(response, dict) else None
    return found if isinstance(found, str) else None
