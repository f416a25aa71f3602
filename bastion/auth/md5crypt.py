"""Apache's ``$apr1$`` password hash (MD5-crypt with Apache's magic), for htpasswd files.

It is a weak, fast hash kept only so that existing htpasswd files keep working; Bastion warns
about it at start-up and can be told to refuse it (``auth.htpasswd.refuse_weak``).
"""

from __future__ import annotations

import hashlib

__all__ = ["apr1"]

_ITOA64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_MAGIC = b"$apr1$"
# The digest's bytes are emitted in this order, three at a time, then the last one alone.
_GROUPS = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))


def _to64(value: int, count: int) -> bytes:
    out = bytearray()
    for _ in range(count):
        out.append(_ITOA64[value & 0x3F])
        value >>= 6
    return bytes(out)


def _digest(password: bytes, salt: bytes) -> bytes:
    alternate = hashlib.md5(password + salt + password, usedforsecurity=False).digest()
    context = bytearray(password + _MAGIC + salt)
    for remaining in range(len(password), 0, -16):
        context += alternate[: min(16, remaining)]
    length = len(password)
    while length:
        context += b"\0" if length & 1 else password[:1]
        length >>= 1
    final = hashlib.md5(bytes(context), usedforsecurity=False).digest()
    for round_ in range(1000):
        block = password if round_ & 1 else final
        if round_ % 3:
            block += salt
        if round_ % 7:
            block += password
        block += final if round_ & 1 else password
        final = hashlib.md5(block, usedforsecurity=False).digest()
    return final


def apr1(password: bytes, stored: bytes) -> bytes:
    """Hash ``password`` with the salt of ``stored`` (``$apr1$salt$...``), in the same form."""
    salt = stored[len(_MAGIC) :].split(b"$", 1)[0][:8]
    final = _digest(password, salt)
    encoded = b"".join(
        _to64((final[a] << 16) | (final[b] << 8) | final[c], 4) for a, b, c in _GROUPS
    )
    return _MAGIC + salt + b"$" + encoded + _to64(final[11], 2)
