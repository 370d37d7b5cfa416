// CUDA kernels of the 3D deformable convolution. Every kernel runs one thread per (offset group g, sampling
// point k, output voxel l): the thread finds the sampling position and its 8 trilinear corners once and then
// loops over the channels of offset group g, so the position arithmetic is shared by C / offset_groups
// channels, and neighbouring threads (neighbouring l) read neighbouring offsets and write neighbouring column
// entries. Index arithmetic runs in int32 whenever every flat index of the call fits (it nearly always does),
// since 64-bit division costs several times more on the GPU. The trilinear arithmetic is the header code
// shared with the CPU path; it runs in float for half/bfloat16 inputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "deform_conv3d.h"

namespace dpface {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

inline int blocks_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks));
}

// True when every flat index of one batch element (columns, input volume, offsets), plus one grid stride, fits
// in int32.
bool fits_int32(const DeformConv3dShape& s) {
  const int64_t largest = std::max({s.C * s.K * s.L, s.C * s.T * s.H * s.W, s.offset_groups * 3 * s.K * s.L});
  return largest + kMaxBlocks * kThreads < std::numeric_limits<int32_t>::max();
}

// Sampling point (g, k, l) of the thread: its position (t, h, w) in voxels, offsets added.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ void sample_position(const DeformConv3dShape& s, const scalar_t* offset, index_t g,
                                                index_t k, index_t l, acc_t& t, acc_t& h, acc_t& w) {
  base_position(s, k, l, t, h, w);
  const index_t L = static_cast<index_t>(s.L);
  const scalar_t* off = offset + (g * 3 * static_cast<index_t>(s.K) + 3 * k) * L + l;
  t += static_cast<acc_t>(off[0]);
  h += static_cast<acc_t>(off[L]);
  w += static_cast<acc_t>(off[2 * L]);
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void im2col_kernel(const DeformConv3dShape s, const scalar_t* __restrict__ input,
                              const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
                              scalar_t* __restrict__ columns) {
  const index_t L = s.L, K = s.K, KL = K * L, cpg = s.channels_per_offset_group;
  const index_t total = static_cast<index_t>(s.offset_groups) * KL;
  const index_t volume = static_cast<index_t>(s.T * s.H * s.W);
  for (index_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
    const index_t l = idx % L, k = (idx / L) % K, g = idx / KL;
    acc_t t, h, w;
    sample_position(s, offset, g, k, l, t, h, w);
    TrilinearCorners<acc_t> corners;
    const bool inside = trilinear_corners(t, h, w, s.T, s.H, s.W, corners);
    const acc_t m = (inside && mask != nullptr) ? static_cast<acc_t>(mask[idx]) : acc_t(1);
    const scalar_t* x = input + g * cpg * volume;
    scalar_t* col = columns + (g * cpg * K + k) * L + l;  // row c*K + k, c = g*cpg
    for (index_t c = 0; c < cpg; ++c, x += volume, col += KL) {
      acc_t value = 0;
      if (inside) {
#pragma unroll
        for (int j = 0; j < 8; ++j) value += corners.weight[j] * static_cast<acc_t>(x[corners.index[j]]);
      }
      *col = static_cast<scalar_t>(value * m);
    }
  }
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void col2im_kernel(const DeformConv3dShape s, const scalar_t* __restrict__ grad_columns,
                              const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
                              scalar_t* __restrict__ grad_input) {
  const index_t L = s.L, K = s.K, KL = K * L, cpg = s.channels_per_offset_group;
  const index_t total = static_cast<index_t>(s.offset_groups) * KL;
  const index_t volume = static_cast<index_t>(s.T * s.H * s.W);
  for (index_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
    const index_t l = idx % L, k = (idx / L) % K, g = idx / KL;
    acc_t t, h, w;
    sample_position(s, offset, g, k, l, t, h, w);
    TrilinearCorners<acc_t> corners;
    if (!trilinear_corners(t, h, w, s.T, s.H, s.W, corners)) continue;
    const acc_t m = mask != nullptr ? static_cast<acc_t>(mask[idx]) : acc_t(1);
    if (m == acc_t(0)) continue;
    scalar_t* gx = grad_input + g * cpg * volume;
    const scalar_t* gcol = grad_columns + (g * cpg * K + k) * L + l;
    for (index_t c = 0; c < cpg; ++c, gx += volume, gcol += KL) {
      const acc_t grad = static_cast<acc_t>(*gcol) * m;
      if (grad == acc_t(0)) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (corners.weight[j] != acc_t(0)) {
          gpuAtomicAdd(gx + corners.index[j], static_cast<scalar_t>(corners.weight[j] * grad));
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void offset_mask_grad_kernel(const DeformConv3dShape s, const scalar_t* __restrict__ grad_columns,
                                        const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
                                        const scalar_t* __restrict__ mask, scalar_t* __restrict__ grad_offset,
                                        scalar_t* __restrict__ grad_mask) {
  const index_t L = s.L, K = s.K, KL = K * L, cpg = s.channels_per_offset_group;
  const index_t total = static_cast<index_t>(s.offset_groups) * KL;
  const index_t volume = static_cast<index_t>(s.T * s.H * s.W);
  for (index_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
    const index_t l = idx % L, k = (idx / L) % K, g = idx / KL;
    acc_t t, h, w;
    sample_position(s, offset, g, k, l, t, h, w);
    TrilinearCorners<acc_t> corners;
    acc_t value = 0, dt = 0, dh = 0, dw = 0;
    if (trilinear_corners(t, h, w, s.T, s.H, s.W, corners)) {
      const scalar_t* x = input + g * cpg * volume;
      const scalar_t* gcol = grad_columns + (g * cpg * K + k) * L + l;
      for (index_t c = 0; c < cpg; ++c, x += volume, gcol += KL) {
        const acc_t gc = static_cast<acc_t>(*gcol);
        acc_t v_sum = 0, t_sum = 0, h_sum = 0, w_sum = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const acc_t v = static_cast<acc_t>(x[corners.index[j]]);
          v_sum += corners.weight[j] * v;
          t_sum += corners.d_weight[j][0] * v;
          h_sum += corners.d_weight[j][1] * v;
          w_sum += corners.d_weight[j][2] * v;
        }
        value += gc * v_sum;
        dt += gc * t_sum;
        dh += gc * h_sum;
        dw += gc * w_sum;
      }
    }
    const acc_t m = mask != nullptr ? static_cast<acc_t>(mask[idx]) : acc_t(1);
    scalar_t* go = grad_offset + (g * 3 * K + 3 * k) * L + l;
    go[0] = static_cast<scalar_t>(m * dt);
    go[L] = static_cast<scalar_t>(m * dh);
    go[2 * L] = static_cast<scalar_t>(m * dw);
    if (grad_mask != nullptr) grad_mask[idx] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t>
const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

#define DPFACE_DISPATCH_CUDA_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

// Runs the lambda `__VA_ARGS__` with `index_t` = int32_t when the call's indices fit, else int64_t (C++17: the
// extension is built with the standard that the installed torch asks for).
#define DPFACE_DISPATCH_INDEX(S, ...) \
  do {                                \
    if (fits_int32(S)) {              \
      using index_t = int32_t;        \
      __VA_ARGS__();                  \
    } else {                          \
      using index_t = int64_t;        \
      __VA_ARGS__();                  \
    }                                 \
  } while (0)

void im2col(const DeformConv3dShape& s, const at::Tensor& input_n, const at::Tensor& offset_n,
            const at::Tensor& mask_n, at::Tensor& columns) {
  const int64_t total = s.offset_groups * s.K * s.L;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DPFACE_DISPATCH_CUDA_TYPES(input_n.scalar_type(), "deform_conv3d_im2col_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    DPFACE_DISPATCH_INDEX(s, [&] {
      im2col_kernel<scalar_t, acc_t, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
          s, input_n.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(),
          data_or_null<scalar_t>(mask_n), columns.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void col2im(const DeformConv3dShape& s, const at::Tensor& grad_columns, const at::Tensor& offset_n,
            const at::Tensor& mask_n, at::Tensor& grad_input_n) {
  const int64_t total = s.offset_groups * s.K * s.L;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DPFACE_DISPATCH_CUDA_TYPES(grad_columns.scalar_type(), "deform_conv3d_col2im_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    DPFACE_DISPATCH_INDEX(s, [&] {
      col2im_kernel<scalar_t, acc_t, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
          s, grad_columns.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(),
          data_or_null<scalar_t>(mask_n), grad_input_n.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void offset_mask_grad(const DeformConv3dShape& s, const at::Tensor& grad_columns, const at::Tensor& input_n,
                      const at::Tensor& offset_n, const at::Tensor& mask_n, at::Tensor& grad_offset_n,
                      at::Tensor& grad_mask_n) {
  const int64_t total = s.offset_groups * s.K * s.L;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DPFACE_DISPATCH_CUDA_TYPES(grad_columns.scalar_type(), "deform_conv3d_offset_mask_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    DPFACE_DISPATCH_INDEX(s, [&] {
      offset_mask_grad_kernel<scalar_t, acc_t, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
          s, grad_columns.const_data_ptr<scalar_t>(), input_n.const_data_ptr<scalar_t>(),
          offset_n.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(mask_n),
          grad_offset_n.mutable_data_ptr<scalar_t>(),
          grad_mask_n.defined() ? grad_mask_n.mutable_data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

const DeformConv3dKernels kCudaKernels{&im2col, &col2im, &offset_mask_grad};

std::tuple<at::Tensor, at::Tensor> deform_conv3d_cuda(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, int64_t offset_groups, bool save_columns) {
  TORCH_CHECK(input.is_cuda(), "deform_conv3d (CUDA kernel): input must be on a CUDA device");
  const c10::cuda::CUDAGuard device_guard(input.device());
  return deform_conv3d_forward_impl(kCudaKernels, input, offset, weight, bias, mask, stride, padding, dilation, groups,
                                    offset_groups, save_columns);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv3d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& columns, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups,
    std::array<bool, 3> output_mask) {
  TORCH_CHECK(input.is_cuda(), "deform_conv3d_backward (CUDA kernel): input must be on a CUDA device");
  const c10::cuda::CUDAGuard device_guard(input.device());
  return deform_conv3d_backward_impl(kCudaKernels, grad_output, input, offset, weight, mask, columns, stride, padding,
                                     dilation, groups, offset_groups, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(dpface, CUDA, m) {
  m.impl("deform_conv3d", &deform_conv3d_cuda);
  m.impl("deform_conv3d_backward", &deform_conv3d_backward_cuda);
}

}  // namespace dpface
