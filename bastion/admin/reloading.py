"""What the admin API needs of configuration reloads: the report, and a handle to ask for one.

The admin API is built as part of each gateway, before (at start) the server's reloader
exists, so it cannot be handed the reloader itself. It gets a :class:`ReloadHandle` instead,
which the server binds to its reloader once that is made (``server/run.py``). The server
layer depends on this module, never the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bastion.errors import NotFoundError

__all__ = ["ReloadHandle", "ReloadReport"]


@dataclass(frozen=True, slots=True)
class ReloadReport:
    source: str
    models: tuple[str, ...]
    restart_required: tuple[str, ...]
    """Settings that changed in the file but keep their running values until a restart."""

    def public(self) -> dict[str, Any]:
        return {
            "status": "reloaded",
            "source": self.source,
            "models": list(self.models),
            "restart_required": list(self.restart_required),
        }


class ReloadHandle:
    """A late-bound way to the reloader: unbound, a reload is 404 (nothing to re-read)."""

    __slots__ = ("_reload",)

    def __init__(self) -> None:
        self._reload: Callable[[], Awaitable[ReloadReport]] | None = None

    def bind(self, reload: Callable[[], Awaitable[ReloadReport]]) -> None:
        self._reload = reload

    async def __call__(self) -> ReloadReport:
        """Re-read the configuration and apply it; raises what the reloader raises."""
        if self._reload is None:
            raise NotFoundError("This gateway has no configuration file to reload.")
        return await self._reload()
