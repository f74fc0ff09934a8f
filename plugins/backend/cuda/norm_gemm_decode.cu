// Purpose: backend/cuda add_rmsnorm_gemm_nt: a decode step's residual add, RMSNorm and the
// product after them (attention's qkv) in one launch, where add_rmsnorm and gemm took two. Owned
// by backend/cuda.
// Every block of the small gemm's grid (a warp per output column) first normalises the step's
// few rows itself into shared memory (a warp per row: 768 columns are 3 KB of x and residual
// from L2), so no block waits for another's norm; block 0 also stores the sum (the residual
// stream; the other blocks' rows fit the registers, so they need not store it). The norm is
// add_rmsnorm's row (rmsnorm_row.cuh) and the products small_gemm_nt_kernel's (gemm_small.cuh):
// the same bits as add_rmsnorm followed by gemm. Other shapes run the two ops.
#include <type_traits>

#include "../common/composed_ops.h"
#include "cuda_backend.h"
#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "gemm_small.cuh"
#include "kernel_utils.cuh"
#include "rmsnorm_row.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kNormGemmThreads = kThreads;
constexpr int kNormGemmWarps = kNormGemmThreads / 32;
constexpr size_t kMaxNormedBytes = 32 << 10;  // the normalised rows a block holds

// Grid: a warp per output column j of c (n, as small_gemm_nt_kernel); dynamic shared memory:
// the kRows normalised rows (kRows, k) in T.
template <typename T, typename W, int kRows, int kWidth>
__global__ void __launch_bounds__(kNormGemmThreads)
    add_rmsnorm_small_gemm_kernel(const T* x, const T* residual, const W* norm_weight, float eps,
                                  const T* b, int64_t n, int64_t k, T* sum, T* c) {
  extern __shared__ uint4 normed_packs[];
  T* normed = reinterpret_cast<T*>(normed_packs);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t j = blockIdx.x * int64_t(kNormGemmWarps) + warp;
  const T* bj = b + j * k;
  // The weights (no kernel of a decode step writes them) into L2 while the predecessor finishes.
  if (j < n) {
    for (int64_t offset = int64_t(lane) * 128; offset < k * int64_t(sizeof(T));
         offset += 32 * 128) {
      prefetch_to_l2(reinterpret_cast<const char*>(bj) + offset);
    }
  }
  if (warp == 0) {
    for (int64_t offset = int64_t(lane) * 128; offset < k * int64_t(sizeof(W));
         offset += 32 * 128) {
      prefetch_to_l2(reinterpret_cast<const char*>(norm_weight) + offset);
    }
  }
  wait_for_preceding_grid();
  allow_dependent_launch();
  for (int r = warp; r < kRows; r += kNormGemmWarps) {
    add_rmsnorm_row<T, W, kWidth, true>(x + r * k, residual + r * k, norm_weight, eps, k, lane,
                                        blockIdx.x == 0 ? sum + r * k : nullptr, normed + r * k,
                                        nullptr);
  }
  __syncthreads();
  if (j >= n) return;
  float acc[kRows];
  small_gemm_column_shares<T, kRows, kWidth>(normed, bj, k, lane, acc);
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const float total = warp_sum(acc[i]);
    if (lane == 0) c[i * n + j] = from_float<T>(total);
  }
}

// NNKIT_FUSED_NORM_GEMM=0 runs add_rmsnorm_gemm_nt as add_rmsnorm and gemm (to compare on one
// machine).
bool fused_norm_gemm_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_FUSED_NORM_GEMM");
    return flag == nullptr || std::string(flag) != "0";
  }();
  return enabled;
}

