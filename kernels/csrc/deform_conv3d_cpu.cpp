// CPU kernels of the 3D deformable convolution, parallelised on torch's intra-op thread pool (at::parallel_for
// through dpface::parallel_for, parallel.h; no OpenMP needed at build time).
//
// Work is cut into blocks of kBlock output voxels for one (offset group, sampling point): the sampling positions
// of a block are computed once into a small table and reused for every channel of the offset group, so
// positions are never recomputed per channel and the table stays in cache.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "deform_conv3d.h"
#include "parallel.h"

namespace dpface {
namespace {

constexpr int64_t kBlock = 256;
// Smallest amount of work (sampled corner reads) worth a parallel region; smaller problems run on one thread,
// which keeps tiny calls (tests, gradcheck) free of thread start-up costs.
constexpr int64_t kMinParallelWork = 1 << 16;

int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, work_per_task));
}

// The kernels read a copy of the input with a one-voxel zero border, (C, T+2, H+2, W+2). Every position inside
// (-1, T) x (-1, H) x (-1, W) then has all 8 corners inside the padded copy, the corners outside the original
// volume read the zero border, and a corner is `base + corner_step[j]`: no per-corner bounds checks. Positions
// further out have no corner inside the volume and get weight 0.
struct PaddedGeometry {
  int64_t T, H, W;            // padded sizes
  int64_t volume;             // T*H*W
  int64_t corner_step[8];     // flat distance of corner j from corner 0
  explicit PaddedGeometry(const DeformConv3dShape& s) : T(s.T + 2), H(s.H + 2), W(s.W + 2), volume(T * H * W) {
    for (int j = 0; j < 8; ++j) corner_step[j] = ((j >> 2) & 1) * H * W + ((j >> 1) & 1) * W + (j & 1);
  }
};

// Structure-of-arrays table of one block of sampling positions: flat index of corner 0 in the padded volume,
// fractional parts along t, h, w (0 for positions wholly outside, whose `inside` flag is 0), modulation.
template <typename scalar_t>
struct SampleTable {
  int64_t base[kBlock];
  scalar_t frac[3][kBlock];
  scalar_t modulation[kBlock];
  char inside[kBlock];
};

template <typename scalar_t>
void fill_sample_table(const DeformConv3dShape& s, const PaddedGeometry& pg, const scalar_t* offset,
                       const scalar_t* mask, int64_t g, int64_t k, int64_t l0, int64_t count,
                       SampleTable<scalar_t>& table) {
  const scalar_t* off_t = offset + (g * 3 * s.K + 3 * k) * s.L;
  const scalar_t* off_h = off_t + s.L;
  const scalar_t* off_w = off_h + s.L;
  const scalar_t* mod = mask != nullptr ? mask + (g * s.K + k) * s.L : nullptr;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t l = l0 + i;
    scalar_t t, h, w;
    base_position(s, k, l, t, h, w);
    t += off_t[l];
    h += off_h[l];
    w += off_w[l];
    table.modulation[i] = mod != nullptr ? mod[l] : scalar_t(1);
    const bool inside = t > scalar_t(-1) && t < scalar_t(s.T) && h > scalar_t(-1) && h < scalar_t(s.H) &&
                        w > scalar_t(-1) && w < scalar_t(s.W);
    table.inside[i] = inside;
    if (!inside) {
      table.base[i] = 0;
      table.frac[0][i] = table.frac[1][i] = table.frac[2][i] = scalar_t(0);
      continue;
    }
    const scalar_t ft = floor_of(t), fh = floor_of(h), fw = floor_of(w);
    // floor in [-1, size-1] -> padded index in [0, size]
    table.base[i] = ((static_cast<int64_t>(ft) + 1) * pg.H + static_cast<int64_t>(fh) + 1) * pg.W +
                    static_cast<int64_t>(fw) + 1;
    table.frac[0][i] = t - ft;
    table.frac[1][i] = h - fh;
    table.frac[2][i] = w - fw;
  }
}

