// Purpose: backend/cuda gemm (all transposes, alpha/beta, beta = 0 over NaN, empty inner
// dimension), RMSNorm, SwiGLU, softmax and top-k against backend/cpu on the same inputs, on odd
// sizes that leave partial tiles and blocks. Owned by the backend/cuda tests.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_parity.h"

namespace nnkit::test {
namespace {

using CudaGemmParity = CudaParityTest;
using CudaNormActivationParity = CudaParityTest;
using CudaSoftmaxTopkParity = CudaParityTest;

struct GemmSize {
  int64_t M, K, N;
  std::string name() const {
    return std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N);
  }
};

// With b transposed, 1, 7, 16 and 23 rows take the few-row kernel (23 = chunks of 16, 4, 2 and
// 1 rows; K 1000 spans many warp strides); everything else goes to cuBLAS.
const std::vector<GemmSize> kGemmSizes = {{1, 1000, 300}, {7, 13, 5},    {16, 129, 70},
                                          {23, 64, 33},   {131, 70, 37}, {300, 257, 129}};

TEST_F(CudaGemmParity, AllTransposesWithAlphaAndBeta) {
  struct Scalars {
    float alpha, beta;
  };
  for (const GemmSize& s : kGemmSizes) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        for (const Scalars k : {Scalars{0.5f, 1.0f}, Scalars{-1.5f, 0.25f}}) {
          TensorPair a = same_random(ta ? Shape{s.K, s.M} : Shape{s.M, s.K}, 10 + ta);
          TensorPair b = same_random(tb ? Shape{s.N, s.K} : Shape{s.K, s.N}, 20 + tb);
          TensorPair c = same_random({s.M, s.N}, 30);
          cpu().gemm(a.cpu, ta, b.cpu, tb, c.cpu, k.alpha, k.beta);
          cuda().gemm(a.cuda, ta, b.cuda, tb, c.cuda, k.alpha, k.beta);
          expect_matches_cpu(c, kGemm,
                             "gemm " + s.name() + " ta=" + std::to_string(ta) +
                                 " tb=" + std::to_string(tb) + " alpha=" + std::to_string(k.alpha) +
                                 " beta=" + std::to_string(k.beta));
        }
      }
    }
  }
}

// beta = 0 means c is not read: NaN already in c must not leak into the result (0 * NaN).
TEST_F(CudaGemmParity, BetaZeroOverwritesNanInC) {
  for (const GemmSize& s : kGemmSizes) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        TensorPair a = same_random(ta ? Shape{s.K, s.M} : Shape{s.M, s.K}, 40);
        TensorPair b = same_random(tb ? Shape{s.N, s.K} : Shape{s.K, s.N}, 41);
        TensorPair c = poisoned({s.M, s.N});
        cpu().gemm(a.cpu, ta, b.cpu, tb, c.cpu, 0.75f, 0.0f);
        cuda().gemm(a.cuda, ta, b.cuda, tb, c.cuda, 0.75f, 0.0f);
        expect_matches_cpu(c, kGemm,
                           "gemm beta=0 over NaN " + s.name() + " ta=" + std::to_string(ta) +
                               " tb=" + std::to_string(tb));
      }
    }
  }
}

// K = 0: the product is empty and c = beta * c (beta = 0 clears NaN).
TEST_F(CudaGemmParity, EmptyInnerDimensionLeavesBetaTimesC) {
  TensorPair a{cpu().empty({3, 0}), cuda().empty({3, 0})};
  TensorPair b{cpu().empty({0, 2}), cuda().empty({0, 2})};
  TensorPair c = same_random({3, 2}, 42);
  cpu().gemm(a.cpu, false, b.cpu, false, c.cpu, 1.0f, 0.5f);
  cuda().gemm(a.cuda, false, b.cuda, false, c.cuda, 1.0f, 0.5f);
  expect_matches_cpu(c, kExact, "gemm K=0 beta=0.5");
  TensorPair cleared = poisoned({3, 2});
  cpu().gemm(a.cpu, false, b.cpu, false, cleared.cpu, 1.0f, 0.0f);
  cuda().gemm(a.cuda, false, b.cuda, false, cleared.cuda, 1.0f, 0.0f);
  expect_matches_cpu(cleared, kExact, "gemm K=0 beta=0 over NaN");
}

