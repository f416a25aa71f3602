from __future__ import annotations

import pytest

from bastion.errors import BadRequestError
from bastion.pipeline.multipart import form_field


def form(*parts: tuple[str, bytes]) -> tuple[bytes, bytes]:
    boundary = b"XyZ"
    body = b"".join(
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="'
        + name.encode()
        + b'"\r\n\r\n'
        + value
        + b"\r\n"
        for name, value in parts
    )
    return b"multipart/form-data; boundary=" + boundary, body + b"--" + boundary + b"--\r\n"


def test_finds_the_named_field() -> None:
    content_type, body = form(("file", b"\x00\x01binary"), ("model", b"whisper"))
    assert form_field(content_type, body, b"model") == b"whisper"


def test_missing_field_is_none() -> None:
    content_type, body = form(("file", b"data"))
    assert form_field(content_type, body, b"model") is None


def test_malformed_forms_are_bad_requests() -> None:
    with pytest.raises(BadRequestError, match="boundary"):
        form_field(b"multipart/form-data", b"", b"model")
    with pytest.raises(BadRequestError):
        form_field(b"multipart/form-data; boundary=XyZ", b"garbage without boundary\r\n", b"model")
