// Purpose: one row of add_rmsnorm computed by one warp with the row in registers, shared by the
// decode kernels that fold a residual add and RMSNorm into the op after it (norm_gemm_decode.cu's
// qkv product, moe_route_decode.cu's router). It repeats add_rmsnorm_warp_kernel's
// (norm_activation.cu) arithmetic and order for rows it caches whole, so the fused kernels give
// add_rmsnorm's bits. Owned by backend/cuda.
#pragma once

#include <cstdint>

#include "kernel_utils.cuh"

namespace nnkit::cuda {

constexpr int kCachedPacks = 4;  // add_rmsnorm_warp_kernel's packs a lane holds in registers
template <int kWidth>
inline constexpr int64_t kCachedNormColumns = 32 * kCachedPacks* kWidth;

// Row r of add_rmsnorm, by one warp: sum_out (may be null) <- round(x + residual), y_out (and
// y_copy, unless null) <- round(sum * rstd * w), in add_rmsnorm_warp_kernel's order
// (cols <= kCachedNormColumns<kWidth>).
template <typename T, typename W, int kWidth>
__device__ __forceinline__ void add_rmsnorm_cached_row(const T* xr, const T* rr, const W* w,
                                                       float eps, int64_t cols, int lane,
                                                       T* sum_out, T* y_out, T* y_copy) {
  float cached[kCachedPacks][kWidth];
#pragma unroll
  for (int i = 0; i < kCachedPacks; ++i) {
    const int64_t c = (int64_t(lane) + 32 * i) * kWidth;
    if (c < cols) {
      float b[kWidth];
      load_floats<kWidth>(xr + c, cached[i]);
      load_floats<kWidth>(rr + c, b);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) cached[i][e] = to_float(from_float<T>(cached[i][e] + b[e]));
    }
  }
  double acc = 0.0;
#pragma unroll
  for (int i = 0; i < kCachedPacks; ++i) {
    const int64_t c = (int64_t(lane) + 32 * i) * kWidth;
    if (c < cols) {
      if (sum_out != nullptr) store_floats<kWidth>(sum_out + c, cached[i]);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) acc += double(cached[i][e]) * cached[i][e];
    }
  }
  acc = warp_sum(acc);
  const double mean = cols > 0 ? acc / double(cols) : 0.0;
  const float r = static_cast<float>(1.0 / sqrt(mean + double(eps)));
#pragma unroll
  for (int i = 0; i < kCachedPacks; ++i) {
    const int64_t c = (int64_t(lane) + 32 * i) * kWidth;
    if (c < cols) {
      float wv[kWidth];
      load_floats<kWidth>(w + c, wv);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) cached[i][e] = cached[i][e] * r * wv[e];
      store_floats<kWidth>(y_out + c, cached[i]);
      if (y_copy != nullptr) store_floats<kWidth>(y_copy + c, cached[i]);
    }
  }
}

}  // namespace nnkit::cuda
