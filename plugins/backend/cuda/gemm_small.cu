// Purpose: backend/cuda gemm kernel for c = a b^T with at most 16 rows in a, the shape of every
// decode-step product (one row per sequence against a weight stored (out, in)). Owned by
// backend/cuda.
// Such products are memory-bound reads of b; what costs is per-call overhead, which cuBLAS makes
// several times larger than one plain launch. One warp per output column j: lanes stride along
// k (coalesced reads of row j of b), all m rows of a accumulated at once, then a warp tree
// reduction per row; fixed summation order (deterministic). Products with b untransposed occur
// only in backward passes (large k, few columns of parallelism here) and stay with cuBLAS.
// Dtypes: a and b are f32, bf16 or f16 (one dtype), c is f32 or that dtype. bf16/f16 weights are
// read in 16-byte packs (8 values a lane step, when k and the pointers allow), widened to f32 and
// accumulated in f32, and c is rounded once: decoding with bf16 weights reads half the bytes.
// f32 keeps one value a lane step, the summation order it always had.
#include <type_traits>

#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "gemm_small.cuh"
#include "gemm_small.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kMaxRows = static_cast<int>(kSmallGemmRows);

template <typename TC>
__device__ __forceinline__ void store(TC* out, float sum, float alpha, float beta) {
  *out = from_float<TC>(beta == 0.0f ? alpha * sum : alpha * sum + beta * to_float(*out));
}

// kWidth consecutive k values per lane step (k a multiple of kWidth when kWidth > 1).
template <typename T, typename TC, int kRows, int kWidth>
__global__ void small_gemm_nt_kernel(int64_t n, int64_t k, float alpha, const T* a, const T* b,
                                     float beta, TC* c) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (j >= n) return;
  const T* bj = b + j * k;
  // b is a weight (no kernel of a decode step writes it): its row into L2 while the predecessor
  // finishes, then wait for a.
  for (int64_t offset = int64_t(lane) * 128; offset < k * int64_t(sizeof(T)); offset += 32 * 128) {
    prefetch_to_l2(reinterpret_cast<const char*>(bj) + offset);
  }
  wait_for_preceding_grid();
  allow_dependent_launch();
  float acc[kRows];
  small_gemm_column_shares<T, kRows, kWidth>(a, bj, k, lane, acc);
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const float sum = warp_sum(acc[i]);
    if (lane == 0) store(c + i * n + j, sum, alpha, beta);
  }
}

// Rows are a template parameter (register arrays need a constant size); small_gemm_nt splits m into
// chunks of exactly 16, 8, 4, 2 and 1 rows.
template <typename T, typename TC, int kRows, int kWidth>
void launch_rows(int64_t n, int64_t k, float alpha, const T* a, const T* b, float beta, TC* c,
                 cudaStream_t stream) {
  constexpr int kWarps = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((n + kWarps - 1) / kWarps);
  launch_dependent(small_gemm_nt_kernel<T, TC, kRows, kWidth>, blocks, kThreads, 0, stream, n, k,
                   alpha, a, b, beta, c);
  NNKIT_CUDA_CHECK_LAUNCH(small_gemm_nt_kernel);
}

template <typename T, typename TC, int kWidth>
void small_gemm_nt_typed(int64_t m, int64_t n, int64_t k, float alpha, const T* a, const T* b,
                         float beta, TC* c, cudaStream_t stream) {
  // m as a sum of bucket sizes (16, 8, 4, 2, 1), each chunk of rows its own launch.
  int64_t row = 0;
  for (int bucket = kMaxRows; bucket >= 1; bucket /= 2) {
    while (m - row >= bucket) {
      const T* a_rows = a + row * k;
      TC* c_rows = c + row * n;
      switch (bucket) {
        case 16:
          launch_rows<T, TC, 16, kWidth>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        case 8:
          launch_rows<T, TC, 8, kWidth>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        case 4:
          launch_rows<T, TC, 4, kWidth>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        case 2:
          launch_rows<T, TC, 2, kWidth>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
        default:
          launch_rows<T, TC, 1, kWidth>(n, k, alpha, a_rows, b, beta, c_rows, stream);
          break;
      }
      row += bucket;
    }
  }
}

}  // namespace

void small_gemm_nt(int64_t m, int64_t n, int64_t k, float alpha, DType ab_dtype, const void* a,
                   const void* b, float beta, DType c_dtype, void* c, cudaStream_t stream) {
  dispatch_float(ab_dtype, [&](auto ab_tag) {
    using T = typename decltype(ab_tag)::type;
    dispatch_float(c_dtype, [&](auto c_tag) {
      using TC = typename decltype(c_tag)::type;
      if constexpr (std::is_same_v<TC, float> || std::is_same_v<TC, T>) {
        const auto* at = static_cast<const T*>(a);
        const auto* bt = static_cast<const T*>(b);
        auto* ct = static_cast<TC*>(c);
        // Row i of a starts at a + i k: packs stay aligned when k is a multiple of the pack.
        const bool packed =
            !std::is_same_v<T, float> && k % kPackWidth<T> == 0 && aligned16(a) && aligned16(b);
        if (packed) {
          small_gemm_nt_typed<T, TC, kPackWidth<T>>(m, n, k, alpha, at, bt, beta, ct, stream);
        } else {
          small_gemm_nt_typed<T, TC, 1>(m, n, k, alpha, at, bt, beta, ct, stream);
        }
      }
    });
  });
}

}  // namespace nnkit::cuda
