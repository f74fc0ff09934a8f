// Purpose: one row of add_rmsnorm computed by one warp, shared by add_rmsnorm_warp_kernel
// (norm_activation.cu) and the decode kernels that fold a residual add and RMSNorm into the op
// after them (norm_gemm_decode.cu's qkv product, moe_route_decode.cu's router), so all of them
// give the same bits; and the norm weight's type dispatch they share. Owned by backend/cuda.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernel_utils.cuh"

namespace nnkit::cuda {

// Packs a lane holds in registers: a row of up to kCachedNormColumns columns costs one memory
// round trip for x and residual instead of one per pack and pass.
constexpr int kCachedPacks = 4;
template <int kWidth>
inline constexpr int64_t kCachedNormColumns = 32 * kCachedPacks* kWidth;

// Row r of add_rmsnorm, by one warp: sum_out <- round(x + residual), y_out (and y_copy, unless
// null) <- round(sum * rstd * w); the statistics and y read the rounded sum, as rmsnorm_forward
// would after add(). The first kCachedPacks packs of each lane stay in registers as the rounded
// sum (what a reload of the store gives, bit for bit); packs past them are stored and read back.
// kCachedOnly: the caller takes rows of at most kCachedNormColumns<kWidth> columns (no code for
// the rest, whose registers the fused kernels would pay for), and only then may sum_out be null.
template <typename T, typename W, int kWidth, bool kCachedOnly>
__device__ __forceinline__ void add_rmsnorm_row(const T* xr, const T* rr, const W* w, float eps,
                                                int64_t cols, int lane, T* sum_out, T* y_out,
                                                T* y_copy) {
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
  double acc = 0.0;  // the packs in the order of the loops below: the same sum
#pragma unroll
  for (int i = 0; i < kCachedPacks; ++i) {
    const int64_t c = (int64_t(lane) + 32 * i) * kWidth;
    if (c < cols) {
      if (sum_out != nullptr) store_floats<kWidth>(sum_out + c, cached[i]);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) acc += double(cached[i][e]) * cached[i][e];
    }
  }
  for (int64_t c = (int64_t(lane) + 32 * kCachedPacks) * kWidth; !kCachedOnly && c < cols;
       c += 32 * kWidth) {
    float a[kWidth], b[kWidth];
    load_floats<kWidth>(xr + c, a);
    load_floats<kWidth>(rr + c, b);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) a[e] += b[e];
    store_floats<kWidth>(sum_out + c, a);
    load_floats<kWidth>(sum_out + c, a);  // the rounded sum (this lane's own store)
#pragma unroll
    for (int e = 0; e < kWidth; ++e) acc += double(a[e]) * a[e];
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
  for (int64_t c = (int64_t(lane) + 32 * kCachedPacks) * kWidth; !kCachedOnly && c < cols;
       c += 32 * kWidth) {
    float v[kWidth], wv[kWidth];
    load_floats<kWidth>(sum_out + c, v);
    load_floats<kWidth>(w + c, wv);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) v[e] = v[e] * r * wv[e];
    store_floats<kWidth>(y_out + c, v);
    if (y_copy != nullptr) store_floats<kWidth>(y_copy + c, v);
  }
}

// Calls launch(W tag) with the norm weight's storage type W for rows of type T: f32 or T, what
// add_rmsnorm takes (the callers' checks refused the rest).
template <typename T, typename Launch>
void with_norm_weight_type(DType weight, Launch&& launch) {
  dispatch_float(weight, [&](auto weight_tag) {
    using W = typename decltype(weight_tag)::type;
    if constexpr (std::is_same_v<W, float> || std::is_same_v<W, T>) launch(weight_tag);
  });
}

}  // namespace nnkit::cuda
