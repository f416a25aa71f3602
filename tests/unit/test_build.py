"""Which build runs (bastion/build.py): the compiled modules only while they are newer than
their sources and not switched off, and then all of them; the sources otherwise.

The choice is made on a package laid out in a temporary folder (empty files stand for the
extensions: nothing is imported from it), and checked on the real package in a fresh
interpreter, whichever build this test run has.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion import __version__, build
from bastion.cli import main
from bastion.errors import BastionError

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
MODULES = ("bastion.pipeline.forward", "bastion.limits.limiter")


def lay_out(root: Path, *, compiled: tuple[str, ...] = MODULES, runtime: bool = True) -> Path:
    """A package ``bastion`` with a source for each of MODULES and an extension for each of
    ``compiled`` (and the runtime library they share), the extensions newer."""
    package = root / "bastion"
    for module in MODULES:
        source = package.joinpath(*module.split(".")[1:]).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        os.utime(source, (1_000, 1_000))
    for module in compiled:
        package.joinpath(*module.split(".")[1:]).with_suffix(SUFFIX).write_bytes(b"")
    if runtime:
        (package / f"native__mypyc{SUFFIX}").write_bytes(b"")
    return package


def test_fresh_extensions_run(tmp_path: Path) -> None:
    found = build.examine(lay_out(tmp_path), {})
    assert found == build.Build(tuple(sorted(MODULES)), (), False)
    assert found.running_compiled


def test_another_interpreters_build_is_not_this_ones(tmp_path: Path) -> None:
    package = lay_out(tmp_path, compiled=(), runtime=False)
    for name in ("native__mypyc", "pipeline/forward", "limits/limiter"):
        (package / f"{name}.cpython-39-x86_64-linux-gnu.so").write_bytes(b"")  # Python 3.9's
    found = build.examine(package, {})
    assert found.compiled == () and found.stale == ()


def test_no_extension_means_the_sources(tmp_path: Path) -> None:
    found = build.examine(lay_out(tmp_path, compiled=(), runtime=False), {})
    assert found.compiled == () and not found.running_compiled


def test_without_the_shared_runtime_no_module_counts_as_compiled(tmp_path: Path) -> None:
    found = build.examine(lay_out(tmp_path, runtime=False), {})
    assert found.compiled == () and not found.running_compiled


def test_a_source_edited_after_compiling_makes_the_whole_build_stale(tmp_path: Path) -> None:
    package = lay_out(tmp_path)
    later = (package / "pipeline" / f"forward{SUFFIX}").stat().st_mtime + 1
    os.utime(package / "pipeline" / "forward.py", (later, later))
    found = build.examine(package, {})
    assert found.stale == ("bastion.pipeline.forward",)
    assert not found.running_compiled  # the limiter, still fresh, does not run compiled either


def test_an_extension_whose_source_is_gone_is_stale(tmp_path: Path) -> None:
    package = lay_out(tmp_path)
    (package / "limits" / "limiter.py").unlink()
    assert build.examine(package, {}).stale == ("bastion.limits.limiter",)


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_environment_switch_asks_for_the_sources(
    tmp_path: Path, value: str, pure: bool
) -> None:
    found = build.examine(lay_out(tmp_path), {build.PURE_PYTHON_ENV: value})
    assert found.pure_requested is pure
    assert found.running_compiled is not pure


def _loaded(env: dict[str, str]) -> dict[str, str]:
    """In a fresh interpreter: the build it describes and the file each compiled module (and
    the package's other modules it imports) was loaded from."""
    code = (
        "import json, sys, importlib, bastion.build as b\n"
        "files = {m: importlib.import_module(m).__file__ for m in b.COMPILED}\n"
        "print(json.dumps({'describe': b.describe(), **files}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, str] = json.loads(done.stdout)
    return loaded


def test_the_running_build_is_the_one_described() -> None:
    """Whichever build this run has: every listed module comes from an extension exactly when
    the compiled build is said to run, and from its source when the switch is set."""
    env = {k: v for k, v in os.environ.items() if k != build.PURE_PYTHON_ENV}
    loaded = _loaded(env)
    described = loaded.pop("describe")
    compiled = described.startswith("compiled")
    assert {m: f.endswith(".py") for m, f in loaded.items()} == dict.fromkeys(
        build.COMPILED, not compiled
    )
    forced = _loaded({**env, build.PURE_PYTHON_ENV: "1"})
    assert forced.pop("describe").startswith("pure Python")
    assert all(f.endswith(".py") for f in forced.values())


def test_the_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"bastion {__version__}, {build.describe()}\n"


def test_no_compiled_module_defines_an_error_of_the_package() -> None:
    """A compiled subclass of a Python class loses its class attributes (an error's status and
    code among them): the package's errors live in modules that are not compiled."""
    defined = [
        f"{name}.{cls.__name__}"
        for name in build.COMPILED
        for cls in vars(importlib.import_module(name)).values()
        if inspect.isclass(cls) and cls.__module__ == name and issubclass(cls, BastionError)
    ]
    assert defined == []
