// Purpose: backend/cuda RMSNorm forward/backward and SwiGLU forward/backward. Owned by
// backend/cuda.
// RMSNorm in f32 runs one block per row; bf16/f16 rows (C of a few thousand at most) run one
// warp per row reading 16-byte packs, which keeps a wide grid busy on (16384, 768) activations.
// The row reductions are in double like the CPU's. The weight gradient is a column sum over all
// rows: a first kernel sums fixed chunks of rows per column (coalesced across columns), a second
// adds the chunk partials in chunk order, so the sum never depends on scheduling and needs no
// atomics. SwiGLU is elementwise in 16-byte packs. Every kernel is templated on the storage
// types (x, y, dy, dx share T; the weight W is f32 or T); inputs widen to f32, outputs round once
// (kernel_utils.cuh), and the f32 instantiations compute what the fp32 kernels always did.
#include <type_traits>
#include <utility>

#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "kernel_utils.cuh"
#include "rmsnorm_row.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kNormThreads = 256;
constexpr int64_t kRowsPerChunk = 64;  // rows summed by one partial of the weight gradient

__global__ void rmsnorm_forward_kernel(const float* x, const float* w, float eps, float* y,
                                       float* rstd, int64_t cols) {
  __shared__ double shared[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) acc += double(xr[c]) * xr[c];
  acc = block_sum(acc, shared);
  const double mean = cols > 0 ? acc / double(cols) : 0.0;
  const float r = static_cast<float>(1.0 / sqrt(mean + double(eps)));
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c] * r * w[c];
}

// dx = r (dy w - x r^2 mean(dy w x)); dx may alias dy, so the dot is complete before any write.
__global__ void rmsnorm_backward_dx_kernel(const float* dy, const float* x, const float* w,
                                           const float* rstd, float* dx, int64_t cols) {
  __shared__ double shared[32];
  const int64_t row = blockIdx.x;
  const float* dyr = dy + row * cols;
  const float* xr = x + row * cols;
  float* dxr = dx + row * cols;
  const float r = rstd[row];
  double dot = 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dot += double(dyr[c]) * w[c] * xr[c];
  dot = block_sum(dot, shared);
  const float k = cols > 0 ? static_cast<float>(dot / double(cols)) * r * r : 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dxr[c] = r * (dyr[c] * w[c] - xr[c] * k);
  }
}

// One warp per row of bf16/f16 x: the f32 kernel above in 16-byte packs (kWidth columns per lane
// step; cols a multiple of kWidth when kWidth > 1).
template <typename T, typename W, int kWidth>
__global__ void rmsnorm_forward_warp_kernel(const T* x, const W* w, float eps, T* y, float* rstd,
                                            int64_t rows, int64_t cols) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  double acc = 0.0;
  for (int64_t c = int64_t(lane) * kWidth; c < cols; c += 32 * kWidth) {
    float v[kWidth];
    load_floats<kWidth>(xr + c, v);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) acc += double(v[e]) * v[e];
  }
  acc = warp_sum(acc);
  const double mean = cols > 0 ? acc / double(cols) : 0.0;
  const float r = static_cast<float>(1.0 / sqrt(mean + double(eps)));
  if (lane == 0) rstd[row] = r;
  for (int64_t c = int64_t(lane) * kWidth; c < cols; c += 32 * kWidth) {
    float v[kWidth], wv[kWidth];
    load_floats<kWidth>(xr + c, v);  // the row was just read: an L1 hit
    load_floats<kWidth>(w + c, wv);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) v[e] = v[e] * r * wv[e];
    store_floats<kWidth>(yr + c, v);
  }
}

