// Purpose: backend/cuda fills, elementwise ops and dtype conversion (fill, fill_normal, add, axpy,
// scale, scale_rows, row_dot, sum_squares, convert). Owned by backend/cuda.
// Memory-bound one-pass kernels with grid-stride loops over 16-byte packs (4 floats or 8 halves)
// when every pointer allows it, element by element otherwise. Each kernel is templated on the
// storage type: low-precision values are widened to f32, computed in f32 and rounded once on
// store (kernel_utils.cuh). fill_normal evaluates the same counter-based formula as the CPU
// (nnkit/random.h, in double), so both backends initialise identical weights for a seed; a bf16 or
// f16 fill stores that f32 value rounded, exactly what converting the f32 fill would give. The
// reductions (row_dot, sum_squares) sum in double over a fixed tree, like the CPU's double
// accumulators, and repeat bit for bit; their f32 versions read element by element, in the order
// they always have (packing f32 would change the summation order, hence the bits).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda_check.h"
#include "kernel_utils.cuh"
#include "nnkit/random.h"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

template <typename T>
__global__ void fill_kernel(T* p, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    p[i] = value;
  }
}

template <typename T>
__global__ void fill_normal_kernel(T* p, int64_t n, double mean, double std, uint64_t key) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    // The generator's value is the f32 one (random.h); a half fill rounds that.
    const float value =
        static_cast<float>(mean + std * random::standard_normal_at(key, uint64_t(i)));
    p[i] = from_float<T>(value);
  }
}

// out = a + b (out may alias a or b: each pack is read before it is written, by one thread).
template <typename T, int kWidth>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float x[kW], y[kW];
    load_floats<kW>(a + i, x);
    load_floats<kW>(b + i, y);
#pragma unroll
    for (int e = 0; e < kW; ++e) x[e] = x[e] + y[e];
    store_floats<kW>(out + i, x);
  });
}

template <typename T, int kWidth>
__global__ void axpy_kernel(T* y, float alpha, const T* x, int64_t n) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float yv[kW], xv[kW];
    load_floats<kW>(y + i, yv);
    load_floats<kW>(x + i, xv);
#pragma unroll
    for (int e = 0; e < kW; ++e) yv[e] += alpha * xv[e];
    store_floats<kW>(y + i, yv);
  });
}

template <typename T, int kWidth>
__global__ void scale_kernel(T* t, float alpha, int64_t n) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float v[kW];
    load_floats<kW>(t + i, v);
#pragma unroll
    for (int e = 0; e < kW; ++e) v[e] *= alpha;
    store_floats<kW>(t + i, v);
  });
}

// x[n, :] *= w[n]. With kWidth > 1, cols is a multiple of kWidth, so a pack never spans rows.
template <typename T, int kWidth>
__global__ void scale_rows_kernel(T* x, const float* w, int64_t rows, int64_t cols) {
  for_each_pack<kWidth>(rows * cols, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    const float row_scale = w[i / cols];
    float v[kW];
    load_floats<kW>(x + i, v);
#pragma unroll
    for (int e = 0; e < kW; ++e) v[e] *= row_scale;
    store_floats<kW>(x + i, v);
  });
}

// One warp per row: out[r] = sum_c a[r, c] b[r, c] in double; lanes take packs of kWidth columns
// (cols a multiple of kWidth when kWidth > 1).
template <typename T, int kWidth>
__global__ void row_dot_kernel(const T* a, const T* b, float* out, int64_t rows, int64_t cols) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* ar = a + row * cols;
  const T* br = b + row * cols;
  double acc = 0.0;
  for (int64_t c = int64_t(lane) * kWidth; c < cols; c += 32 * kWidth) {
    float av[kWidth], bv[kWidth];
    load_floats<kWidth>(ar + c, av);
    load_floats<kWidth>(br + c, bv);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) acc += double(av[e]) * bv[e];
  }
  acc = warp_sum(acc);
  if (lane == 0) out[row] = static_cast<float>(acc);
}

constexpr int kSumBlocks = 256;  // partials of sum_squares: fixed, so the tree never changes

template <typename T, int kWidth>
__global__ void sum_squares_partial_kernel(const T* x, int64_t n, double* partial) {
  __shared__ double shared[32];
  double acc = 0.0;
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float v[kW];
    load_floats<kW>(x + i, v);
#pragma unroll
    for (int e = 0; e < kW; ++e) acc += double(v[e]) * v[e];
  });
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_squares_final_kernel(const double* partial, float* out) {
  __shared__ double shared[32];
  const double total = block_sum(partial[threadIdx.x], shared);
  if (threadIdx.x == 0) out[0] = static_cast<float>(double(out[0]) + total);
}

