"""Find one field of a multipart/form-data body (the ``model`` of an audio request)."""

from __future__ import annotations

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from bastion.errors import BadRequestError

__all__ = ["form_field"]

_MAX_FIELD = 4096


class _FieldFinder:
    """Parser callbacks that keep the value of the first part named ``name``."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.value: bytes | None = None
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._part_is_wanted = False
        self._data = bytearray()

    def on_part_begin(self) -> None:
        self._part_is_wanted = False
        self._data.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._header_value))
            self._part_is_wanted = options.get(b"name") == self.name
        self._header_name.clear()
        self._header_value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_wanted and self.value is None:
            self._data += data[start:end]
            if len(self._data) > _MAX_FIELD:
                raise BadRequestError(f"The '{self.name.decode()}' field is too long.")

    def on_part_end(self) -> None:
        if self._part_is_wanted and self.value is None:
            self.value = bytes(self._data)


def form_field(content_type: bytes, body: bytes, name: bytes) -> bytes | None:
    """The value of the first form field called ``name``, or None if the form has none."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequestError("The multipart body has no boundary.")
    finder = _FieldFinder(name)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": finder.on_part_begin,
            "on_part_data": finder.on_part_data,
            "on_part_end": finder.on_part_end,
            "on_header_field": finder.on_header_field,
            "on_header_value": finder.on_header_value,
            "on_header_end": finder.on_header_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise BadRequestError("The multipart body is malformed.") from None
    return finder.value