// add_rmsnorm: one warp per row, any float dtype (rmsnorm_row.cuh's add_rmsnorm_row); the
// weight (no kernel of a decode step writes it) is prefetched into L2 while the predecessor
// finishes.
template <typename T, typename W, int kWidth>
__global__ void add_rmsnorm_warp_kernel(const T* x, const T* residual, const W* w, float eps,
                                        T* sum, T* y, int64_t rows, int64_t cols) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  for (int64_t offset = int64_t(lane) * 128; row < rows && offset < cols * int64_t(sizeof(W));
       offset += 32 * 128) {
    prefetch_to_l2(reinterpret_cast<const char*>(w) + offset);
  }
  wait_for_preceding_grid();
  allow_dependent_launch();
  if (row >= rows) return;
  add_rmsnorm_row<T, W, kWidth, false>(x + row * cols, residual + row * cols, w, eps, cols, lane,
                                       sum + row * cols, y + row * cols, nullptr);
}

// One warp per row of bf16/f16 x: the dx kernel above in packs. The warp reduction completes
// every lane's reads of the row before any lane writes dx, so dx may alias dy here too.
template <typename T, typename W, int kWidth>
__global__ void rmsnorm_backward_dx_warp_kernel(const T* dy, const T* x, const W* w,
                                                const float* rstd, T* dx, int64_t rows,
                                                int64_t cols) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* dyr = dy + row * cols;
  const T* xr = x + row * cols;
  T* dxr = dx + row * cols;
  const float r = rstd[row];
  double dot = 0.0;
  for (int64_t c = int64_t(lane) * kWidth; c < cols; c += 32 * kWidth) {
    float dv[kWidth], xv[kWidth], wv[kWidth];
    load_floats<kWidth>(dyr + c, dv);
    load_floats<kWidth>(xr + c, xv);
    load_floats<kWidth>(w + c, wv);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) dot += double(dv[e]) * wv[e] * xv[e];
  }
  dot = warp_sum(dot);
  const float k = cols > 0 ? static_cast<float>(dot / double(cols)) * r * r : 0.0f;
  for (int64_t c = int64_t(lane) * kWidth; c < cols; c += 32 * kWidth) {
    float dv[kWidth], xv[kWidth], wv[kWidth];
    load_floats<kWidth>(dyr + c, dv);
    load_floats<kWidth>(xr + c, xv);
    load_floats<kWidth>(w + c, wv);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) dv[e] = r * (dv[e] * wv[e] - xv[e] * k);
    store_floats<kWidth>(dxr + c, dv);
  }
}

// partial[chunk, c] = sum over the chunk's rows of dy x r (double). Grid: (column blocks, chunks);
// each thread sums kWidth adjacent columns (1 for f32: the order it always had; 2 for halves, so
// a warp still reads 128 bytes of a row).
template <typename T, int kWidth>
__global__ void rmsnorm_dweight_partial_kernel(const T* dy, const T* x, const float* rstd,
                                               double* partial, int64_t rows, int64_t cols) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kWidth;
  if (c >= cols) return;
  const int64_t begin = blockIdx.y * kRowsPerChunk;
  const int64_t end = begin + kRowsPerChunk < rows ? begin + kRowsPerChunk : rows;
  double acc[kWidth];
#pragma unroll
  for (int e = 0; e < kWidth; ++e) acc[e] = 0.0;
  for (int64_t n = begin; n < end; ++n) {
    float dv[kWidth], xv[kWidth];
    load_floats<kWidth>(dy + n * cols + c, dv);
    load_floats<kWidth>(x + n * cols + c, xv);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) acc[e] += double(dv[e]) * xv[e] * rstd[n];
  }
#pragma unroll
  for (int e = 0; e < kWidth; ++e) partial[blockIdx.y * cols + c + e] = acc[e];
}

__global__ void rmsnorm_dweight_final_kernel(const double* partial, int64_t chunks, float* dw,
                                             int64_t cols) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  double acc = 0.0;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * cols + c];
  dw[c] = static_cast<float>(double(dw[c]) + acc);
}

__device__ __forceinline__ float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

template <typename T, int kWidth>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float g[kW], u[kW];
    load_floats<kW>(gate + i, g);
    load_floats<kW>(up + i, u);