// dst = src converted: widened exactly to f32, rounded once to the destination type.
template <typename TD, typename TS, int kWidth>
__global__ void convert_kernel(TD* dst, const TS* src, int64_t n) {
  for_each_pack<kWidth>(n, [&](int64_t i, auto width) {
    constexpr int kW = decltype(width)::value;
    float v[kW];
    load_floats<kW>(src + i, v);
    store_floats<kW>(dst + i, v);
  });
}

// Round-to-nearest-even float -> bf16 / f16 bits (host).
uint16_t to_bf16_bits(float value) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(value));
}
uint16_t to_f16_bits(float value) {
  return __half_as_ushort(__float2half_rn(value));
}

template <typename T>
void launch_fill(cudaStream_t stream, const Tensor& t, T value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  fill_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(t), n, value);
  NNKIT_CUDA_CHECK_LAUNCH(fill_kernel);
}

}  // namespace

void CudaBackend::fill(const Tensor& t, float value) {
  OpScope op_scope(profiler_.get(), "fill");
  if (!t.defined() || t.device() != device()) {
    kChecks.fail("fill", "t is " + describe(t) + "; expected a tensor on " + to_string(device()));
  }
  switch (t.dtype()) {
    case DType::kF32:
      return launch_fill(stream_, t, value);
    case DType::kI32:
      return launch_fill(stream_, t, static_cast<int32_t>(value));
    case DType::kI64:
      return launch_fill(stream_, t, static_cast<int64_t>(value));
    case DType::kU8:
      return launch_fill(stream_, t, static_cast<uint8_t>(value));
    case DType::kBF16:
      return launch_fill(stream_, t, to_bf16_bits(value));
    case DType::kF16:
      return launch_fill(stream_, t, to_f16_bits(value));
  }
}

void CudaBackend::fill_normal(const Tensor& t, float mean, float std, uint64_t seed) {
  OpScope op_scope(profiler_.get(), "fill_normal");
  kChecks.float_dtype("fill_normal", "t", t, kFloatDTypes);
  const int64_t n = t.numel();
  if (n == 0) return;
  dispatch_float(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_normal_kernel<T>
        <<<grid_for(n), kThreads, 0, stream_>>>(ptr<T>(t), n, mean, std, random::normal_key(seed));
    NNKIT_CUDA_CHECK_LAUNCH(fill_normal_kernel);
  });
}

void CudaBackend::add(const Tensor& out, const Tensor& a, const Tensor& b) {
  OpScope op_scope(profiler_.get(), "add");
  kChecks.float_dtype("add", "out", out, kFloatDTypes);
  kChecks.dtype_as("add", "a", a, "out", out);
  kChecks.dtype_as("add", "b", b, "out", out);
  kChecks.same_shape("add", "out", out, "a", a);
  kChecks.same_shape("add", "out", out, "b", b);
  const int64_t n = out.numel();
  if (n == 0) return;
  const bool packed = aligned16(out.raw()) && aligned16(a.raw()) && aligned16(b.raw());
  dispatch_float(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      add_kernel<T, kW>
          <<<grid_for_packs<kW>(n), kThreads, 0, stream_>>>(ptr<T>(out), ptr<T>(a), ptr<T>(b), n);
      NNKIT_CUDA_CHECK_LAUNCH(add_kernel);
    });
  });
}

void CudaBackend::axpy(const Tensor& y, float alpha, const Tensor& x) {
  OpScope op_scope(profiler_.get(), "axpy");
  kChecks.float_dtype("axpy", "y", y, kFloatDTypes);
  kChecks.dtype_as("axpy", "x", x, "y", y);
  kChecks.same_shape("axpy", "y", y, "x", x);
  const int64_t n = y.numel();
  if (n == 0) return;
  const bool packed = aligned16(y.raw()) && aligned16(x.raw());
  dispatch_float(y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      axpy_kernel<T, kW>
          <<<grid_for_packs<kW>(n), kThreads, 0, stream_>>>(ptr<T>(y), alpha, ptr<T>(x), n);
      NNKIT_CUDA_CHECK_LAUNCH(axpy_kernel);
    });
  });
}

void CudaBackend::scale(const Tensor& t, float alpha) {
  OpScope op_scope(profiler_.get(), "scale");
  kChecks.float_dtype("scale", "t", t, kFloatDTypes);
  const int64_t n = t.numel();
  if (n == 0) return;
  dispatch_float(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(aligned16(t.raw()), [&](auto width) {
      constexpr int kW = decltype(width)::value;
      scale_kernel<T, kW><<<grid_for_packs<kW>(n), kThreads, 0, stream_>>>(ptr<T>(t), alpha, n);
      NNKIT_CUDA_CHECK_LAUNCH(scale_kernel);
    });
  });
}

