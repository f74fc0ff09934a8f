// Purpose: backend/cuda rotary position embedding (HF rotate-half layout), forward and inverse,
// and rope_kv_append (the decode step's q/k rotation and cache append in one launch).
// Owned by backend/cuda.
// One thread per (row, head, pair). The angle pos * base^(-2i/D) is evaluated in double, as on
// the CPU: in float, pos * freq at positions ~2^18 (NTK-extended contexts) loses whole radians.
// The frequencies are computed on the host once per call (D/2 doubles, passed by value).
// x is f32, bf16 or f16: each pair is widened to f32, rotated in f32 and rounded once on store.
#include <cmath>

#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "kernel_utils.cuh"
#include "rope_frequency.h"

namespace nnkit::cuda {

namespace {

constexpr int kMaxHalf = 512;  // head_dim up to 1024

struct Frequencies {
  double value[kMaxHalf];
};

template <typename T>
__global__ void rope_kernel(T* x, const int32_t* positions, int64_t rows, int64_t n_heads,
                            int64_t head_dim, const Frequencies freq, float sign) {
  const int64_t half = head_dim / 2;
  const int64_t total = rows * n_heads * half;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t % half;
    const int64_t head = (t / half) % n_heads;
    const int64_t row = t / (half * n_heads);
    double s_angle, c_angle;
    sincos(double(positions[row]) * freq.value[i], &s_angle, &c_angle);
    const float c = static_cast<float>(c_angle), s = sign * static_cast<float>(s_angle);
    T* x1 = x + row * n_heads * head_dim + head * head_dim;
    const float a = to_float(x1[i]), b = to_float(x1[i + half]);
    x1[i] = from_float<T>(a * c - b * s);
    x1[i + half] = from_float<T>(b * c + a * s);
  }
}

// rope_kv_append: one thread per (row, head, pair) of the q and k heads (rotated as rope_kernel
// does), then one per element of v (copied). k and v go to cache row b * capacity + len.
template <typename T>
__global__ void rope_kv_append_kernel(const T* qkv, const int32_t* positions, int64_t rows,
                                      int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                      const Frequencies freq, T* q_out, T* k_cache, T* v_cache,
                                      int64_t capacity, const int32_t* cache_len,
                                      DeviceFault* fault) {
  wait_for_preceding_grid();
  allow_dependent_launch();
  const int64_t len = *cache_len;
  const bool fits = len >= 0 && len + 1 <= capacity;
  if (!fits && blockIdx.x == 0 && threadIdx.x == 0) {
    report_fault(fault, FaultOp::kKvCacheAppend, len + 1, capacity + 1, 0);
  }
  const int64_t half = head_dim / 2, heads = n_heads + n_kv_heads;
  const int64_t row_width = (n_heads + 2 * n_kv_heads) * head_dim;
  const int64_t kv_width = n_kv_heads * head_dim;
  const int64_t rotated = rows * heads * half;
  const int64_t total = rotated + rows * kv_width;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    if (t >= rotated) {  // v: a copy into the cache
      if (!fits) continue;
      const int64_t i = t - rotated, row = i / kv_width, col = i % kv_width;
      v_cache[(row * capacity + len) * kv_width + col] =
          qkv[row * row_width + (n_heads + n_kv_heads) * head_dim + col];
      continue;
    }
    const int64_t i = t % half;
    const int64_t head = (t / half) % heads;
    const int64_t row = t / (half * heads);
    double s_angle, c_angle;
    sincos(double(positions[row]) * freq.value[i], &s_angle, &c_angle);
    const float c = static_cast<float>(c_angle), s = static_cast<float>(s_angle);
    const T* x1 = qkv + row * row_width + head * head_dim;
    const float a = to_float(x1[i]), b = to_float(x1[i + half]);
    T* dst;
    if (head < n_heads) {
      dst = q_out + (row * n_heads + head) * head_dim;
    } else {
      if (!fits) continue;
      dst = k_cache + (row * capacity + len) * kv_width + (head - n_heads) * head_dim;
    }
    dst[i] = from_float<T>(a * c - b * s);
    dst[i + half] = from_float<T>(b * c + a * s);
  }
}