#pragma unroll
    for (int e = 0; e < kW; ++e) u[e] = g[e] * sigmoid(g[e]) * u[e];
    store_floats<kW>(out + i, u);
  });
}

// silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g).
template <typename T, int kWidth>
__global__ void swiglu_backward_kernel(const T* dout, const T* gate, const T* up, T* dgate, T* dup,
                                       int64_t n) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float g[kW], u[kW], d[kW], dg[kW], du[kW];
    load_floats<kW>(gate + i, g);
    load_floats<kW>(up + i, u);
    load_floats<kW>(dout + i, d);
#pragma unroll
    for (int e = 0; e < kW; ++e) {
      const float s = sigmoid(g[e]);
      du[e] = d[e] * g[e] * s;
      dg[e] = d[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
    }
    store_floats<kW>(dup + i, du);
    store_floats<kW>(dgate + i, dg);
  });
}

// Blocks of kThreads for a warp-per-row kernel over `rows` rows.
unsigned blocks_for_rows(int64_t rows) {
  constexpr int64_t kWarps = kThreads / 32;
  return static_cast<unsigned>((rows + kWarps - 1) / kWarps);
}

// The warp-per-row norm kernels' type dispatch for rows of storage type T: calls
// launch(W tag, width tag) with the weight's type W (f32 or T; the checks refused the rest) and
// the pack width (16-byte packs when `packed`).
template <typename T, typename Launch>
void with_norm_weight(DType weight, bool packed, Launch&& launch) {
  with_norm_weight_type<T>(weight, [&](auto weight_tag) {
    with_pack_width<T>(packed, [&](auto width) { launch(weight_tag, width); });
  });
}

}  // namespace

void CudaBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                                  const Tensor& rstd) {
  OpScope op_scope(profiler_.get(), "rmsnorm_forward");
  const char* op = "rmsnorm_forward";
  const backend_common::RowShape s = kChecks.float_rows(op, "x", x, kFloatDTypes);
  kChecks.float_tensor(op, "weight", weight, {DType::kF32, x.dtype()}, {s.cols});
  kChecks.dtype_as(op, "y", y, "x", x);
  kChecks.same_shape(op, "x", x, "y", y);
  kChecks.tensor(op, "rstd", rstd, DType::kF32, {s.rows});
  if (s.rows == 0) return;
  if (x.dtype() == DType::kF32) {
    rmsnorm_forward_kernel<<<static_cast<unsigned>(s.rows), kNormThreads, 0, stream_>>>(
        ptr<float>(x), ptr<float>(weight), eps, ptr<float>(y), ptr<float>(rstd), s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_forward_kernel);
    return;
  }
  dispatch_half(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool packed = aligned16(x.raw()) && aligned16(y.raw()) && aligned16(weight.raw()) &&
                        s.cols % kPackWidth<T> == 0;
    with_norm_weight<T>(weight.dtype(), packed, [&](auto weight_tag, auto width) {
      using W = typename decltype(weight_tag)::type;
      constexpr int kW = decltype(width)::value;
      rmsnorm_forward_warp_kernel<T, W, kW><<<blocks_for_rows(s.rows), kThreads, 0, stream_>>>(
          ptr<T>(x), ptr<W>(weight), eps, ptr<T>(y), ptr<float>(rstd), s.rows, s.cols);
      NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_forward_warp_kernel);
    });
  });
}

