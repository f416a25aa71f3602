"""The console's static files: read once from the package, served from memory.

Only files shipped in ``bastion/console/static/`` with a known extension exist; a request
names one by its canonical path (``endpoints.canonical_path``: escapes decoded once, ``..``
resolved), looked up in a dict, so no request path ever reaches the file system and nothing
outside the folder can be named. There is no directory listing; ``/ui/`` is ``index.html``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

__all__ = ["TYPES", "StaticFile", "StaticFiles"]

TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".json": b"application/json",
}
"""What is served, by extension; any other file in the folder is not."""

PREFIX = "/ui"


@dataclass(frozen=True, slots=True)
class StaticFile:
    content_type: bytes
    body: bytes


class StaticFiles:
    """The files by their path under ``/ui`` (``/ui/app.js``; ``/ui`` is the index)."""

    def __init__(self, root: Traversable | None = None) -> None:
        folder = root if root is not None else resources.files("bastion.console") / "static"
        self._files: dict[str, StaticFile] = {}
        self._add(folder, PREFIX)
        index = self._files.get(PREFIX + "/index.html")
        if index is not None:
            self._files[PREFIX] = index

    def _add(self, folder: Traversable, at: str) -> None:
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            name = entry.name
            if name.startswith((".", "_")):  # editor leftovers, __pycache__
                continue
            if entry.is_dir():
                self._add(entry, f"{at}/{name}")
                continue
            content_type = TYPES.get(name[name.rfind(".") :]) if "." in name else None
            if content_type is not None:
                self._files[f"{at}/{name}"] = StaticFile(content_type, entry.read_bytes())

    def __len__(self) -> int:
        return len(self._files)

    def find(self, path: str) -> StaticFile | None:
        """The file at canonical ``path`` (None: no such file)."""
        return self._files.get(path)