Frequencies rope_frequencies(int64_t head_dim, float base) {
  Frequencies freq{};
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    freq.value[i] = rope_frequency(base, i, head_dim);
  }
  return freq;
}

void check_head_dim(const char* op, int64_t n_heads, int64_t head_dim) {
  if (n_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || head_dim > 2 * kMaxHalf) {
    kChecks.fail(op, "n_heads = " + std::to_string(n_heads) +
                         ", head_dim = " + std::to_string(head_dim) +
                         "; need positive heads and an even head_dim of at most " +
                         std::to_string(2 * kMaxHalf));
  }
}

}  // namespace

void CudaBackend::rope_kv_append(const Tensor& qkv, const Tensor& positions, int64_t n_heads,
                                 int64_t n_kv_heads, int64_t head_dim, float base,
                                 const Tensor& k_cache, const Tensor& v_cache, int64_t capacity,
                                 const Tensor& cache_len_device, const Tensor& q_out) {
  OpScope op_scope(profiler_.get(), "rope_kv_append");
  const char* op = "rope_kv_append";
  check_head_dim(op, n_heads, head_dim);
  check_head_dim(op, n_kv_heads, head_dim);
  const backend_common::RowShape r =
      kChecks.float_rows(op, "qkv", qkv, backend_common::kFloatDTypes);
  if (r.cols != (n_heads + 2 * n_kv_heads) * head_dim) {
    kChecks.fail(op, "qkv is " + describe(qkv) + "; expected (B, (H + 2 * Hkv) * D) with H = " +
                         std::to_string(n_heads) + ", Hkv = " + std::to_string(n_kv_heads) +
                         ", D = " + std::to_string(head_dim));
  }
  const int64_t batch = r.rows;
  kChecks.tensor(op, "positions", positions, DType::kI32, {batch});
  kChecks.tensor(op, "q_out", q_out, qkv.dtype(), {batch, n_heads * head_dim});
  kChecks.tensor(op, "k_cache", k_cache, qkv.dtype(), {batch * capacity, n_kv_heads * head_dim});
  kChecks.tensor(op, "v_cache", v_cache, qkv.dtype(), {batch * capacity, n_kv_heads * head_dim});
  kChecks.tensor(op, "cache_len", cache_len_device, DType::kI32, {1});
  if (batch == 0) return;
  const Frequencies freq = rope_frequencies(head_dim, base);
  const int64_t work = batch * ((n_heads + n_kv_heads) * head_dim / 2 + n_kv_heads * head_dim);
  dispatch_float(qkv.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_dependent(rope_kv_append_kernel<T>, grid_for(work), kThreads, 0, stream_, ptr<T>(qkv),
                     ptr<int32_t>(positions), batch, n_heads, n_kv_heads, head_dim, freq,
                     ptr<T>(q_out), ptr<T>(k_cache), ptr<T>(v_cache), capacity,
                     ptr<int32_t>(cache_len_device), fault_);
    NNKIT_CUDA_CHECK_LAUNCH(rope_kv_append_kernel);
  });
}

void CudaBackend::rope(const Tensor& x, const Tensor& positions, int64_t n_heads, int64_t head_dim,
                       float base, bool inverse) {
  OpScope op_scope(profiler_.get(), "rope");
  kChecks.float_dtype("rope", "x", x, backend_common::kFloatDTypes);
  check_head_dim("rope", n_heads, head_dim);
  if (x.rank() != 2 || x.dim(1) != n_heads * head_dim) {
    kChecks.fail("rope", "x is " + describe(x) + "; expected (N, " + std::to_string(n_heads) +
                             " * " + std::to_string(head_dim) + ")");
  }
  const int64_t rows = x.dim(0);
  kChecks.tensor("rope", "positions", positions, DType::kI32, {rows});
  if (rows == 0) return;
  const Frequencies freq = rope_frequencies(head_dim, base);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    rope_kernel<T><<<grid_for(rows * n_heads * head_dim / 2), kThreads, 0, stream_>>>(
        ptr<T>(x), ptr<int32_t>(positions), rows, n_heads, head_dim, freq, inverse ? -1.0f : 1.0f);
    NNKIT_CUDA_CHECK_LAUNCH(rope_kernel);
  });
}

}  // namespace nnkit::cuda
