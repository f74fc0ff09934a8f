// Purpose: backend/cuda rotary position embedding (HF rotate-half layout), forward and inverse.
// Owned by backend/cuda.
// One thread per (row, head, pair). The angle pos * base^(-2i/D) is evaluated in double, as on
// the CPU: in float, pos * freq at positions ~2^18 (NTK-extended contexts) loses whole radians.
// The frequencies are computed on the host once per call (D/2 doubles, passed by value).
// x is f32, bf16 or f16: each pair is widened to f32, rotated in f32 and rounded once on store.
#include <cmath>

#include "cuda_check.h"
#include "kernel_utils.cuh"

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

}  // namespace

void CudaBackend::rope(const Tensor& x, const Tensor& positions, int64_t n_heads, int64_t head_dim,
                       float base, bool inverse) {
  OpScope op_scope(profiler_.get(), "rope");
  kChecks.float_dtype("rope", "x", x, backend_common::kFloatDTypes);
  if (n_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || head_dim > 2 * kMaxHalf) {
    kChecks.fail("rope", "n_heads = " + std::to_string(n_heads) +
                             ", head_dim = " + std::to_string(head_dim) +
                             "; need positive heads and an even head_dim of at most " +
                             std::to_string(2 * kMaxHalf));
  }
  if (x.rank() != 2 || x.dim(1) != n_heads * head_dim) {
    kChecks.fail("rope", "x is " + describe(x) + "; expected (N, " + std::to_string(n_heads) +
                             " * " + std::to_string(head_dim) + ")");
  }
  const int64_t rows = x.dim(0);
  kChecks.tensor("rope", "positions", positions, DType::kI32, {rows});
  if (rows == 0) return;
  Frequencies freq{};
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    freq.value[i] = std::pow(static_cast<double>(base), -2.0 * double(i) / double(head_dim));
  }
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    rope_kernel<T><<<grid_for(rows * n_heads * head_dim / 2), kThreads, 0, stream_>>>(
        ptr<T>(x), ptr<int32_t>(positions), rows, n_heads, head_dim, freq, inverse ? -1.0f : 1.0f);
    NNKIT_CUDA_CHECK_LAUNCH(rope_kernel);
  });
}

}  // namespace nnkit::cuda