template <typename T, typename W, int kRows>
void launch_norm_gemm(const T* x, const T* residual, const W* norm_weight, float eps, const T* w,
                      int64_t n, int64_t k, T* sum, T* out, cudaStream_t stream) {
  constexpr int kWidth = kPackWidth<T>;
  const size_t shared = size_t(kRows) * size_t(k) * sizeof(T);
  const unsigned blocks = static_cast<unsigned>((n + kNormGemmWarps - 1) / kNormGemmWarps);
  launch_dependent(add_rmsnorm_small_gemm_kernel<T, W, kRows, kWidth>, blocks, kNormGemmThreads,
                   shared, stream, x, residual, norm_weight, eps, w, n, k, sum, out);
  NNKIT_CUDA_CHECK_LAUNCH(add_rmsnorm_small_gemm_kernel);
}

}  // namespace

void CudaBackend::add_rmsnorm_gemm_nt(const Tensor& x, const Tensor& residual,
                                      const Tensor& norm_weight, float eps, const Tensor& w,
                                      const Tensor& sum, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "add_rmsnorm_gemm_nt");
  const int64_t m = x.rank() == 2 ? x.dim(0) : -1, k = x.rank() == 2 ? x.dim(1) : -1;
  const int64_t n = w.rank() == 2 ? w.dim(0) : -1;
  const DType dtype = x.dtype();
  const auto same = [&](const Tensor& t, DType want, const Shape& shape) {
    return t.defined() && t.device() == device() && t.dtype() == want && t.shape() == shape;
  };
  // The fused kernel takes 16-bit steps of 1, 2, 4, 8 or 16 rows of at most 32 x 4 packs, the
  // weight a 16-bit (n, k) of x's dtype; anything else (and any malformed call: the two ops
  // say what is wrong) runs the two ops.
  const bool fused = fused_norm_gemm_enabled() && (dtype == DType::kBF16 || dtype == DType::kF16) &&
                     (m == 1 || m == 2 || m == 4 || m == 8 || m == 16) && k > 0 && k % 8 == 0 &&
                     k <= kCachedNormColumns<8> && n > 0 && size_t(m * k) * 2 <= kMaxNormedBytes &&
                     same(x, dtype, {m, k}) && same(residual, dtype, {m, k}) &&
                     same(sum, dtype, {m, k}) && same(w, dtype, {n, k}) &&
                     same(out, dtype, {m, n}) && norm_weight.defined() &&
                     norm_weight.device() == device() && norm_weight.shape() == Shape{k} &&
                     (norm_weight.dtype() == DType::kF32 || norm_weight.dtype() == dtype) &&
                     aligned16(x.raw()) && aligned16(residual.raw()) && aligned16(sum.raw()) &&
                     aligned16(w.raw()) && aligned16(norm_weight.raw());
  if (!fused) {
    backend_common::add_rmsnorm_gemm_nt_by_ops(*this, x, residual, norm_weight, eps, w, sum, out);
    return;
  }
  dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      with_norm_weight_type<T>(norm_weight.dtype(), [&](auto weight_tag) {
        using W = typename decltype(weight_tag)::type;
        const auto run = [&](auto rows) {
          launch_norm_gemm<T, W, decltype(rows)::value>(ptr<T>(x), ptr<T>(residual),
                                                        ptr<W>(norm_weight), eps, ptr<T>(w), n, k,
                                                        ptr<T>(sum), ptr<T>(out), stream_);
        };
        switch (m) {
          case 1:
            run(std::integral_constant<int, 1>{});
            break;
          case 2:
            run(std::integral_constant<int, 2>{});
            break;
          case 4:
            run(std::integral_constant<int, 4>{});
            break;
          case 8:
            run(std::integral_constant<int, 8>{});
            break;
          default:
            run(std::integral_constant<int, 16>{});
            break;
        }
      });
    }
  });
}

void load_norm_gemm_decode_kernels() {
  load_kernel_now(add_rmsnorm_small_gemm_kernel<__nv_bfloat16, __nv_bfloat16, 1, 8>);
  load_kernel_now(add_rmsnorm_small_gemm_kernel<__nv_bfloat16, float, 1, 8>);
}

}  // namespace nnkit::cuda
