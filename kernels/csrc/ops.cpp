// Operator schema of the dpface library, argument validation shared by every backend, and the empty Python
// module that lets `from dpface_kernels import _C` load this shared library (the ops register themselves when
// the library is loaded; no Python bindings are needed).
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>

#include "deform_conv3d.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) {
#ifdef DPFACE_WITH_CUDA
    PyModule_AddIntConstant(module, "with_cuda", 1);
#else
    PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  }
  return module;
}
}

namespace dpface {

DeformConv3dShape deform_conv3d_shape(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                      int64_t offset_groups) {
  TORCH_CHECK(input.dim() == 5, "deform_conv3d: input must be (N, C, T, H, W), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 5, "deform_conv3d: weight must be (O, C/groups, kT, kH, kW), got ", weight.sizes());
  TORCH_CHECK(offset.dim() == 5, "deform_conv3d: offset must be (N, offset_groups*3*K, T', H', W'), got ",
              offset.sizes());
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3 && dilation.size() == 3,
              "deform_conv3d: stride, padding and dilation must have 3 entries");
  TORCH_CHECK(groups >= 1 && offset_groups >= 1, "deform_conv3d: groups and offset_groups must be >= 1");
  TORCH_CHECK(offset.scalar_type() == input.scalar_type() && weight.scalar_type() == input.scalar_type(),
              "deform_conv3d: input, offset and weight must share a dtype, got ", input.scalar_type(), ", ",
              offset.scalar_type(), ", ", weight.scalar_type());
  TORCH_CHECK(offset.device() == input.device() && weight.device() == input.device(),
              "deform_conv3d: input, offset and weight must be on one device");
  DeformConv3dShape s{};
  s.N = input.size(0);
  s.C = input.size(1);
  s.T = input.size(2);
  s.H = input.size(3);
  s.W = input.size(4);
  s.O = weight.size(0);
  s.kT = weight.size(2);
  s.kH = weight.size(3);
  s.kW = weight.size(4);
  s.K = s.kT * s.kH * s.kW;
  s.sT = stride[0];
  s.sH = stride[1];
  s.sW = stride[2];
  s.pT = padding[0];
  s.pH = padding[1];
  s.pW = padding[2];
  s.dT = dilation[0];
  s.dH = dilation[1];
  s.dW = dilation[2];
  TORCH_CHECK(s.sT > 0 && s.sH > 0 && s.sW > 0, "deform_conv3d: stride must be positive, got ", stride);
  TORCH_CHECK(s.dT > 0 && s.dH > 0 && s.dW > 0, "deform_conv3d: dilation must be positive, got ", dilation);
  TORCH_CHECK(s.pT >= 0 && s.pH >= 0 && s.pW >= 0, "deform_conv3d: padding must be >= 0, got ", padding);
  s.oT = (s.T + 2 * s.pT - s.dT * (s.kT - 1) - 1) / s.sT + 1;
  s.oH = (s.H + 2 * s.pH - s.dH * (s.kH - 1) - 1) / s.sH + 1;
  s.oW = (s.W + 2 * s.pW - s.dW * (s.kW - 1) - 1) / s.sW + 1;
  TORCH_CHECK(s.oT > 0 && s.oH > 0 && s.oW > 0, "deform_conv3d: output volume would be empty (", s.oT, ", ", s.oH,
              ", ", s.oW, ") for input ", input.sizes(), " and kernel ", weight.sizes());
  s.L = s.oT * s.oH * s.oW;
  s.groups = groups;
  s.offset_groups = offset_groups;
  TORCH_CHECK(s.C % groups == 0, "deform_conv3d: input channels ", s.C, " not divisible by groups ", groups);
  TORCH_CHECK(s.O % groups == 0, "deform_conv3d: output channels ", s.O, " not divisible by groups ", groups);
  TORCH_CHECK(weight.size(1) * groups == s.C, "deform_conv3d: weight has ", weight.size(1),
              " input channels per group, expected C/groups = ", s.C / groups);
  TORCH_CHECK(s.C % offset_groups == 0, "deform_conv3d: input channels ", s.C, " not divisible by offset_groups ",
              offset_groups);
  s.channels_per_offset_group = s.C / offset_groups;
  TORCH_CHECK(offset.size(0) == s.N && offset.size(1) == offset_groups * 3 * s.K && offset.size(2) == s.oT &&
                  offset.size(3) == s.oH && offset.size(4) == s.oW,
              "deform_conv3d: offset must be (", s.N, ", ", offset_groups * 3 * s.K, ", ", s.oT, ", ", s.oH, ", ",
              s.oW, ") = (N, offset_groups*3*kT*kH*kW, T', H', W'), got ", offset.sizes());
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.scalar_type() == input.scalar_type() && m.device() == input.device(),
                "deform_conv3d: mask must match the input's dtype and device");
    TORCH_CHECK(m.dim() == 5 && m.size(0) == s.N && m.size(1) == offset_groups * s.K && m.size(2) == s.oT &&
                    m.size(3) == s.oH && m.size(4) == s.oW,
                "deform_conv3d: mask must be (", s.N, ", ", offset_groups * s.K, ", ", s.oT, ", ", s.oH, ", ", s.oW,
                ") = (N, offset_groups*kT*kH*kW, T', H', W'), got ", m.sizes());
  }
  return s;
}

