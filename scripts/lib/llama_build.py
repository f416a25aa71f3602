"""How ``scripts/setup`` compiles llama.cpp (the llama-cpp-python package) for this machine.

Prints two lines: a flavour name, which keys the directory the built wheel is kept in (so a
wheel built with other flags is never reused), and the ``CMAKE_ARGS`` to build it with.

llama.cpp builds for the machine's own CPU (``-march=native``) by default. Where the CPU has
Intel AMX, that build includes llama.cpp's AMX matrix kernels, and on virtual machines of that
kind (Xeon with AMX, Linux guest) the first completion crashed the engine with SIGSEGV in
``ggml_backend_amx_mul_mat``; there the build names the CPU's vector extensions itself
(AVX2, and AVX-512 where present) and leaves AMX out. For a 270M model the AMX kernels would
only speed up prompt processing of large batches. ``CMAKE_ARGS`` already in the environment
are the user's choice: they are kept, after ours, and name a flavour of their own.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

# /proc/cpuinfo flag -> the llama.cpp (ggml) option that enables it when not building natively.
# SSE4.2, AVX, AVX2, FMA, F16C and BMI2 are on by default once GGML_NATIVE is off.
_X86_OPTIONS = (
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
    ("avx_vnni", "GGML_AVX_VNNI"),
)
_AVX512_PARTS = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def build_choice(
    system: str, machine: str, flags: frozenset[str], user_args: str = ""
) -> tuple[str, str]:
    """Return ``(flavour, cmake_args)`` for a machine."""
    flavour, args = "native", []
    if system == "Linux" and machine in ("x86_64", "AMD64") and "amx_tile" in flags:
        flavour, args = "x86-no-amx", ["-DGGML_NATIVE=OFF"]
        # ggml's AVX512 option turns on five extensions at once, and its AVX-512 sub-options
        # need it: they count only where all five are there.
        avx512 = all(part in flags for part in _AVX512_PARTS)
        for flag, option in _X86_OPTIONS:
            if flag in flags and (avx512 or not option.startswith("GGML_AVX512")):
                args.append(f"-D{option}=ON")
    if user_args.strip():
        digest = hashlib.sha256(user_args.strip().encode()).hexdigest()[:12]
        flavour = f"{flavour}-user-{digest}"
        args.append(user_args.strip())
    return flavour, " ".join(args)


def main() -> None:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo = ""
    flavour, args = build_choice(
        platform.system(), platform.machine(), cpu_flags(cpuinfo), os.environ.get("CMAKE_ARGS", "")
    )
    sys.stdout.write(f"{flavour}\n{args}\n")


if __name__ == "__main__":
    main()
