"""scripts/lib/llama_build.py: the flags scripts/setup compiles llama.cpp with, and the flavour
that keys the directory its wheel is kept in.

On x86 machines whose CPU has AMX, llama.cpp's native build crashed the engine on its first
completion (SIGSEGV in ``ggml_backend_amx_mul_mat``); tests/integration/test_engine_llama.py
is what runs that engine on this machine.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lib" / "llama_build.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llama_build", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


llama_build = _load()

SAPPHIRE_RAPIDS = frozenset(
    [
        "fpu",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi2",
        "avx512f",
        "avx512dq",
        "avx512cd",
        "avx512bw",
        "avx512vl",
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_bf16",
        "amx_tile",
        "amx_int8",
    ]
)
ZEN3 = frozenset(["fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"])


def test_a_cpu_without_amx_builds_natively() -> None:
    assert llama_build.build_choice("Linux", "x86_64", ZEN3) == ("native", "")
    assert llama_build.build_choice("Darwin", "arm64", frozenset()) == ("native", "")
    assert llama_build.build_choice("Linux", "aarch64", frozenset({"asimd"})) == ("native", "")


def test_an_amx_cpu_builds_its_vector_extensions_without_amx() -> None:
    flavour, args = llama_build.build_choice("Linux", "x86_64", SAPPHIRE_RAPIDS)
    assert flavour == "x86-no-amx"
    assert args.split() == [
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX512=ON",
        "-DGGML_AVX512_VBMI=ON",
        "-DGGML_AVX512_VNNI=ON",
        "-DGGML_AVX512_BF16=ON",
        "-DGGML_AVX_VNNI=ON",
    ]
    assert "AMX" not in args


def test_avx512_sub_options_need_the_five_base_extensions() -> None:
    partial = SAPPHIRE_RAPIDS - {"avx512vl"}
    flavour, args = llama_build.build_choice("Linux", "x86_64", partial)
    assert flavour == "x86-no-amx"
    assert args.split() == ["-DGGML_NATIVE=OFF", "-DGGML_AVX_VNNI=ON"]


def test_the_users_cmake_args_come_last_and_name_a_flavour_of_their_own() -> None:
    one = llama_build.build_choice("Linux", "x86_64", ZEN3, "-DGGML_BLAS=ON")
    other = llama_build.build_choice("Linux", "x86_64", ZEN3, "-DGGML_VULKAN=ON")
    assert one[0].startswith("native-user-") and other[0].startswith("native-user-")
    assert one[0] != other[0]
    assert one[1] == "-DGGML_BLAS=ON"
    amx = llama_build.build_choice("Linux", "x86_64", SAPPHIRE_RAPIDS, "-DGGML_BLAS=ON")
    assert amx[0].startswith("x86-no-amx-user-")
    assert amx[1].split()[0] == "-DGGML_NATIVE=OFF" and amx[1].endswith("-DGGML_BLAS=ON")


def test_cpu_flags_reads_the_first_processors_flags() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx2 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert llama_build.cpu_flags(text) == frozenset({"fpu", "avx2", "amx_tile"})
    assert llama_build.cpu_flags("no flags here") == frozenset()


def test_the_script_prints_the_flavour_and_the_args_for_this_machine() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, check=True
    )
    flavour, args, *rest = done.stdout.split("\n")
    assert rest == [""]
    try:
        here = llama_build.cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        here = frozenset()
    assert (flavour, args) == llama_build.build_choice(platform.system(), platform.machine(), here)