TEST_F(CudaNormActivationParity, RmsnormForwardAndBackwardWithAccumulatedDweight) {
  const float eps = 1e-5f;
  for (const Shape& shape : {Shape{7, 13}, Shape{130, 257}, Shape{4, 4096}}) {
    const std::string size = to_string(shape);
    const int64_t C = shape[1];
    TensorPair x = same_random(shape, 50, 2.0f);
    TensorPair w = same_random({C}, 51);
    TensorPair dy = same_random(shape, 52);
    TensorPair dw = same_random({C}, 53);  // dweight accumulates onto this
    TensorPair y = poisoned(shape), rstd = poisoned({shape[0]}), dx = poisoned(shape);
    cpu().rmsnorm_forward(x.cpu, w.cpu, eps, y.cpu, rstd.cpu);
    cuda().rmsnorm_forward(x.cuda, w.cuda, eps, y.cuda, rstd.cuda);
    // rstd is 1 / sqrt of a mean over C squares; y one product further.
    expect_matches_cpu(rstd, {1e-5, 1e-6}, "rmsnorm rstd " + size);
    expect_matches_cpu(y, {1e-5, 1e-6}, "rmsnorm y " + size);
    cpu().rmsnorm_backward(dy.cpu, x.cpu, w.cpu, rstd.cpu, dx.cpu, dw.cpu);
    cuda().rmsnorm_backward(dy.cuda, x.cuda, w.cuda, rstd.cuda, dx.cuda, dw.cuda);
    // dx subtracts a row sum (cancellation); dweight sums over the rows.
    expect_matches_cpu(dx, {1e-5, 1e-5}, "rmsnorm dx " + size);
    expect_matches_cpu(dw, kReduction, "rmsnorm dweight (accumulated) " + size);
  }
}

TEST_F(CudaNormActivationParity, SwigluForwardAndBackward) {
  for (const Shape& shape : {Shape{7, 13}, Shape{257, 300}}) {
    const std::string size = to_string(shape);
    TensorPair gate = same_random(shape, 60, 6.0f);  // deep into both tails of the sigmoid
    TensorPair up = same_random(shape, 61);
    TensorPair dout = same_random(shape, 62);
    TensorPair out = poisoned(shape), dgate = poisoned(shape), dup = poisoned(shape);
    cpu().swiglu_forward(gate.cpu, up.cpu, out.cpu);
    cuda().swiglu_forward(gate.cuda, up.cuda, out.cuda);
    expect_matches_cpu(out, kElementwiseExp, "swiglu out " + size);
    cpu().swiglu_backward(dout.cpu, gate.cpu, up.cpu, dgate.cpu, dup.cpu);
    cuda().swiglu_backward(dout.cuda, gate.cuda, up.cuda, dgate.cuda, dup.cuda);
    expect_matches_cpu(dup, kElementwiseExp, "swiglu dup " + size);
    // dgate = dout * up * s * (1 + g (1 - s)): the bracket cancels near g = -1.28.
    expect_matches_cpu(dgate, {2e-6, 1e-6}, "swiglu dgate " + size);
  }
}

