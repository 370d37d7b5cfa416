"""The host record and the ISA limits: bfloat16 counts as native only where the usable ISA computes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dpface_lib import config as config_module
from dpface_lib import hostinfo

X86 = ("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f {}\n"
       "bugs\t\t: avx512_bf16\n")
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd40\n"


def _cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_features_and_model_come_from_the_flags_line(tmp_path: Path) -> None:
    path = _cpuinfo(tmp_path, X86.format("avx512_vnni avx512_bf16 amx_tile"))
    assert hostinfo.cpu_model(path) == "Test CPU 9000"
    assert hostinfo.cpu_features(path) == ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
    assert hostinfo.hardware_bf16(path)
    # the bugs line names avx512_bf16 too: only the flags line counts
    assert hostinfo.cpu_features(_cpuinfo(tmp_path, X86.format(""))) == ["avx2", "avx512f"]
    assert hostinfo.cpu_features(_cpuinfo(tmp_path, ARM)) == ["asimd", "sve", "bf16"]
    assert not hostinfo.hardware_bf16(path.with_name("missing"))


@pytest.mark.parametrize(("limit", "native"), [
    ({}, True), ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True), ({"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True), ({"DNNL_MAX_CPU_ISA": "AVX10_1_512"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False), ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI_2"}, False), ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "NOT_AN_ISA"}, False),
])
def test_a_onednn_limit_below_avx512_core_bf16_hides_native_bf16(tmp_path: Path, limit: dict,
                                                                 native: bool) -> None:
    path = _cpuinfo(tmp_path, X86.format("avx512_bf16"))
    assert hostinfo.usable_bf16(path, environ=limit, capability="AVX512") is native
    # ... and so does torch's own ISA below AVX-512, whatever oneDNN may use
    assert not hostinfo.usable_bf16(path, environ=limit, capability="AVX2")
    assert not hostinfo.usable_bf16(path, environ=limit, capability="DEFAULT")
    # without the instructions nothing makes bf16 native
    assert not hostinfo.usable_bf16(_cpuinfo(tmp_path, X86.format("avx512_vnni")), environ=limit,
                                    capability="AVX512")


def test_auto_precision_follows_the_aten_limit(tmp_path: Path, monkeypatch) -> None:
    path = _cpuinfo(tmp_path, X86.format("avx512_bf16"))
    for variable in hostinfo.ISA_LIMIT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for capability, native in (("AVX512", True), ("AVX2", False)):
        monkeypatch.setattr(hostinfo, "isa_level", lambda capability=capability: capability)
        assert config_module.native_bf16("cpu", path) is native
    monkeypatch.setattr(hostinfo, "isa_level", lambda: "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not config_module.native_bf16("cpu", path)


def test_host_record_is_json_and_names_what_produced_a_number() -> None:
    record = hostinfo.host_record({"dpnet": "32-true"})
    assert json.loads(json.dumps(record)) == record
    assert record["precision"] == {"dpnet": "32-true"}
    assert record["isa"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == torch.get_num_threads() and record["torch"] == torch.__version__
    assert set(record["features"]) <= set(hostinfo.RECORDED_FEATURES)
    limits = {k: os.environ[k] for k in hostinfo.ISA_LIMIT_VARIABLES if os.environ.get(k)}
    assert record["isa_limits"] == limits
    line = hostinfo.describe(record)
    assert record["cpu"] in line and f"torch ISA {record['isa']}" in line


@pytest.mark.isa
def test_this_process_honours_the_isa_limits_it_was_started_with() -> None:
    """Run as is and under ``make test-avx2``: torch's reported ISA and ``precision: auto`` follow the
    environment's limits, and oneDNN's bfloat16 support (what the convolutions under autocast use) agrees."""
    capability = torch.backends.cpu.get_cpu_capability()
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    if aten in ("AVX2", "DEFAULT"):
        assert capability == aten
    limit = hostinfo.onednn_isa_limit()
    if limit == "AVX2":
        assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    native = hostinfo.usable_bf16()
    assert config_module.resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    if aten == "AVX2" or limit == "AVX2":
        assert not native and hostinfo.host_record()["isa_limits"]