void CudaBackend::add_rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                              float eps, const Tensor& sum, const Tensor& y) {
  OpScope op_scope(profiler_.get(), "add_rmsnorm");
  const char* op = "add_rmsnorm";
  const backend_common::RowShape s = kChecks.float_rows(op, "x", x, kFloatDTypes);
  kChecks.float_tensor(op, "weight", weight, {DType::kF32, x.dtype()}, {s.cols});
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor*>{"residual", &residual}, {"sum", &sum}, {"y", &y}}) {
    kChecks.dtype_as(op, name, *t, "x", x);
    kChecks.same_shape(op, "x", x, name, *t);
  }
  if (s.rows == 0) return;
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool packed = aligned16(x.raw()) && aligned16(residual.raw()) && aligned16(sum.raw()) &&
                        aligned16(y.raw()) && aligned16(weight.raw()) &&
                        s.cols % kPackWidth<T> == 0;
    with_norm_weight<T>(weight.dtype(), packed, [&](auto weight_tag, auto width) {
      using W = typename decltype(weight_tag)::type;
      constexpr int kW = decltype(width)::value;
      launch_dependent(add_rmsnorm_warp_kernel<T, W, kW>, blocks_for_rows(s.rows), kThreads, 0,
                       stream_, ptr<T>(x), ptr<T>(residual), ptr<W>(weight), eps, ptr<T>(sum),
                       ptr<T>(y), s.rows, s.cols);
      NNKIT_CUDA_CHECK_LAUNCH(add_rmsnorm_warp_kernel);
    });
  });
}

void CudaBackend::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                   const Tensor& rstd, const Tensor& dx, const Tensor& dweight) {
  OpScope op_scope(profiler_.get(), "rmsnorm_backward");
  const char* op = "rmsnorm_backward";
  const backend_common::RowShape s = kChecks.float_rows(op, "x", x, kFloatDTypes);
  kChecks.dtype_as(op, "dy", dy, "x", x);
  kChecks.same_shape(op, "x", x, "dy", dy);
  kChecks.dtype_as(op, "dx", dx, "x", x);
  kChecks.same_shape(op, "x", x, "dx", dx);
  kChecks.float_tensor(op, "weight", weight, {DType::kF32, x.dtype()}, {s.cols});
  kChecks.tensor(op, "dweight", dweight, DType::kF32, {s.cols});
  kChecks.tensor(op, "rstd", rstd, DType::kF32, {s.rows});
  if (s.rows == 0 || s.cols == 0) return;
  // The weight gradient reads dy, so it runs before dx (which may overwrite dy in place).
  const int64_t chunks = (s.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  Tensor partial = scratch(static_cast<size_t>(chunks * s.cols) * sizeof(double));
  const unsigned column_blocks = static_cast<unsigned>((s.cols + kThreads - 1) / kThreads);
  if (x.dtype() == DType::kF32) {
    rmsnorm_dweight_partial_kernel<float, 1>
        <<<dim3(column_blocks, static_cast<unsigned>(chunks)), kThreads, 0, stream_>>>(
            ptr<float>(dy), ptr<float>(x), ptr<float>(rstd), ptr<double>(partial), s.rows, s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_dweight_partial_kernel);
    rmsnorm_dweight_final_kernel<<<column_blocks, kThreads, 0, stream_>>>(
        ptr<double>(partial), chunks, ptr<float>(dweight), s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_dweight_final_kernel);
    rmsnorm_backward_dx_kernel<<<static_cast<unsigned>(s.rows), kNormThreads, 0, stream_>>>(
        ptr<float>(dy), ptr<float>(x), ptr<float>(weight), ptr<float>(rstd), ptr<float>(dx),
        s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_backward_dx_kernel);
    return;
  }
  dispatch_half(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    // Column pairs (4-byte loads) in the weight gradient when the rows allow it.
    const bool paired = s.cols % 2 == 0 && reinterpret_cast<uintptr_t>(dy.raw()) % 4 == 0 &&
                        reinterpret_cast<uintptr_t>(x.raw()) % 4 == 0;
    const auto partial_kernel =
        paired ? rmsnorm_dweight_partial_kernel<T, 2> : rmsnorm_dweight_partial_kernel<T, 1>;
    const int64_t columns_per_block = int64_t(kThreads) * (paired ? 2 : 1);
    const unsigned partial_blocks =
        static_cast<unsigned>((s.cols + columns_per_block - 1) / columns_per_block);
    partial_kernel<<<dim3(partial_blocks, static_cast<unsigned>(chunks)), kThreads, 0, stream_>>>(
        ptr<T>(dy), ptr<T>(x), ptr<float>(rstd), ptr<double>(partial), s.rows, s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_dweight_partial_kernel);
    rmsnorm_dweight_final_kernel<<<column_blocks, kThreads, 0, stream_>>>(
        ptr<double>(partial), chunks, ptr<float>(dweight), s.cols);
    NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_dweight_final_kernel);
    const bool packed = aligned16(dy.raw()) && aligned16(x.raw()) && aligned16(dx.raw()) &&
                        aligned16(weight.raw()) && s.cols % kPackWidth<T> == 0;
    with_norm_weight<T>(weight.dtype(), packed, [&](auto weight_tag, auto width) {
      using W = typename decltype(weight_tag)::type;
      constexpr int kW = decltype(width)::value;
      rmsnorm_backward_dx_warp_kernel<T, W, kW><<<blocks_for_rows(s.rows), kThreads, 0, stream_>>>(
          ptr<T>(dy), ptr<T>(x), ptr<W>(weight), ptr<float>(rstd), ptr<T>(dx), s.rows, s.cols);
      NNKIT_CUDA_CHECK_LAUNCH(rmsnorm_backward_dx_warp_kernel);
    });
  });
}

