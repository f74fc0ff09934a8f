// Purpose: backend/cuda fills (f32, i32 and the counter-based normal generator) and elementwise
// ops against backend/cpu on the same inputs, on small odd shapes and on sizes large enough to
// need many CUDA blocks. Owned by the backend/cuda tests.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_parity.h"

namespace nnkit::test {
namespace {

using CudaFillParity = CudaParityTest;
using CudaElementwiseParity = CudaParityTest;

const std::vector<Shape> kElementwiseShapes = {{7, 13}, {300001}};

TEST_F(CudaFillParity, FillF32AndI32MatchCpu) {
  for (const Shape& shape : kElementwiseShapes) {
    const std::string size = to_string(shape);
    TensorPair f = poisoned(shape);
    cpu().fill(f.cpu, -2.5f);
    cuda().fill(f.cuda, -2.5f);
    expect_matches_cpu(f, kExact, "fill f32 " + size);

    TensorPair i{cpu().empty(shape, DType::kI32), cuda().empty(shape, DType::kI32)};
    for (float value : {-1.0f, 7.0f}) {
      cpu().fill(i.cpu, value);
      cuda().fill(i.cuda, value);
      expect_ints_match_cpu(i, "fill i32 " + std::to_string(value) + " " + size);
    }
  }
  // zeros() goes through fill as well.
  EXPECT_EQ(to_vector_i32(cuda(), cuda().zeros({5}, DType::kI32)), std::vector<int32_t>(5, 0));
}

// Element i depends only on (seed, i) on every device: the CUDA values are the CPU values,
// allowing the last bit of double log/cos on the device (at most 1 ulp after rounding to float).
TEST_F(CudaFillParity, FillNormalIsTheCpuSequence) {
  for (const Shape& shape : {Shape{7, 13}, Shape{100003}}) {
    for (uint64_t seed : {uint64_t{1234}, uint64_t{7}}) {
      TensorPair t = poisoned(shape);
      cpu().fill_normal(t.cpu, 0.5f, 2.0f, seed);
      cuda().fill_normal(t.cuda, 0.5f, 2.0f, seed);
      const std::vector<float> want = cpu_values(t), got = cuda_values(t);
      ASSERT_EQ(got.size(), want.size());
      int64_t worst = 0;
      size_t worst_at = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_TRUE(std::isfinite(got[i])) << "element " << i << " seed " << seed;
        const int64_t d = ulp_distance(got[i], want[i]);
        if (d > worst) {
          worst = d;
          worst_at = i;
        }
      }
      EXPECT_LE(worst, 1) << "seed " << seed << " shape " << to_string(shape) << ": element "
                          << worst_at << " is " << got[worst_at] << " on CUDA, " << want[worst_at]
                          << " on the CPU";
    }
  }
}

TEST_F(CudaElementwiseParity, AddIncludingOutputAliasingAnInput) {
  for (const Shape& shape : kElementwiseShapes) {
    const std::string size = to_string(shape);
    TensorPair a = same_random(shape, 2), b = same_random(shape, 3);
    TensorPair out = poisoned(shape);
    cpu().add(out.cpu, a.cpu, b.cpu);
    cuda().add(out.cuda, a.cuda, b.cuda);
    expect_matches_cpu(out, kExact, "add " + size);
    cpu().add(a.cpu, a.cpu, b.cpu);  // out aliases a
    cuda().add(a.cuda, a.cuda, b.cuda);
    expect_matches_cpu(a, kExact, "add, out aliasing a " + size);
    cpu().add(b.cpu, a.cpu, b.cpu);  // out aliases b
    cuda().add(b.cuda, a.cuda, b.cuda);
    expect_matches_cpu(b, kExact, "add, out aliasing b " + size);
  }
}

TEST_F(CudaElementwiseParity, AxpyAndScale) {
  for (const Shape& shape : kElementwiseShapes) {
    const std::string size = to_string(shape);
    TensorPair x = same_random(shape, 4), y = same_random(shape, 5);
    cpu().axpy(y.cpu, -0.37f, x.cpu);
    cuda().axpy(y.cuda, -0.37f, x.cuda);
    expect_matches_cpu(y, kMultiplyAdd, "axpy " + size);
    cpu().scale(x.cpu, -2.75f);
    cuda().scale(x.cuda, -2.75f);
    expect_matches_cpu(x, kExact, "scale " + size);
  }
}

TEST_F(CudaElementwiseParity, ScaleRowsAndRowDot) {
  for (const Shape& shape : {Shape{7, 13}, Shape{301, 300}, Shape{3, 4099}}) {
    const std::string size = to_string(shape);
    TensorPair a = same_random(shape, 6), b = same_random(shape, 7);
    TensorPair w = same_random({shape[0]}, 8, 2.0f);
    TensorPair dots = poisoned({shape[0]});
    cpu().row_dot(a.cpu, b.cpu, dots.cpu);
    cuda().row_dot(a.cuda, b.cuda, dots.cuda);
    // 4099 columns: the sum grows to ~20 and its rounding with it.
    expect_matches_cpu(dots, shape[1] > 1000 ? Tolerance{1e-5, 1e-4} : kReduction,
                       "row_dot " + size);
    cpu().scale_rows(a.cpu, w.cpu);
    cuda().scale_rows(a.cuda, w.cuda);
    expect_matches_cpu(a, kExact, "scale_rows " + size);
  }
}

TEST_F(CudaElementwiseParity, SumSquaresAccumulatesIntoOut) {
  TensorPair z = same_random({1000, 37}, 9), y = same_random({7, 13}, 10);
  TensorPair acc = same_values({1.5f}, {1});
  cpu().sum_squares(z.cpu, acc.cpu);
  cuda().sum_squares(z.cuda, acc.cuda);
  expect_matches_cpu(acc, kPositiveSum, "sum_squares");
  cpu().sum_squares(y.cpu, acc.cpu);  // accumulates on top
  cuda().sum_squares(y.cuda, acc.cuda);
  expect_matches_cpu(acc, kPositiveSum, "sum_squares accumulated twice");
}

}  // namespace
}  // namespace nnkit::test
