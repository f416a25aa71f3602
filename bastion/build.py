"""Which build of Bastion runs: pure Python, or with its request path compiled by mypyc.

``scripts/compile`` (run by ``scripts/setup``) compiles the modules in :data:`COMPILED` into C
extensions with mypyc, in place: each ``.so`` lies beside its ``.py``, and Python imports an
extension before a source of the same name. The sources stay the fallback, and the package
chooses between the two once, when it is imported (:func:`select`, from ``bastion/__init__``,
before any other module of the package is loaded):

- no extension built for this interpreter (none compiled, or another Python version): the
  sources run;
- ``BASTION_PURE_PYTHON=1`` in the environment: the sources run although the extensions are
  there (a switch for comparing and for testing both builds);
- an extension older than its source (the source was edited, or another branch checked out,
  after compiling): the sources run, all of them, and :func:`describe` names the stale
  module. Running compiled code that no longer matches its source would be worse than slow.

``bastion --version`` and ``bastion config check`` print :func:`describe`.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = [
    "COMPILED",
    "GROUP",
    "PURE_PYTHON_ENV",
    "Build",
    "describe",
    "examine",
    "is_current",
    "select",
]

COMPILED: tuple[str, ...] = (
    "bastion.pipeline.accept",
    "bastion.pipeline.account",
    "bastion.pipeline.admit",
    "bastion.pipeline.authenticate",
    "bastion.pipeline.authorize",
    "bastion.pipeline.context",
    "bastion.pipeline.created",
    "bastion.pipeline.endpoints",
    "bastion.pipeline.fields",
    "bastion.pipeline.forward",
    "bastion.pipeline.gateway",
    "bastion.pipeline.meter",
    "bastion.pipeline.multipart",
    "bastion.pipeline.ownership",
    "bastion.pipeline.readiness",
    "bastion.pipeline.responses",
    "bastion.pipeline.route",
    "bastion.pipeline.trace",
    "bastion.pipeline.tracing",
    "bastion.upstream.balancer",
    "bastion.upstream.client",
    "bastion.limits.backends",
    "bastion.limits.limiter",
    "bastion.limits.plan",
    "bastion.server.downstream",
    "bastion.observability.access_log",
    "bastion.observability.instruments",
    "bastion.observability.metrics",
)
"""The modules compiled: the request's phases and what they call per request or per event.

Compiled code is stricter than Python in ways mypy does not check; in these modules:

- a class cannot be subclassed by Python code (tests included) unless it is marked
  ``@mypyc_attr(allow_interpreted_subclasses=True)``; its instances take no new attributes and
  their methods cannot be replaced, nor can the module's globals (``time``, say) be replaced
  for the compiled code: pass a clock instead;
- a local variable keeps the type of its first assignment: a name bound to a ``str`` cannot
  later take ``bytes`` from an ``Any`` (the compiled code checks, and raises ``TypeError``);
- a subclass of a Python class (the package's errors, say) loses its class attributes: define
  errors in a module that is not compiled;
- an instance cannot be the target of a weak reference.

Left out, therefore: ``limits/redis.py`` (weak references to its grants; an error class),
with ``limits/fallback.py`` and ``limits/scripts.py`` beside it; ``limits/resp.py`` (its error
extends the built-in ``ConnectionError``); ``server/protocol.py`` (its class extends uvicorn's);
``errors.py``; and packages' ``__init__`` modules."""

GROUP = "bastion.native"
"""mypyc's group name: the compiled modules share one runtime library, ``bastion/native__mypyc``."""

PURE_PYTHON_ENV = "BASTION_PURE_PYTHON"
"""Set to ``1`` to run the sources although the compiled modules are there."""

_PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Build:
    """What :func:`select` found and chose."""

    compiled: tuple[str, ...]
    """Modules with an extension built for this interpreter (whether or not it runs)."""
    stale: tuple[str, ...]
    """Of those, the ones older than their source."""
    pure_requested: bool
    """``BASTION_PURE_PYTHON`` asked for the sources."""

    @property
    def running_compiled(self) -> bool:
        return bool(self.compiled) and not self.stale and not self.pure_requested


def _source(package: Path, module: str) -> Path:
    return package.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _extensions(package: Path) -> dict[str, Path]:
    """Every extension module in ``package`` built for this interpreter, by module name
    (whether or not it is in :data:`COMPILED` today: a checkout may have dropped it)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            suffix = next((s for s in suffixes if name.endswith(s)), None)
            stem = name[: -len(suffix)] if suffix else ""
            # not "x.cpython-311-....so" read as "x.cpython-311-..." + ".so": another
            # interpreter's build, which this one would not import
            if stem.isidentifier():
                parts = Path(folder).relative_to(package.parent).parts
                found[".".join((*parts, stem))] = Path(folder, name)
    return found


def _is_stale(package: Path, module: str, extension: Path) -> bool:
    source = _source(package, module)
    return not source.exists() or source.stat().st_mtime > extension.stat().st_mtime


def examine(package: Path = _PACKAGE, environ: Mapping[str, str] = os.environ) -> Build:
    """What is built in ``package`` (Bastion's own by default), and what ``environ`` asks."""
    built = _extensions(package)
    # without the runtime library that the modules share, none of them loads
    if built.pop(f"{GROUP}__mypyc", None) is None:
        built = {}
    stale = tuple(m for m, ext in built.items() if _is_stale(package, m, ext))
    pure = environ.get(PURE_PYTHON_ENV, "").strip() not in ("", "0")
    return Build(tuple(sorted(built)), tuple(sorted(stale)), pure)


class _SourcesOnly:
    """A meta path finder that loads the package's submodules from their ``.py`` sources,
    never from an extension beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("bastion.") or not path:
            return None
        for entry in path:
            finder = importlib.machinery.FileFinder(
                entry, (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
            )
            spec = finder.find_spec(fullname, target)
            if spec is not None:
                return spec
        return None


_selected: Build | None = None


def select(environ: Mapping[str, str] = os.environ) -> Build:
    """Choose the build for this process (once; later calls return the first choice)."""
    global _selected
    if _selected is None:
        _selected = examine(environ=environ)
        if _selected.compiled and not _selected.running_compiled:
            sys.meta_path.insert(0, _SourcesOnly())
    return _selected


def is_current() -> bool:
    """Every module of :data:`COMPILED`, and no other, is built for this interpreter and newer
    than its source (``BASTION_PURE_PYTHON`` aside): ``scripts/compile`` has nothing to do."""
    build = examine(environ={})
    return set(build.compiled) == set(COMPILED) and not build.stale


def describe() -> str:
    """One line saying which build runs, and why when it is not the compiled one."""
    build = select()
    total = len(COMPILED)
    if build.running_compiled:
        return f"compiled (mypyc, {len(build.compiled)} of {total} hot-path modules)"
    if not build.compiled:
        return "pure Python (not compiled for this interpreter: see scripts/compile)"
    if build.pure_requested:
        return f"pure Python ({PURE_PYTHON_ENV} is set)"
    first = _source(_PACKAGE, build.stale[0]).relative_to(_PACKAGE.parent)
    more = f" and {len(build.stale) - 1} more" if len(build.stale) > 1 else ""
    return f"pure Python (the compiled build is older than {first}{more}: see scripts/compile)"
