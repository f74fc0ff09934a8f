// Purpose: a micro-benchmark of backend/cuda's products at the shapes of the 8-layer seed model's
// training step (not a test: DISABLED_, run with --gtest_also_run_disabled_tests
// --gtest_filter='*GemmBench*'). Each shape runs 5 times untimed, then 20 times back to back
// after a synchronize; prints the wall time per call (to the final synchronize), the host's
// enqueue time per call (when it is near the wall time, the host is the limit) and TFLOP/s.
#include <chrono>
#include <cstdio>

#include "cuda_parity.h"

namespace nnkit::test {
namespace {

using CudaGemmBench = CudaParityTest;

struct BenchShape {
  const char* what;
  int64_t m, k, n;
  bool trans_a, trans_b;
  DType ab, c;
  float beta;
};

TEST_F(CudaGemmBench, DISABLED_SeedModelShapes) {
  const BenchShape shapes[] = {
      {"q/o proj x W^T", 16384, 768, 768, false, true, DType::kBF16, DType::kBF16, 0.0f},
      {"k/v proj x W^T", 16384, 768, 64, false, true, DType::kBF16, DType::kBF16, 0.0f},
      {"router logits", 16384, 768, 16, false, true, DType::kBF16, DType::kF32, 0.0f},
      {"expert up x W1^T", 4096, 768, 6144, false, true, DType::kBF16, DType::kBF16, 0.0f},
      {"expert down a W2^T", 4096, 6144, 768, false, true, DType::kBF16, DType::kBF16, 0.0f},
      {"expert dx dg W1 (+=)", 4096, 6144, 768, false, false, DType::kBF16, DType::kBF16, 1.0f},
      {"expert dW2 dy^T a (+= f32)", 768, 4096, 6144, true, false, DType::kBF16, DType::kF32, 1.0f},
      {"lm head logits", 16384, 768, 32000, false, true, DType::kBF16, DType::kF32, 0.0f},
      {"f32 ones(1,N) probs", 1, 16384, 16, false, false, DType::kF32, DType::kF32, 0.0f},
  };
  for (const BenchShape& s : shapes) {
    Tensor a = cuda().zeros(s.trans_a ? Shape{s.k, s.m} : Shape{s.m, s.k}, s.ab);
    Tensor b = cuda().zeros(s.trans_b ? Shape{s.n, s.k} : Shape{s.k, s.n}, s.ab);
    Tensor c = cuda().zeros({s.m, s.n}, s.c);
    for (int i = 0; i < 5; ++i) cuda().gemm(a, s.trans_a, b, s.trans_b, c, 1.0f, s.beta);
    cuda().synchronize();
    const auto host_start = std::chrono::steady_clock::now();
    constexpr int kReps = 20;
    for (int i = 0; i < kReps; ++i) cuda().gemm(a, s.trans_a, b, s.trans_b, c, 1.0f, s.beta);
    const double host_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host_start)
            .count() /
        kReps;
    cuda().synchronize();
    const double wall_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host_start)
            .count() /
        kReps;
    const double flops = 2.0 * double(s.m) * double(s.n) * double(s.k);
    std::printf(
        "gemm %-28s %6lld x %5lld x %5lld: %9.1f us/call (host enqueue %7.1f us), %6.1f "
        "TFLOP/s\n",
        s.what, static_cast<long long>(s.m), static_cast<long long>(s.k),
        static_cast<long long>(s.n), wall_us, host_us, flops / (wall_us * 1e-6) / 1e12);
  }
}

}  // namespace
}  // namespace nnkit::test
