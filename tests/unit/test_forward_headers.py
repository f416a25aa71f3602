from __future__ import annotations

from bastion.pipeline.forward import request_headers, response_headers


def test_request_headers_drop_credentials_and_hop_by_hop() -> None:
    caller = [
        (b"authorization", b"Bearer bst_secret"),
        (b"cookie", b"a=b"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"1"),
        (b"content-type", b"application/json"),
        (b"host", b"evil/pause"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"user-agent", b"openai"),
    ]
    out = request_headers(caller, "rid", b"Bearer up")
    assert out == [
        (b"content-type", b"application/json"),
        (b"user-agent", b"openai"),
        (b"x-request-id", b"rid"),
        (b"authorization", b"Bearer up"),
    ]


def test_response_headers_drop_hop_by_hop_and_server() -> None:
    upstream = [
        (b"content-type", b"text/event-stream"),
        (b"transfer-encoding", b"chunked"),
        (b"server", b"uvicorn"),
        (b"x-request-id", b"upstream-id"),
    ]
    assert response_headers(upstream, "rid") == [
        (b"content-type", b"text/event-stream"),
        (b"x-request-id", b"rid"),
    ]
