"""Key-exchange groups of a server TLS context.

Mozilla's profiles name three groups (:data:`PROFILE_GROUPS`); OpenSSL's default list adds
X448, secp521r1 and, for TLS 1.3, the ffdhe groups. Python's ``ssl`` gains
``SSLContext.set_groups`` in 3.15; before that it can name only one curve
(``set_ecdh_curve``). So on older Pythons the list is set through the OpenSSL library that
``ssl`` itself is linked to: ``SSL_CTX_set1_groups_list``, a macro over
``SSL_CTX_ctrl(ctx, SSL_CTRL_SET_GROUPS_LIST, 0, list)``, called with ctypes on the
context's ``SSL_CTX``.

Finding that ``SSL_CTX`` relies on CPython's layout of ``ssl.SSLContext`` (the pointer is
the first field after the object header, as in every CPython since 3.6), so it is checked
before use: the options OpenSSL reports for that pointer must be the options Python reports
for the context, before and after flipping one option through Python. Any mismatch, or a
library without the symbols, means "cannot set groups here": :func:`set_groups` then raises
:class:`GroupsUnsupportedError`, and the caller decides (a configured list stops start-up;
the profile's default is logged as not applied and OpenSSL's list is offered).
"""

from __future__ import annotations

import ctypes
import ssl
from functools import cache
from typing import Final

__all__ = ["PROFILE_GROUPS", "GroupsUnsupportedError", "set_groups"]

PROFILE_GROUPS: Final = "X25519:prime256v1:secp384r1"
"""The groups of Mozilla's intermediate and modern profiles, in OpenSSL's list format."""

_SSL_CTRL_SET_GROUPS_LIST: Final = 92  # ssl.h; the same number as ..._SET_CURVES_LIST


class GroupsUnsupportedError(Exception):
    """This Python and OpenSSL give no way to set a context's group list."""


def set_groups(context: ssl.SSLContext, groups: str) -> None:
    """Offer exactly ``groups`` (OpenSSL's colon-separated list) on ``context``.

    Raises :class:`ValueError` when OpenSSL accepts none of the list as given (an unknown
    name), :class:`GroupsUnsupportedError` when the list cannot be set at all.
    """
    native = getattr(context, "set_groups", None)  # Python 3.15 and later
    if native is not None:
        try:
            native(groups)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL does not accept the group list {groups!r}") from None
        return
    library = _library()
    pointer = _ssl_ctx(context, library)
    if library.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) != 1:
        raise ValueError(f"OpenSSL does not accept the group list {groups!r}")


@cache
def _library() -> ctypes.CDLL:
    """The libssl that ``ssl`` uses: looking a name up through the ``_ssl`` extension's
    handle searches the libraries it was linked with, so it is the same copy of OpenSSL."""
    import _ssl  # the extension module (its file names the shared object)

    path = getattr(_ssl, "__file__", None)  # absent when built into the interpreter
    try:
        library = ctypes.CDLL(path)
        get_options, ctrl = library.SSL_CTX_get_options, library.SSL_CTX_ctrl
    except (OSError, AttributeError) as exc:
        raise GroupsUnsupportedError(f"OpenSSL's functions are not reachable: {exc}") from None
    get_options.restype = ctypes.c_uint64
    get_options.argtypes = [ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    return library


def _ssl_ctx(context: ssl.SSLContext, library: ctypes.CDLL) -> int:
    """The address of ``context``'s ``SSL_CTX``, once OpenSSL confirms it is that context's."""
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise GroupsUnsupportedError("the context's OpenSSL object was not found")
    flip = ssl.OP_NO_TICKET  # any option that OpenSSL reports back as set
    before = context.options
    try:
        context.options = before ^ flip
        flipped = library.SSL_CTX_get_options(pointer) == context.options
    finally:
        context.options = before
    if not flipped or library.SSL_CTX_get_options(pointer) != context.options:
        raise GroupsUnsupportedError("the context's OpenSSL object was not found")
    return pointer