// The 8 trilinear weights of table entry i, corner order as PaddedGeometry::corner_step.
template <typename scalar_t>
inline void corner_weights(const SampleTable<scalar_t>& table, int64_t i, scalar_t* weight) {
  const scalar_t at = table.frac[0][i], ah = table.frac[1][i], aw = table.frac[2][i];
  const scalar_t bt = 1 - at, bh = 1 - ah, bw = 1 - aw;
  weight[0] = bt * bh * bw;
  weight[1] = bt * bh * aw;
  weight[2] = bt * ah * bw;
  weight[3] = bt * ah * aw;
  weight[4] = at * bh * bw;
  weight[5] = at * bh * aw;
  weight[6] = at * ah * bw;
  weight[7] = at * ah * aw;
}

// Corner weights of the first `count` samples of the table, [i][8], with the modulation folded in
// (zero for samples outside the volume).
template <typename scalar_t>
inline void modulated_corner_weights(const SampleTable<scalar_t>& table, int64_t count, scalar_t* weights) {
  for (int64_t i = 0; i < count; ++i) {
    scalar_t* wi = weights + 8 * i;
    corner_weights(table, i, wi);
    const scalar_t m = table.inside[i] ? table.modulation[i] : scalar_t(0);
    for (int j = 0; j < 8; ++j) wi[j] *= m;
  }
}

template <typename scalar_t>
void im2col_cpu(const DeformConv3dShape& s, const scalar_t* padded_input, const scalar_t* offset,
                const scalar_t* mask, scalar_t* columns) {
  const PaddedGeometry pg(s);
  const int64_t blocks = (s.L + kBlock - 1) / kBlock;
  const int64_t tasks = s.offset_groups * s.K * blocks;
  parallel_for(0, tasks, grain_for(kBlock * 8 * s.channels_per_offset_group), [&](int64_t begin, int64_t end) {
    SampleTable<scalar_t> table;
    std::vector<scalar_t> weights(8 * kBlock);  // [i][8], modulation folded in
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / (s.K * blocks), k = (task / blocks) % s.K, b = task % blocks;
      const int64_t l0 = b * kBlock, count = std::min(kBlock, s.L - l0);
      fill_sample_table(s, pg, offset, mask, g, k, l0, count, table);
      modulated_corner_weights(table, count, weights.data());
      const int64_t s1 = pg.corner_step[1], s2 = pg.corner_step[2], s3 = pg.corner_step[3],
                    s4 = pg.corner_step[4], s5 = pg.corner_step[5], s6 = pg.corner_step[6],
                    s7 = pg.corner_step[7];
      for (int64_t c = g * s.channels_per_offset_group; c < (g + 1) * s.channels_per_offset_group; ++c) {
        const scalar_t* x = padded_input + c * pg.volume;
        scalar_t* col = columns + (c * s.K + k) * s.L + l0;
        for (int64_t i = 0; i < count; ++i) {
          const scalar_t* p = x + table.base[i];
          const scalar_t* wi = weights.data() + 8 * i;
          col[i] = wi[0] * p[0] + wi[1] * p[s1] + wi[2] * p[s2] + wi[3] * p[s3] + wi[4] * p[s4] + wi[5] * p[s5] +
                   wi[6] * p[s6] + wi[7] * p[s7];
        }
      }
    }
  });
}

// Scatters grad_columns into a padded gradient volume (C, T+2, H+2, W+2). Threads own disjoint channel ranges,
// so no two threads write the same element.
template <typename scalar_t>
void col2im_cpu(const DeformConv3dShape& s, const scalar_t* grad_columns, const scalar_t* offset,
                const scalar_t* mask, scalar_t* padded_grad_input) {
  const PaddedGeometry pg(s);
  const int64_t blocks = (s.L + kBlock - 1) / kBlock;
  const int64_t cpg = s.channels_per_offset_group;
  parallel_for(0, s.C, grain_for(s.K * s.L * 8), [&](int64_t c_begin, int64_t c_end) {
    SampleTable<scalar_t> table;
    std::vector<scalar_t> weights(8 * kBlock);
    for (int64_t g = c_begin / cpg; g * cpg < c_end; ++g) {
      const int64_t c_first = std::max(c_begin, g * cpg), c_last = std::min(c_end, (g + 1) * cpg);
      for (int64_t k = 0; k < s.K; ++k) {
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t l0 = b * kBlock, count = std::min(kBlock, s.L - l0);
          fill_sample_table(s, pg, offset, mask, g, k, l0, count, table);
          modulated_corner_weights(table, count, weights.data());
          for (int64_t c = c_first; c < c_last; ++c) {
            scalar_t* gx = padded_grad_input + c * pg.volume;
            const scalar_t* gcol = grad_columns + (c * s.K + k) * s.L + l0;
            for (int64_t i = 0; i < count; ++i) {
              const scalar_t gc = gcol[i];
              scalar_t* p = gx + table.base[i];
              const scalar_t* wi = weights.data() + 8 * i;
              for (int j = 0; j < 8; ++j) p[pg.corner_step[j]] += wi[j] * gc;
            }
          }
        }
      }
    }
  });
}