void CudaBackend::scale_rows(const Tensor& x, const Tensor& w) {
  OpScope op_scope(profiler_.get(), "scale_rows");
  const backend_common::RowShape s = kChecks.float_rows("scale_rows", "x", x, kFloatDTypes);
  kChecks.tensor("scale_rows", "w", w, DType::kF32, {s.rows});
  if (s.rows * s.cols == 0) return;
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool packed = aligned16(x.raw()) && s.cols % kPackWidth<T> == 0;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      scale_rows_kernel<T, kW><<<grid_for_packs<kW>(s.rows * s.cols), kThreads, 0, stream_>>>(
          ptr<T>(x), ptr<float>(w), s.rows, s.cols);
      NNKIT_CUDA_CHECK_LAUNCH(scale_rows_kernel);
    });
  });
}

void CudaBackend::row_dot(const Tensor& a, const Tensor& b, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "row_dot");
  const backend_common::RowShape s = kChecks.float_rows("row_dot", "a", a, kFloatDTypes);
  kChecks.dtype_as("row_dot", "b", b, "a", a);
  kChecks.same_shape("row_dot", "a", a, "b", b);
  kChecks.tensor("row_dot", "out", out, DType::kF32, {s.rows});
  if (s.rows == 0) return;
  const int64_t warps_per_block = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((s.rows + warps_per_block - 1) / warps_per_block);
  dispatch_float(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    // f32 keeps its element-by-element order (bit-identical sums); halves read 16-byte packs.
    const bool packed = !std::is_same_v<T, float> && aligned16(a.raw()) && aligned16(b.raw()) &&
                        s.cols % kPackWidth<T> == 0;
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      row_dot_kernel<T, kW>
          <<<blocks, kThreads, 0, stream_>>>(ptr<T>(a), ptr<T>(b), ptr<float>(out), s.rows, s.cols);
      NNKIT_CUDA_CHECK_LAUNCH(row_dot_kernel);
    });
  });
}

void CudaBackend::sum_squares(const Tensor& x, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "sum_squares");
  kChecks.float_dtype("sum_squares", "x", x, kFloatDTypes);
  kChecks.dtype("sum_squares", "out", out, DType::kF32);
  if (out.numel() != 1) kChecks.fail("sum_squares", "out is " + describe(out) + "; expected (1)");
  const int64_t n = x.numel();
  if (n == 0) return;
  Tensor partial = scratch(kSumBlocks * sizeof(double));
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    // As row_dot: f32 element by element (the same tree as always), halves in packs.
    const bool packed = !std::is_same_v<T, float> && aligned16(x.raw());
    with_pack_width<T>(packed, [&](auto width) {
      constexpr int kW = decltype(width)::value;
      sum_squares_partial_kernel<T, kW>
          <<<kSumBlocks, kThreads, 0, stream_>>>(ptr<T>(x), n, ptr<double>(partial));
      NNKIT_CUDA_CHECK_LAUNCH(sum_squares_partial_kernel);
    });
  });
  sum_squares_final_kernel<<<1, kSumBlocks, 0, stream_>>>(ptr<double>(partial), ptr<float>(out));
  NNKIT_CUDA_CHECK_LAUNCH(sum_squares_final_kernel);
}

void CudaBackend::convert(const Tensor& dst, const Tensor& src) {
  OpScope op_scope(profiler_.get(), "convert");
  kChecks.float_dtype("convert", "dst", dst, kFloatDTypes);
  kChecks.float_dtype("convert", "src", src, kFloatDTypes);
  if (dst.numel() != src.numel()) {
    kChecks.fail("convert", "dst is " + describe(dst) + " and src is " + describe(src) +
                                "; expected the same number of elements");
  }
  const int64_t n = src.numel();
  if (n == 0) return;
  if (dst.dtype() == src.dtype()) {
    if (dst.raw() != src.raw()) {
      NNKIT_CUDA_CHECK(
          cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice, stream_));
    }
    return;
  }
  // Packs of 8 elements: 16 bytes of a half, two 16-byte accesses of f32.
  constexpr int kConvertWidth = 8;
  const bool packed = aligned16(dst.raw()) && aligned16(src.raw());
  dispatch_float(dst.dtype(), [&](auto dst_tag) {
    using TD = typename decltype(dst_tag)::type;
    dispatch_float(src.dtype(), [&](auto src_tag) {
      using TS = typename decltype(src_tag)::type;
      if constexpr (!std::is_same_v<TD, TS>) {
        if (packed) {
          convert_kernel<TD, TS, kConvertWidth>
              <<<grid_for_packs<kConvertWidth>(n), kThreads, 0, stream_>>>(ptr<TD>(dst),
                                                                           ptr<TS>(src), n);
        } else {
          convert_kernel<TD, TS, 1>
              <<<grid_for(n), kThreads, 0, stream_>>>(ptr<TD>(dst), ptr<TS>(src), n);
        }
        NNKIT_CUDA_CHECK_LAUNCH(convert_kernel);
      }
    });
  });
}

}  // namespace nnkit::cuda
