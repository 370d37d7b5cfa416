"""This host as training sees it: the CPU, the vector ISA torch uses, whether bfloat16 is native, the threads.

Two environment variables limit the ISA below what the CPU has, so that a big CPU can behave as a smaller
one (``make test-avx2``): ``ATEN_CPU_CAPABILITY`` (torch's own vectorised kernels, e.g. ``avx2``; read by
:func:`torch.backends.cpu.get_cpu_capability`) and ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``;
oneDNN's convolutions and matrix products, e.g. ``AVX2``). Both are read once, when the process first uses
them, so set them before starting Python. :func:`usable_bf16` is true only when the CPU has bfloat16
instructions *and* neither limit hides them: the answer ``precision: auto`` follows
(:func:`dpface_lib.config.resolve_precision`).

:func:`host_record` is the plain mapping a run stores (``run_info.json``'s ``host``, ``host.json`` beside a
pipeline's ``leaderboard.csv``) so that a number can be traced to the CPU and precision that produced it.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["RECORDED_FEATURES", "cpu_features", "cpu_model", "describe", "hardware_bf16", "host_record",
           "isa_level", "onednn_isa_limit", "usable_bf16"]

CPUINFO = Path("/proc/cpuinfo")
#: CPU features a run records when the CPU has them (x86 flags, then aarch64 ``Features``).
RECORDED_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve", "bf16")
#: x86 flags whose instructions compute bfloat16 products in hardware.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: oneDNN's ``ONEDNN_MAX_CPU_ISA`` values in increasing order (oneDNN 3.x names and their aliases). The first
#: with native bfloat16 dot products is ``AVX512_CORE_BF16``; ``AVX2_VNNI_2`` only converts.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
               "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
#: The environment variables that limit the ISA (recorded when set).
ISA_LIMIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_FIRST_BF16_ISA = ONEDNN_ISAS.index("AVX512_CORE_BF16")
#: ATen capabilities (:func:`torch.backends.cpu.get_cpu_capability`) whose kernels may use AVX-512.
_AVX512_CAPABILITIES = ("AVX512",)


def _cpuinfo_text(cpuinfo: str | os.PathLike = CPUINFO) -> str:
    try:
        return Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_field(text: str, names: tuple[str, ...]) -> str | None:
    """The value of the first line ``<name> : value`` of ``text`` for one of ``names`` (None when absent)."""
    for name in names:
        match = re.search(rf"^{name}\s*:\s*(.*)$", text, flags=re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def cpu_model(cpuinfo: str | os.PathLike = CPUINFO) -> str:
    """The CPU's name, e.g. ``"AMD EPYC"`` (Linux ``model name``), else what :mod:`platform` reports."""
    name = _cpuinfo_field(_cpuinfo_text(cpuinfo), ("model name", "Model", "Hardware"))
    return name or platform.processor() or platform.machine() or "unknown"


def cpu_features(cpuinfo: str | os.PathLike = CPUINFO) -> list[str]:
    """The :data:`RECORDED_FEATURES` this CPU has, in that order.

    Read from the ``flags`` (x86) or ``Features`` (aarch64) line of ``cpuinfo`` on Linux; elsewhere (macOS,
    Windows) from torch's own CPU probe, which knows the x86 ones. The hardware's features: the
    environment limits of the ISA do not remove any (see :func:`isa_level`)."""
    line = _cpuinfo_field(_cpuinfo_text(cpuinfo), ("flags", "Features"))
    if line is not None or platform.system() == "Linux":
        have = set((line or "").split())
    else:
        probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
                  "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
        have = {flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()}
    return [flag for flag in RECORDED_FEATURES if flag in have]


def hardware_bf16(cpuinfo: str | os.PathLike = CPUINFO) -> bool:
    """Whether the CPU has x86 bfloat16 dot-product instructions (AVX512-BF16 or AMX-BF16), limits aside.
    False on every other CPU: there oneDNN emulates bfloat16, which is slower than float32."""
    return any(flag in cpu_features(cpuinfo) for flag in BF16_FLAGS)


def isa_level() -> str:
    """torch's vector ISA for its own kernels, e.g. ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"`` (honours
    ``ATEN_CPU_CAPABILITY``)."""
    return str(torch.backends.cpu.get_cpu_capability())


def onednn_isa_limit(environ: dict[str, str] | None = None) -> str | None:
    """The oneDNN ISA limit set in the environment (``ONEDNN_MAX_CPU_ISA``, else ``DNNL_MAX_CPU_ISA``), upper
    case; None when unset or ``ALL``/``DEFAULT`` (no limit)."""
    env = os.environ if environ is None else environ
    value = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return None if value in ("", "ALL", "DEFAULT") else value


def usable_bf16(cpuinfo: str | os.PathLike = CPUINFO, environ: dict[str, str] | None = None,
                capability: str | None = None) -> bool:
    """Whether bfloat16 runs natively here *within the ISA limits*: :func:`hardware_bf16`, torch's kernels at
    AVX-512 (``capability``, default :func:`isa_level`) and a oneDNN limit (:func:`onednn_isa_limit`) at
    ``AVX512_CORE_BF16`` or above. An unknown oneDNN limit counts as below it (float32 is the safe choice)."""
    if not hardware_bf16(cpuinfo):
        return False
    if (capability if capability is not None else isa_level()) not in _AVX512_CAPABILITIES:
        return False
    limit = onednn_isa_limit(environ)
    return limit is None or (limit in ONEDNN_ISAS and ONEDNN_ISAS.index(limit) >= _FIRST_BF16_ISA)


def host_record(precision: Any = None, cpuinfo: str | os.PathLike = CPUINFO) -> dict[str, Any]:
    """What a run stores about its host (JSON-ready): ``cpu`` (model name), ``machine`` (e.g. ``x86_64``),
    ``features`` (:func:`cpu_features`), ``isa`` (:func:`isa_level`), ``isa_limits`` (the environment limits
    that are set), ``native_bf16`` (:func:`usable_bf16`), ``precision`` (the caller's: one value, or a mapping
    model -> precision), ``threads`` (:func:`torch.get_num_threads`), ``cpus`` (:func:`os.cpu_count`) and the
    ``torch`` version."""
    limits = {key: os.environ[key] for key in ISA_LIMIT_VARIABLES if os.environ.get(key)}
    return {"cpu": cpu_model(cpuinfo), "machine": platform.machine(), "features": cpu_features(cpuinfo),
            "isa": isa_level(), "isa_limits": limits, "native_bf16": usable_bf16(cpuinfo),
            "precision": precision, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "torch": torch.__version__}


def describe(record: dict[str, Any]) -> str:
    """One line for a log, e.g. ``AMD EPYC (x86_64): avx2 avx512f avx512_bf16; torch ISA AVX512, bf16 native;
    2 threads; torch 2.14.1``."""
    limits = " ".join(f"{k}={v}" for k, v in record.get("isa_limits", {}).items())
    bf16 = "bf16 native" if record.get("native_bf16") else "no native bf16"
    features = " ".join(record["features"]) or "no recorded features"
    return (f"{record['cpu']} ({record['machine']}): {features}; "
            f"torch ISA {record['isa']}{f' (limited: {limits})' if limits else ''}, {bf16}; "
            f"{record['threads']} threads of {record['cpus']} CPUs; torch {record['torch']}")