// Gradients of the offsets (chain rule through the trilinear weights) and of the modulation mask.
template <typename scalar_t>
void offset_mask_grad_cpu(const DeformConv3dShape& s, const scalar_t* grad_columns, const scalar_t* padded_input,
                          const scalar_t* offset, const scalar_t* mask, scalar_t* grad_offset,
                          scalar_t* grad_mask) {
  const PaddedGeometry pg(s);
  const int64_t blocks = (s.L + kBlock - 1) / kBlock;
  const int64_t tasks = s.offset_groups * s.K * blocks;
  parallel_for(0, tasks, grain_for(kBlock * 8 * s.channels_per_offset_group), [&](int64_t begin, int64_t end) {
    SampleTable<scalar_t> table;
    std::vector<scalar_t> acc(4 * kBlock);  // [value, d/dt, d/dh, d/dw][kBlock]
    const int64_t* step = pg.corner_step;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / (s.K * blocks), k = (task / blocks) % s.K, b = task % blocks;
      const int64_t l0 = b * kBlock, count = std::min(kBlock, s.L - l0);
      fill_sample_table(s, pg, offset, mask, g, k, l0, count, table);
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      for (int64_t c = g * s.channels_per_offset_group; c < (g + 1) * s.channels_per_offset_group; ++c) {
        const scalar_t* x = padded_input + c * pg.volume;
        const scalar_t* gcol = grad_columns + (c * s.K + k) * s.L + l0;
        for (int64_t i = 0; i < count; ++i) {
          const scalar_t* p = x + table.base[i];
          const scalar_t gc = table.inside[i] ? gcol[i] : scalar_t(0);
          // Bilinear pieces: v_ab = value at (t0 + a) interpolated over h and w, etc.
          const scalar_t at = table.frac[0][i], ah = table.frac[1][i], aw = table.frac[2][i];
          const scalar_t v000 = p[0], v001 = p[step[1]], v010 = p[step[2]], v011 = p[step[3]];
          const scalar_t v100 = p[step[4]], v101 = p[step[5]], v110 = p[step[6]], v111 = p[step[7]];
          // Interpolate along w first.
          const scalar_t w00 = v000 + aw * (v001 - v000), w01 = v010 + aw * (v011 - v010);
          const scalar_t w10 = v100 + aw * (v101 - v100), w11 = v110 + aw * (v111 - v110);
          // Then along h.
          const scalar_t h0 = w00 + ah * (w01 - w00), h1 = w10 + ah * (w11 - w10);
          const scalar_t value = h0 + at * (h1 - h0);
          const scalar_t d_t = h1 - h0;
          const scalar_t d_h = (w01 - w00) + at * ((w11 - w10) - (w01 - w00));
          const scalar_t e0 = (v001 - v000) + ah * ((v011 - v010) - (v001 - v000));
          const scalar_t e1 = (v101 - v100) + ah * ((v111 - v110) - (v101 - v100));
          const scalar_t d_w = e0 + at * (e1 - e0);
          acc[i] += gc * value;
          acc[kBlock + i] += gc * d_t;
          acc[2 * kBlock + i] += gc * d_h;
          acc[3 * kBlock + i] += gc * d_w;
        }
      }
      scalar_t* go = grad_offset + (g * 3 * s.K + 3 * k) * s.L + l0;
      for (int64_t i = 0; i < count; ++i) {
        const scalar_t m = table.modulation[i];
        go[i] = m * acc[kBlock + i];
        go[s.L + i] = m * acc[2 * kBlock + i];
        go[2 * s.L + i] = m * acc[3 * kBlock + i];
      }
      if (grad_mask != nullptr) {
        scalar_t* gm = grad_mask + (g * s.K + k) * s.L + l0;
        for (int64_t i = 0; i < count; ++i) gm[i] = acc[i];
      }
    }
  });
}

