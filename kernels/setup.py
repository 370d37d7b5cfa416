"""Build of the `dpface_kernels._C` extension (the op library; the Python package itself is pure Python).

Environment:
  DPFACE_WITH_CUDA=1   also compile the CUDA sources (needs nvcc under CUDA_HOME); 0 builds the CPU op only.
                       Unset: CUDA is built when nvcc is found.
  CUDA_HOME            CUDA toolkit prefix; TORCH_CUDA_ARCH_LIST picks the GPU architectures (e.g. "9.0").
  MAX_JOBS             parallel compile jobs (ninja).
  DPFACE_DEBUG=1       -O0 -g.
  CC / CXX             the C++ compiler: gcc, or clang (Debian's, or Apple's from the Xcode command-line
                       tools); no OpenMP is needed.
"""

import glob
import os
import shutil

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _nvcc_available() -> bool:
    if CUDA_HOME is None:
        return False
    return os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None


def _with_cuda() -> bool:
    flag = os.environ.get("DPFACE_WITH_CUDA", "auto").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if torch.version.cuda is None:
        if flag in ("1", "true", "yes", "on"):
            print("dpface_kernels: DPFACE_WITH_CUDA=1 but this torch has no CUDA support; building CPU only")
        return False
    if not _nvcc_available():
        if flag in ("1", "true", "yes", "on"):
            print(
                f"dpface_kernels: DPFACE_WITH_CUDA=1 but no nvcc under CUDA_HOME={CUDA_HOME}; "
                "building CPU only"
            )
        return False
    return True


def extensions():
    debug = os.environ.get("DPFACE_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    with_cuda = _with_cuda()
    os.chdir(HERE)  # sources are given relative to this folder
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    # No -fopenmp: the CPU kernels run on torch's own thread pool (csrc/parallel.h), so any C++17 compiler
    # builds them, Apple's clang included. torch adds -DPy_LIMITED_API for py_limited_api=True.
    cxx = [*opt]
    args = {"cxx": cxx}
    macros = []
    kind = CppExtension
    if with_cuda:
        kind = CUDAExtension
        sources += sorted(glob.glob(os.path.join(CSRC, "*.cu")))
        macros.append(("DPFACE_WITH_CUDA", "1"))
        args["nvcc"] = [*opt, "-lineinfo"]
    print(f"dpface_kernels: building {'CPU + CUDA' if with_cuda else 'CPU only'} from {len(sources)} sources")
    return [
        kind(
            "dpface_kernels._C",
            sources,
            define_macros=macros,
            extra_compile_args=args,
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
