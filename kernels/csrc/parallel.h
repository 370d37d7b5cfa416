// dpface::parallel_for: at::parallel_for on torch's own intra-op thread pool, whatever the compiler.
//
// at::parallel_for is a header template. With torch's OpenMP backend (the Linux and macOS wheels) its parallel
// branch is an inline `#pragma omp parallel`, compiled only when this library is itself built with -fopenmp;
// without it, at::parallel_for silently runs the whole range on the calling thread. The kernels are built
// without OpenMP (Apple's clang has none), so in that case the range is handed to TensorIterator::for_each, a
// loop compiled inside libtorch that calls libtorch's own at::parallel_for. Either way the work runs on torch's
// pool, honours torch.set_num_threads, runs serially inside another parallel region, and `f` is called on
// contiguous sub-ranges of [begin, end), as at::parallel_for does.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <cstdint>

namespace dpface {

// True when at::parallel_for is parallel as compiled into this library (native backend, or built with -fopenmp).
constexpr bool kInlineParallelFor =
#ifdef INTRA_OP_PARALLEL
    true;
#else
    false;
#endif

// Calls f(sub_begin, sub_end) on disjoint contiguous sub-ranges covering [begin, end); ranges of at most
// `grain_size` items run on the calling thread.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain_size, const F& f) {
  if (begin >= end) return;
  if constexpr (kInlineParallelFor) {
    at::parallel_for(begin, end, grain_size, f);
  } else {
    const int64_t n = end - begin;
    if (n <= grain_size || at::get_num_threads() == 1 || at::in_parallel_region()) {
      f(begin, end);
      return;
    }
    // One byte per item; only the addresses are used: an item's index is its offset from the first byte.
    const at::Tensor items = at::empty({n}, at::TensorOptions().dtype(at::kByte));
    const char* first = static_cast<const char*>(items.const_data_ptr());
    at::TensorIterator iter = at::TensorIteratorConfig()
                                  .add_const_input(items)
                                  .check_all_same_dtype(false)
                                  .resize_outputs(false)
                                  .build();
    iter.for_each(
        [&](char** data, const int64_t* /*strides*/, int64_t size0, int64_t size1) {
          TORCH_INTERNAL_ASSERT(size1 == 1, "dpface::parallel_for: expected a one-dimensional range");
          const int64_t sub_begin = begin + (data[0] - first);
          f(sub_begin, sub_begin + size0);
        },
        grain_size);  // n > grain_size here, so for_each calls libtorch's at::parallel_for(0, n, grain_size)
  }
}

}  // namespace dpface
