"""Compile the modules named in ``bastion.build.COMPILED`` with mypyc, in place (each C
extension beside its source). Run by ``scripts/compile`` with the virtualenv's Python, from
the repository root; mypy and setuptools come from the ``compile`` extra. The container build
runs it from a virtualenv of its own, with ``BASTION_MYPYC_PYTHON`` naming the gateway's
interpreter, whose installed packages mypy reads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mypyc.build import mypycify
from setuptools import setup

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "mypyc"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bastion.build import COMPILED, GROUP

    sources = [str(Path(*module.split(".")).with_suffix(".py")) for module in COMPILED]
    # The container build types the code against the gateway's environment, not this one's.
    python = os.environ.get("BASTION_MYPYC_PYTHON")
    flags = ["--python-executable", python] if python else []
    extensions = mypycify(
        [*flags, *sources], opt_level="3", group_name=GROUP, target_dir=str(BUILD / "c")
    )
    jobs = str(os.cpu_count() or 1)
    setup(
        ext_modules=extensions,
        script_args=["build_ext", "--inplace", "--build-temp", str(BUILD / "temp"), "-j", jobs],
    )


if __name__ == "__main__":
    main()
