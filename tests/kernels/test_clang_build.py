"""The kernels build with clang and no OpenMP library, as with Apple's Xcode command-line tools, and that
build passes the op tests (test_deform_conv3d.py: opcheck, gradcheck, agreement with the pure-PyTorch
reference, nn.Conv3d and torchvision) on the CPU.

One build (Debian's clang, `make clang` installs it) into a temporary folder; the op tests then run in a
fresh process that imports that build instead of the installed one. Skipped, saying why, without clang++.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KERNELS = REPO / "kernels"
CLANGXX = shutil.which("clang++")
CLANG = shutil.which("clang")
READELF = shutil.which("readelf")

pytestmark = [
    pytest.mark.slow,  # about 1.5 min of build and 1.5 min of op tests on 2 cores
    pytest.mark.skipif(
        CLANGXX is None or CLANG is None,
        reason="clang/clang++ not found: `make clang` installs Debian's clang with apt-get",
    ),
]

# Runs in the child process: import the clang build, prove it is the one loaded, then run the op tests.
CHILD = """
import sys
import dpface_kernels, pytest
build = sys.argv[1]
assert dpface_kernels.has_compiled(), dpface_kernels._LOAD_ERROR
assert dpface_kernels._C.__file__.startswith(build), dpface_kernels._C.__file__
print("loaded", dpface_kernels._C.__file__)
sys.exit(pytest.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def clang_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a `dpface_kernels` package whose `_C` was compiled by clang++ without OpenMP."""
    out = tmp_path_factory.mktemp("clang_build")
    env = {**os.environ, "CC": CLANG, "CXX": CLANGXX, "DPFACE_WITH_CUDA": "0", "MAX_JOBS": "2"}
    cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", str(out), "--build-temp", str(out / "obj")]
    result = subprocess.run(cmd, cwd=KERNELS, env=env, capture_output=True, text=True, timeout=1500)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"clang build of kernels/ failed:\n{log[-4000:]}"
    compile_lines = [line for line in log.splitlines() if " -c " in line and "csrc/" in line]
    assert compile_lines and all("clang++" in line for line in compile_lines), log[-4000:]
    assert "openmp" not in log.lower(), "the build passed an OpenMP flag"
    package = out / "dpface_kernels"
    for source in (KERNELS / "dpface_kernels").glob("*.py"):
        shutil.copy2(source, package / source.name)
    return out


def _library(build: Path) -> Path:
    (library,) = (build / "dpface_kernels").glob("_C*.so")
    return library


@pytest.mark.skipif(READELF is None, reason="readelf (binutils) not found")
def test_clang_build_links_no_openmp_library(clang_build):
    library = _library(clang_build)
    comment = subprocess.run([READELF, "-p", ".comment", str(library)], capture_output=True, text=True).stdout
    assert "clang version" in comment, comment
    dynamic = subprocess.run(
        [READELF, "-d", "--dyn-syms", "-W", str(library)], capture_output=True, text=True
    )
    assert dynamic.returncode == 0, dynamic.stderr
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", dynamic.stdout)
    assert "libtorch_cpu.so" in needed, needed
    assert not [name for name in needed if re.search(r"lib(g|i|)omp", name)], needed
    assert not re.search(r"\b(GOMP_\w+|omp_\w+|__kmpc_\w+)", dynamic.stdout), "OpenMP symbols referenced"


def test_clang_build_passes_the_op_tests(clang_build):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(clang_build), os.environ.get("PYTHONPATH", "")])}
    tests = REPO / "tests" / "kernels" / "test_deform_conv3d.py"
    args = [str(tests), "-q", "-p", "no:cacheprovider", "-m", "not cuda", "-rs"]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(clang_build), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"op tests failed with the clang build:\n{log[-6000:]}"
    assert f"loaded {_library(clang_build)}" in log
    summary = re.search(r"(\d+) passed", log)
    assert summary and int(summary.group(1)) >= 30, log[-2000:]
    assert "skipped" not in log, log[-2000:]
