"""Official ``openai`` clients for tests, closed after each test (no leaked sockets)."""

from __future__ import annotations

import openai

_open: list[openai.OpenAI] = []


def openai_client(base_url: str, key: str, timeout: float = 10.0) -> openai.OpenAI:
    created = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=timeout)
    _open.append(created)
    return created


def close_all() -> None:
    while _open:
        _open.pop().close()
