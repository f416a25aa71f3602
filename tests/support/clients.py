"""Official `openai` and `anthropic` clients for tests, closed after each test."""

from __future__ import annotations

import anthropic
import openai

_open: list[openai.OpenAI | anthropic.Anthropic] = []


def openai_client(base_url: str, key: str, timeout: float = 10.0) -> openai.OpenAI:
    created = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=timeout)
    _open.append(created)
    return created


def anthropic_client(base_url: str, key: str, *, bearer: bool = False) -> anthropic.Anthropic:
    """The official Anthropic client: the key in ``x-api-key`` (its default), or as a bearer
    token (``auth_token``, as Claude Code sends it)."""
    credential = {"auth_token": key} if bearer else {"api_key": key}
    created = anthropic.Anthropic(base_url=base_url, max_retries=0, timeout=10.0, **credential)
    _open.append(created)
    return created


def close_all() -> None:
    while _open:
        _open.pop().close()