void CudaBackend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "swiglu_forward");
  const char* op = "swiglu_forward";
  kChecks.float_dtype(op, "gate", gate, kFloatDTypes);
  kChecks.dtype_as(op, "up", up, "gate", gate);
  kChecks.dtype_as(op, "out", out, "gate", gate);
  kChecks.same_shape(op, "gate", gate, "up", up);
  kChecks.same_shape(op, "gate", gate, "out", out);
  const int64_t n = gate.numel();
  if (n == 0) return;
  const bool packed = aligned16(gate.raw()) && aligned16(up.raw()) && aligned16(out.raw());
  dispatch_float(gate.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      swiglu_forward_kernel<T, kW><<<grid_for_packs<kW>(n), kThreads, 0, stream_>>>(
          ptr<T>(gate), ptr<T>(up), ptr<T>(out), n);
      NNKIT_CUDA_CHECK_LAUNCH(swiglu_forward_kernel);
    });
  });
}

void CudaBackend::swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up,
                                  const Tensor& dgate, const Tensor& dup) {
  OpScope op_scope(profiler_.get(), "swiglu_backward");
  const char* op = "swiglu_backward";
  kChecks.float_dtype(op, "gate", gate, kFloatDTypes);
  kChecks.dtype_as(op, "dout", dout, "gate", gate);
  kChecks.dtype_as(op, "up", up, "gate", gate);
  kChecks.dtype_as(op, "dgate", dgate, "gate", gate);
  kChecks.dtype_as(op, "dup", dup, "gate", gate);
  kChecks.same_shape(op, "gate", gate, "dout", dout);
  kChecks.same_shape(op, "gate", gate, "up", up);
  kChecks.same_shape(op, "gate", gate, "dgate", dgate);
  kChecks.same_shape(op, "gate", gate, "dup", dup);
  const int64_t n = gate.numel();
  if (n == 0) return;
  const bool packed = aligned16(dout.raw()) && aligned16(gate.raw()) && aligned16(up.raw()) &&
                      aligned16(dgate.raw()) && aligned16(dup.raw());
  dispatch_float(gate.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      swiglu_backward_kernel<T, kW><<<grid_for_packs<kW>(n), kThreads, 0, stream_>>>(
          ptr<T>(dout), ptr<T>(gate), ptr<T>(up), ptr<T>(dgate), ptr<T>(dup), n);
      NNKIT_CUDA_CHECK_LAUNCH(swiglu_backward_kernel);
    });
  });
}

}  // namespace nnkit::cuda
