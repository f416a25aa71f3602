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


def test_request_headers_drop_sagemakers_adapter_choice() -> None:
    """vLLM's /invocations writes this header into the body's ``model`` (a LoRA adapter):
    forwarded, it would choose a model the gateway never authorized."""
    caller = [
        (b"x-amzn-sagemaker-adapter-identifier", b"someone-elses-lora"),
        (b"x-amzn-sagemaker-adapter-alias", b"alias"),
        (b"content-type", b"application/json"),
    ]
    assert request_headers(caller, None, None) == [(b"content-type", b"application/json")]