TEST_F(CudaSoftmaxTopkParity, SoftmaxForwardBackwardAndInPlace) {
  // softmax_backward: dx = y (dy - sum(dy y)) cancels; the sum's rounding enters absolutely.
  const Tolerance backward{1e-5, 2e-7};
  struct Case {
    Shape shape;
    float range;  // logits in (-range, range): 20 exercises the max subtraction
  };
  for (const Case& c : {Case{{7, 13}, 20.0f}, Case{{64, 1000}, 5.0f}, Case{{2, 5000}, 3.0f}}) {
    const std::string size = to_string(c.shape);
    TensorPair x = same_random(c.shape, 70, c.range);
    TensorPair dy = same_random(c.shape, 71);
    TensorPair y = poisoned(c.shape);
    cpu().softmax_rows(x.cpu, y.cpu);
    cuda().softmax_rows(x.cuda, y.cuda);
    expect_matches_cpu(y, kRowExp, "softmax " + size);
    TensorPair dx = poisoned(c.shape);
    cpu().softmax_backward(y.cpu, dy.cpu, dx.cpu);
    cuda().softmax_backward(y.cuda, dy.cuda, dx.cuda);
    expect_matches_cpu(dx, backward, "softmax backward " + size);
    cpu().softmax_backward(y.cpu, dy.cpu, dy.cpu);  // dx aliases dy
    cuda().softmax_backward(y.cuda, dy.cuda, dy.cuda);
    expect_matches_cpu(dy, backward, "softmax backward, dx aliasing dy " + size);
    cpu().softmax_rows(x.cpu, x.cpu);  // y aliases x
    cuda().softmax_rows(x.cuda, x.cuda);
    expect_matches_cpu(x, kRowExp, "softmax in place " + size);
  }
}

// Rows of a few distinct values (many ties), one constant row, and a row whose maximum appears
// at both ends: values must be equal to the CPU's and indices identical (ties: lower index).
std::vector<float> rows_with_ties(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> x = random_values(size_t(rows * cols), seed);
  for (float& v : x) v = std::round(v * 8.0f) / 8.0f;  // 17 distinct values
  for (int64_t c = 0; c < cols; ++c) x[size_t(c)] = 0.25f;
  if (rows > 1) {
    x[size_t(cols)] = 2.0f;
    x[size_t(2 * cols - 1)] = 2.0f;
  }
  return x;
}

// Independent of the CPU: descending values, and ascending indices within equal values.
void expect_descending_ties_by_index(const std::vector<float>& values,
                                     const std::vector<int32_t>& indices, int64_t rows, int64_t k,
                                     const std::string& what) {
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t j = 1; j < k; ++j) {
      const size_t at = size_t(n * k + j);
      ASSERT_GE(values[at - 1], values[at]) << what << " row " << n << " slot " << j;
      if (values[at - 1] == values[at]) {
        ASSERT_LT(indices[at - 1], indices[at]) << what << " tie in row " << n << " slot " << j;
      }
    }
  }
}

TEST_F(CudaSoftmaxTopkParity, TopkRowsMatchesCpuIncludingTies) {
  struct Case {
    int64_t rows, cols;
    std::vector<int64_t> ks;
  };
  for (const Case& c : {Case{9, 260, {1, 2, 4, 40}}, Case{1000, 8, {1, 2}}, Case{2, 5, {3, 5}}}) {
    const std::vector<float> hx = rows_with_ties(c.rows, c.cols, 72);
    TensorPair x = same_values(hx, {c.rows, c.cols});
    for (int64_t k : c.ks) {
      const std::string what = "topk " + std::to_string(c.rows) + "x" + std::to_string(c.cols) +
                               " k=" + std::to_string(k);
      TensorPair values = poisoned({c.rows, k});
      TensorPair indices{cpu().empty({c.rows, k}, DType::kI32),
                         cuda().empty({c.rows, k}, DType::kI32)};
      cpu().fill(indices.cpu, -7.0f);
      cuda().fill(indices.cuda, -7.0f);
      cpu().topk_rows(x.cpu, k, values.cpu, indices.cpu);
      cuda().topk_rows(x.cuda, k, values.cuda, indices.cuda);
      expect_matches_cpu(values, kExact, what + " values");
      expect_ints_match_cpu(indices, what + " indices");
      expect_descending_ties_by_index(cuda_values(values), to_vector_i32(cuda(), indices.cuda),
                                      c.rows, k, what + " (CUDA)");
      // The constant first row has only ties: its indices are 0, 1, ..., k-1.
      const std::vector<int32_t> got = to_vector_i32(cuda(), indices.cuda);
      for (int64_t j = 0; j < k; ++j) {
        EXPECT_EQ(got[size_t(j)], j) << what << " constant row slot " << j;
      }
    }
  }
}

}  // namespace
}  // namespace nnkit::test