at::Tensor zero_border(const at::Tensor& volume) {  // (C, T, H, W) -> (C, T+2, H+2, W+2)
  return at::constant_pad_nd(volume, {1, 1, 1, 1, 1, 1}, 0).contiguous();
}

template <typename scalar_t>
const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

void im2col(const DeformConv3dShape& s, const at::Tensor& input_n, const at::Tensor& offset_n,
            const at::Tensor& mask_n, at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES(input_n.scalar_type(), "deform_conv3d_im2col_cpu", [&] {
    const at::Tensor padded = zero_border(input_n);
    im2col_cpu<scalar_t>(s, padded.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(),
                         data_or_null<scalar_t>(mask_n), columns.mutable_data_ptr<scalar_t>());
  });
}

void col2im(const DeformConv3dShape& s, const at::Tensor& grad_columns, const at::Tensor& offset_n,
            const at::Tensor& mask_n, at::Tensor& grad_input_n) {
  AT_DISPATCH_FLOATING_TYPES(grad_columns.scalar_type(), "deform_conv3d_col2im_cpu", [&] {
    at::Tensor padded = at::zeros({s.C, s.T + 2, s.H + 2, s.W + 2}, grad_columns.options());
    col2im_cpu<scalar_t>(s, grad_columns.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(),
                         data_or_null<scalar_t>(mask_n), padded.mutable_data_ptr<scalar_t>());
    grad_input_n.add_(padded.slice(1, 1, s.T + 1).slice(2, 1, s.H + 1).slice(3, 1, s.W + 1));
  });
}

void offset_mask_grad(const DeformConv3dShape& s, const at::Tensor& grad_columns, const at::Tensor& input_n,
                      const at::Tensor& offset_n, const at::Tensor& mask_n, at::Tensor& grad_offset_n,
                      at::Tensor& grad_mask_n) {
  AT_DISPATCH_FLOATING_TYPES(grad_columns.scalar_type(), "deform_conv3d_offset_mask_grad_cpu", [&] {
    const at::Tensor padded = zero_border(input_n);
    offset_mask_grad_cpu<scalar_t>(s, grad_columns.const_data_ptr<scalar_t>(), padded.const_data_ptr<scalar_t>(),
                                   offset_n.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(mask_n),
                                   grad_offset_n.mutable_data_ptr<scalar_t>(),
                                   grad_mask_n.defined() ? grad_mask_n.mutable_data_ptr<scalar_t>() : nullptr);
  });
}

const DeformConv3dKernels kCpuKernels{&im2col, &col2im, &offset_mask_grad};

std::tuple<at::Tensor, at::Tensor> deform_conv3d_cpu(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, int64_t offset_groups, bool save_columns) {
  TORCH_CHECK(input.device().is_cpu(), "deform_conv3d (CPU kernel): input must be on the CPU");
  return deform_conv3d_forward_impl(kCpuKernels, input, offset, weight, bias, mask, stride, padding, dilation, groups,
                                    offset_groups, save_columns);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv3d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& columns, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups,
    std::array<bool, 3> output_mask) {
  TORCH_CHECK(input.device().is_cpu(), "deform_conv3d_backward (CPU kernel): input must be on the CPU");
  return deform_conv3d_backward_impl(kCpuKernels, grad_output, input, offset, weight, mask, columns, stride, padding,
                                     dilation, groups, offset_groups, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(dpface, CPU, m) {
  m.impl("deform_conv3d", &deform_conv3d_cpu);
  m.impl("deform_conv3d_backward", &deform_conv3d_backward_cpu);
}

}  // namespace dpface
