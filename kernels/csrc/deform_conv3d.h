// 3D deformable convolution: shared declarations, the call geometry, and the trilinear sampling arithmetic
// (host + device) used by the CUDA kernels; the CPU kernels use the same geometry with a zero-bordered copy of
// the input instead of per-corner bounds checks (deform_conv3d_cpu.cpp).
//
// Layouts (all tensors contiguous):
//   input   (N, C, T, H, W)
//   offset  (N, G_off * 3 * K, T', H', W'), K = kT*kH*kW; channel G_off-group g, sampling point k, axis a
//           (0 = t, 1 = h, 2 = w) is g*3*K + 3*k + a; sampling points are ordered t-major, then h, then w.
//   mask    (N, G_off * K, T', H', W'), channel g*K + k (optional modulation, DCNv2 style)
//   columns (C * K, L), L = T'*H'*W', row c*K + k: the (modulated) sample of channel c at point k.
// A sampling point of output voxel (t', h', w') sits at
//   p = (t', h', w') * stride - padding + (kt, kh, kw) * dilation + offset
// and is read with trilinear interpolation; each of the 8 corners outside the volume contributes zero.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#if defined(__CUDACC__)
#define DPFACE_HD __host__ __device__ __forceinline__
#else
#define DPFACE_HD inline
#endif

