"""Where a model server listens: scheme, host and port."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bastion.errors import ConfigError

__all__ = ["DEFAULT_PORTS", "Origin"]

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a model server listens: scheme, host and port, and nothing else."""

    scheme: str
    host: str
    port: int
    _host_header: bytes = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise ValueError("scheme must be 'http' or 'https'")
        if not self.host or not 0 < self.port < 65536:
            raise ValueError("an origin needs a host and a port between 1 and 65535")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != DEFAULT_PORTS[self.scheme]:
            host = f"{host}:{self.port}"
        object.__setattr__(self, "_host_header", host.encode("idna"))
        object.__setattr__(self, "_hash", hash((self.scheme, self.host, self.port)))

    def __hash__(self) -> int:  # looked up on every request: computed once
        return self._hash

    @classmethod
    def from_url(cls, url: str) -> Origin:
        """Parse ``http://host:8000`` (or ``https://...``) into an origin.

        Only the origin is kept: a path such as ``/v1`` is ignored, since the request target is
        the caller's to build. A URL with credentials, a query or a fragment, another scheme or
        no host raises :class:`~bastion.errors.ConfigError` (the message omits the URL).
        """
        try:
            parts = urlsplit(url)
            port = parts.port
            if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
                raise ValueError("must be http:// or https:// followed by a host")
            if parts.username is not None or parts.password is not None:
                raise ValueError("must not carry credentials")
            if parts.query or parts.fragment:
                raise ValueError("must not have a query or a fragment")
            return cls(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])
        except ValueError as exc:
            raise ConfigError(f"invalid upstream URL: {exc}") from None

    @property
    def host_header(self) -> bytes:
        """The ``Host`` header value: ``b"h:8000"``, the port left out when it is the default."""
        return self._host_header