std::tuple<at::Tensor, at::Tensor> deform_conv3d_forward_impl(
    const DeformConv3dKernels& kernels, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups, bool save_columns) {
  const DeformConv3dShape s =
      deform_conv3d_shape(input, offset, weight, mask, stride, padding, dilation, groups, offset_groups);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.O, "deform_conv3d: bias must be (", s.O, "), got ",
                bias->sizes());
  }
  const at::Tensor x = input.contiguous();
  const at::Tensor off = offset.contiguous();
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const int64_t cols_per_group = (s.C / groups) * s.K;
  const at::Tensor w = weight.contiguous().view({groups, s.O / groups, cols_per_group});
  at::Tensor output = at::empty({s.N, s.O, s.oT, s.oH, s.oW}, x.options());
  // Saved: one (C*K, L) block per batch element, kept for the weight gradient. Otherwise one scratch block.
  at::Tensor columns = at::empty({save_columns ? s.N : 1, s.C * s.K, s.L}, x.options());
  for (int64_t n = 0; n < s.N; ++n) {
    at::Tensor columns_n = columns[save_columns ? n : 0];
    kernels.im2col(s, x[n], off[n], m.defined() ? m[n] : at::Tensor(), columns_n);
    at::Tensor out_n = output[n].view({groups, s.O / groups, s.L});
    at::bmm_out(out_n, w, columns_n.view({groups, cols_per_group, s.L}));
  }
  if (bias.has_value()) output.add_(bias->view({1, s.O, 1, 1, 1}));
  return {output, save_columns ? columns : at::empty({0}, x.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv3d_backward_impl(
    const DeformConv3dKernels& kernels, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& offset, const at::Tensor& weight, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& saved_columns, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, int64_t offset_groups, std::array<bool, 3> output_mask) {
  const DeformConv3dShape s =
      deform_conv3d_shape(input, offset, weight, mask, stride, padding, dilation, groups, offset_groups);
  TORCH_CHECK(grad_output.dim() == 5 && grad_output.size(0) == s.N && grad_output.size(1) == s.O &&
                  grad_output.size(2) == s.oT && grad_output.size(3) == s.oH && grad_output.size(4) == s.oW,
              "deform_conv3d_backward: grad_output has shape ", grad_output.sizes(), ", expected (", s.N, ", ",
              s.O, ", ", s.oT, ", ", s.oH, ", ", s.oW, ")");
  const bool saved = saved_columns.has_value() && saved_columns->numel() > 0;
  if (saved) {
    TORCH_CHECK(saved_columns->dim() == 3 && saved_columns->size(0) == s.N &&
                    saved_columns->size(1) == s.C * s.K && saved_columns->size(2) == s.L &&
                    saved_columns->scalar_type() == input.scalar_type(),
                "deform_conv3d_backward: saved columns must be (", s.N, ", ", s.C * s.K, ", ", s.L,
                ") of the input's dtype, got ", saved_columns->sizes());
  }
  const auto [need_input, need_offset_mask, need_weight] = output_mask;
  const at::Tensor go = grad_output.contiguous().to(input.scalar_type());
  const at::Tensor x = input.contiguous();
  const at::Tensor off = offset.contiguous();
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor cols = saved ? saved_columns->contiguous() : at::Tensor();
  const int64_t cols_per_group = (s.C / groups) * s.K;
  const at::Tensor w_t = weight.contiguous().view({groups, s.O / groups, cols_per_group}).transpose(1, 2);
  const at::Tensor none = at::empty({0}, x.options());

  at::Tensor grad_input = need_input ? at::zeros_like(x) : none;
  at::Tensor grad_offset = need_offset_mask ? at::empty_like(off) : none;
  at::Tensor grad_mask = (need_offset_mask && m.defined()) ? at::empty_like(m) : none;
  at::Tensor grad_weight = need_weight ? at::zeros({groups, s.O / groups, cols_per_group}, x.options()) : none;
  const bool need_grad_columns = need_input || need_offset_mask;
  at::Tensor grad_columns = need_grad_columns ? at::empty({s.C * s.K, s.L}, x.options()) : none;
  at::Tensor columns = (need_weight && !saved) ? at::empty({s.C * s.K, s.L}, x.options()) : none;
  for (int64_t n = 0; n < s.N; ++n) {
    const at::Tensor go_n = go[n].view({groups, s.O / groups, s.L});
    const at::Tensor m_n = m.defined() ? m[n] : at::Tensor();
    if (need_grad_columns) {
      at::Tensor grad_columns_g = grad_columns.view({groups, cols_per_group, s.L});
      at::bmm_out(grad_columns_g, w_t, go_n);
    }
    if (need_input) {
      at::Tensor grad_input_n = grad_input[n];
      kernels.col2im(s, grad_columns, off[n], m_n, grad_input_n);
    }
    if (need_offset_mask) {
      at::Tensor grad_offset_n = grad_offset[n];
      at::Tensor grad_mask_n = m.defined() ? grad_mask[n] : at::Tensor();
      kernels.offset_mask_grad(s, grad_columns, x[n], off[n], m_n, grad_offset_n, grad_mask_n);
    }
    if (need_weight) {
      at::Tensor columns_n = saved ? cols[n] : columns;
      if (!saved) kernels.im2col(s, x[n], off[n], m_n, columns_n);
      grad_weight.baddbmm_(go_n, columns_n.view({groups, cols_per_group, s.L}).transpose(1, 2));
    }
  }
  return {grad_input, grad_offset, need_weight ? grad_weight.view(weight.sizes()) : none, grad_mask};
}

TORCH_LIBRARY(dpface, m) {
  // Returns (output, columns). With save_columns the sampled columns (N, C*K, L) come back for the backward's
  // weight gradient (no second sampling pass); otherwise columns is empty (shape [0]).
  m.def(
      "deform_conv3d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, Tensor? mask, int[3] stride, "
      "int[3] padding, int[3] dilation, int groups, int offset_groups, bool save_columns=False) "
      "-> (Tensor, Tensor)");
  // Returns (grad_input, grad_offset, grad_weight, grad_mask). output_mask = (input, offset and mask, weight)
  // says which are wanted; the others, and grad_mask without a mask, are empty (shape [0]). `columns` are the
  // forward's saved columns, or None/empty to resample them. The bias gradient is the sum of grad_output and
  // is formed by the caller.
  m.def(
      "deform_conv3d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, Tensor? mask, "
      "Tensor? columns, int[3] stride, int[3] padding, int[3] dilation, int groups, int offset_groups, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace dpface