namespace dpface {

// Geometry of one call, computed once on the host and passed by value to the kernels.
struct DeformConv3dShape {
  int64_t N, C, T, H, W;      // input
  int64_t O;                  // output channels
  int64_t kT, kH, kW, K;      // kernel, K = kT*kH*kW
  int64_t oT, oH, oW, L;      // output volume, L = oT*oH*oW
  int64_t sT, sH, sW;         // stride
  int64_t pT, pH, pW;         // padding
  int64_t dT, dH, dW;         // dilation
  int64_t groups, offset_groups;
  int64_t channels_per_offset_group;  // C / offset_groups
};

// The 8 corners of a trilinear read: flat index into one (T, H, W) channel and interpolation weight.
// Corners outside the volume get index 0 and weight 0, so callers never branch.
// d_weight[j][a] is the derivative of weight j with respect to the position along axis a (t, h, w).
template <typename scalar_t>
struct TrilinearCorners {
  int64_t index[8];
  scalar_t weight[8];
  scalar_t d_weight[8][3];
};

DPFACE_HD float floor_of(float x) { return floorf(x); }
DPFACE_HD double floor_of(double x) { return floor(x); }

// Fills `c` for position (t, h, w) in a (T, H, W) volume. Returns false when no corner is inside (all weights 0).
// Corner j has bits (jt, jh, jw) = (j >> 2 & 1, j >> 1 & 1, j & 1) selecting floor (0) or floor + 1 (1) per axis.
template <typename scalar_t>
DPFACE_HD bool trilinear_corners(scalar_t t, scalar_t h, scalar_t w, int64_t T, int64_t H, int64_t W,
                                 TrilinearCorners<scalar_t>& c) {
  for (int j = 0; j < 8; ++j) {
    c.index[j] = 0;
    c.weight[j] = scalar_t(0);
    c.d_weight[j][0] = c.d_weight[j][1] = c.d_weight[j][2] = scalar_t(0);
  }
  // Fully outside (or NaN): every corner is out of the volume.
  if (!(t > scalar_t(-1) && t < scalar_t(T) && h > scalar_t(-1) && h < scalar_t(H) && w > scalar_t(-1) &&
        w < scalar_t(W))) {
    return false;
  }
  const scalar_t ft = floor_of(t), fh = floor_of(h), fw = floor_of(w);
  const int64_t t0 = static_cast<int64_t>(ft), h0 = static_cast<int64_t>(fh), w0 = static_cast<int64_t>(fw);
  // Fraction along each axis: weight of the "+1" corner; 1 - fraction is the weight of the floor corner.
  const scalar_t at = t - ft, ah = h - fh, aw = w - fw;
  const scalar_t wt[2] = {scalar_t(1) - at, at};
  const scalar_t wh[2] = {scalar_t(1) - ah, ah};
  const scalar_t ww[2] = {scalar_t(1) - aw, aw};
  const scalar_t sign[2] = {scalar_t(-1), scalar_t(1)};
  bool any = false;
  for (int j = 0; j < 8; ++j) {
    const int jt = (j >> 2) & 1, jh = (j >> 1) & 1, jw = j & 1;
    const int64_t ti = t0 + jt, hi = h0 + jh, wi = w0 + jw;
    if (ti < 0 || ti >= T || hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
    c.index[j] = (ti * H + hi) * W + wi;
    c.weight[j] = wt[jt] * wh[jh] * ww[jw];
    c.d_weight[j][0] = sign[jt] * wh[jh] * ww[jw];
    c.d_weight[j][1] = wt[jt] * sign[jh] * ww[jw];
    c.d_weight[j][2] = wt[jt] * wh[jh] * sign[jw];
    any = true;
  }
  return any;
}

// Position of sampling point k of output voxel l (before adding the learned offset).
// index_t is int64_t on the CPU; the CUDA kernels use int32 arithmetic when every index of the call fits.
template <typename scalar_t, typename index_t>
DPFACE_HD void base_position(const DeformConv3dShape& s, index_t k, index_t l, scalar_t& t, scalar_t& h,
                             scalar_t& w) {
  const index_t kH = static_cast<index_t>(s.kH), kW = static_cast<index_t>(s.kW);
  const index_t oH = static_cast<index_t>(s.oH), oW = static_cast<index_t>(s.oW);
  const index_t kt = k / (kH * kW), kh = (k / kW) % kH, kw = k % kW;
  const index_t ot = l / (oH * oW), oh = (l / oW) % oH, ow = l % oW;
  t = static_cast<scalar_t>(ot * static_cast<index_t>(s.sT) - static_cast<index_t>(s.pT) +
                            kt * static_cast<index_t>(s.dT));
  h = static_cast<scalar_t>(oh * static_cast<index_t>(s.sH) - static_cast<index_t>(s.pH) +
                            kh * static_cast<index_t>(s.dH));
  w = static_cast<scalar_t>(ow * static_cast<index_t>(s.sW) - static_cast<index_t>(s.pW) +
                            kw * static_cast<index_t>(s.dW));
}

// Validates arguments (dims, channel counts, dtypes, devices) and returns the call geometry.
DeformConv3dShape deform_conv3d_shape(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                      int64_t offset_groups);


// Per-backend kernels working on one batch element; tensors are contiguous, `mask_n` may be undefined.
//   im2col:           columns (C*K, L) <- modulated samples of input_n (C, T, H, W)
//   col2im:           grad_input_n (C, T, H, W) += scatter of grad_columns (C*K, L) (grad_input_n pre-zeroed)
//   offset_mask_grad: grad_offset_n (G_off*3*K, L) and, if defined, grad_mask_n (G_off*K, L) from grad_columns
struct DeformConv3dKernels {
  void (*im2col)(const DeformConv3dShape& s, const at::Tensor& input_n, const at::Tensor& offset_n,
                 const at::Tensor& mask_n, at::Tensor& columns);
  void (*col2im)(const DeformConv3dShape& s, const at::Tensor& grad_columns, const at::Tensor& offset_n,
                 const at::Tensor& mask_n, at::Tensor& grad_input_n);
  void (*offset_mask_grad)(const DeformConv3dShape& s, const at::Tensor& grad_columns, const at::Tensor& input_n,
                           const at::Tensor& offset_n, const at::Tensor& mask_n, at::Tensor& grad_offset_n,
                           at::Tensor& grad_mask_n);
};

// Device-independent drivers: column buffer per batch element + grouped matrix products (ops.cpp). The forward
// returns (output, columns), columns (N, C*K, L) when save_columns, else empty. The backward computes only the
// gradients output_mask asks for (input; offset and mask; weight) and reuses `saved_columns` when given.
std::tuple<at::Tensor, at::Tensor> deform_conv3d_forward_impl(
    const DeformConv3dKernels& kernels, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups, bool save_columns);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv3d_backward_impl(
    const DeformConv3dKernels& kernels, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& offset, const at::Tensor& weight, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& saved_columns, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, int64_t offset_groups, std::array<bool, 3> output_mask);

}  // namespace dpface
