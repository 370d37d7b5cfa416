#!/usr/bin/env bash
# GPU proof of the compiled kernels, as one short run on a machine with an NVIDIA GPU (about 5 minutes on
# one H200, most of it the CUDA build). Run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # logs go to $OUT (default runs/gpu_check/)
#
# It uses the machine's own python3 and torch (it installs nothing), so it also runs where the kit's pinned
# virtual environment is absent. Steps, each logged to its own file:
#   1. build dpface_kernels in place with the CUDA sources (TORCH_CUDA_ARCH_LIST, default 9.0 = Hopper);
#   2. pytest -m cuda tests/kernels: the CUDA op against the pure-PyTorch oracle, gradcheck, opcheck;
#   3. benchmarks/bench_deform_conv3d.py --device cuda: compiled vs reference (ANM layers) and vs
#      torchvision.ops.deform_conv2d on equal 2D work;
#   4. benchmarks/bench_models.py --device cuda: a full StereoDPNet training step at 576x384 (paper widths).
# A failing step is reported and the next one still runs; the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DPFACE_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
failed=0

step() {  # step NAME COMMAND...: run, tee to $OUT/NAME.log, time it
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" 2>&1 | tee "$OUT/$name.log"; then
        echo "== $name: ok in $((SECONDS - start)) s"
    else
        echo "== $name: FAILED in $((SECONDS - start)) s"
        failed=$((failed + 1))
    fi
}

step machine bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
    $PY -c 'import torch, torchvision; print(\"torch\", torch.__version__, \"torchvision\", \
torchvision.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name())'"
step build bash -c "cd kernels && rm -f dpface_kernels/_C*.so && $PY setup.py -q build_ext --inplace \
    && cd .. && $PY -c 'import dpface_kernels as k; assert k.has_cuda(), \"no CUDA kernels\"; print(\"cuda ok\")'"
step tests "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/kernels
step bench_deform "$PY" benchmarks/bench_deform_conv3d.py --device cuda --batch 2 --hw 96x144 --repeats 20
step bench_train "$PY" benchmarks/bench_models.py --device cuda --models stereodpnet,stereodpnet-noanm \
    --sizes 576x384 --batch 2 --repeats 10 --warmup 2
echo "gpu_check: $failed failed step(s); logs in $OUT"
exit "$failed"
