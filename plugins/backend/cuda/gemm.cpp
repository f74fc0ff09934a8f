// Purpose: backend/cuda gemm: row-major products through cuBLAS. Owned by backend/cuda.
// cuBLAS is column-major; a row-major (m, n) matrix is the column-major (n, m) matrix with the
// same memory, so c = op(a) op(b) is computed as c^T = op(b)^T op(a)^T with a and b swapped and
// their transpose flags kept. f32 products go through cublasSgemm: pedantic math (the default)
// keeps full fp32 products; the `tf32` option switches to TF32 tensor cores. bf16/f16 products
// (a and b in one dtype, c in f32 or that dtype) go through cuBLASLt (gemm_lt.h) with fp32
// compute on the tensor cores (bf16 x bf16 products are exact in fp32). x W^T products with at most
// kSmallGemmRows rows in x (every decode-step product, any of these dtypes) go to gemm_small.cu
// instead, one plain launch each: on an H200 that took tiny.yaml's batch-1 GPU decoding from 765
// to 1,091 tokens/s (bench/RESULTS.md).
#include <cublas_v2.h>

#include <string>

#include "cuda_backend.h"
#include "cuda_check.h"
#include "gemm_lt.h"
#include "gemm_small.h"

namespace nnkit::cuda {

namespace {

cudaDataType_t cuda_data_type(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    default:
      return CUDA_R_32F;
  }
}

// Sets the handle's math mode for one call and restores the previous one (the fp32 mode the
// backend was configured with) on every exit path.

}  // namespace

void CudaBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                       const Tensor& c, float alpha, float beta) {
  OpScope op_scope(profiler_.get(), "gemm", [&] {
    // m in powers of two: per-expert products of similar size land in one row.
    const int64_t rows = trans_a ? a.dim(1) : a.dim(0);
    int64_t bucket = 1;
    while (bucket < rows) bucket *= 2;
    return std::string("gemm ") + dtype_name(a.dtype()) + (trans_a ? " T" : " N") +
           (trans_b ? "T" : "N") + " m<=" + std::to_string(bucket) +
           " n=" + std::to_string(c.dim(1)) +
           " k=" + std::to_string(trans_a ? a.dim(0) : a.dim(1)) + " c=" + dtype_name(c.dtype()) +
           (beta != 0.0f ? " +=" : "");
  });
  const auto [m, n, k] = kChecks.gemm(a, trans_a, b, trans_b, c, backend_common::kFloatDTypes);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // BLAS rejects zero leading dimensions; the product is empty, only beta * c remains.
    if (beta == 0.0f) {
      fill(c, 0.0f);
    } else {
      scale(c, beta);
    }
    return;
  }
  if (!trans_a && trans_b && m <= kSmallGemmRows) {
    small_gemm_nt(m, n, k, alpha, a.dtype(), a.raw(), b.raw(), beta, c.dtype(), c.raw(), stream_);
    return;
  }
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (a.dtype() == DType::kF32) {
    NNKIT_CUBLAS_CHECK(cublasSgemm(
        cublas_, op_b, op_a, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
        ptr<float>(b), static_cast<int>(b.dim(1)), ptr<float>(a), static_cast<int>(a.dim(1)), &beta,
        ptr<float>(c), static_cast<int>(n)));
    return;
  }
  // Low precision: cuBLASLt with the algorithm cached per shape bucket (gemm_lt.h), fp32
  // compute on the tensor cores. cuBLASLt's default allows a reduced-precision split-K
  // reduction, as PyTorch does; measured on the H200, cublasGemmEx with the strict-reduction flag
  // picked ~30 TFLOP/s kernels for the experts' down products (bench/RESULTS.md).
  const cudaDataType_t ab_type = cuda_data_type(a.dtype());
  lt_gemm_->run(op_b, op_a, n, m, k, alpha, b.raw(), b.dim(1), a.raw(), a.dim(1), beta, c.raw(), n,
                ab_type, cuda_data_type(c.dtype()), stream_);
}

}  // namespace nnkit::cuda
