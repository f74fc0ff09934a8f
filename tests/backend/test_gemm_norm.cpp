// Purpose: backend/cpu gemm, RMSNorm, SwiGLU, softmax and top-k against double references on odd
// sizes. Owned by the backend/cpu tests.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "reference.h"

namespace nnkit::test {
namespace {

class BackendGemm : public CpuBackendTest {
 protected:
  // c = 0.5 * op(a) @ op(b) + c for all four transpose pairs against a double reference.
  void check_gemm_all_transposes(int64_t M, int64_t K, int64_t N);
};
using BackendNorm = CpuBackendTest;

// Sizes pick each path of the CPU gemm: the direct few-row kernel (7 rows), one OpenBLAS call
// (transposed a of 7 columns), and the per-thread slabs of c split by rows (131 x 37) and by
// columns (40 x 150), with edges that are not multiples of the slab alignment.
TEST_F(BackendGemm, AllTransposesAlphaBeta) {
  struct Size {
    int64_t M, K, N;
  };
  for (const Size size : {Size{7, 13, 5}, Size{131, 70, 37}, Size{40, 90, 150}}) {
    check_gemm_all_transposes(size.M, size.K, size.N);
  }
}

void BackendGemm::check_gemm_all_transposes(int64_t M, int64_t K, int64_t N) {
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      std::vector<float> ha, hb, hc;
      Tensor a = random(ta ? Shape{K, M} : Shape{M, K}, 10 + ta, 1.0f, &ha);
      Tensor b = random(tb ? Shape{N, K} : Shape{K, N}, 20 + tb, 1.0f, &hb);
      Tensor c = random({M, N}, 30, 1.0f, &hc);
      be().gemm(a, ta, b, tb, c, 0.5f, 1.0f);
      std::vector<double> want(size_t(M * N));
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          double acc = 0.0;
          for (int64_t k = 0; k < K; ++k) {
            const double av = ta ? ha[size_t(k * M + m)] : ha[size_t(m * K + k)];
            const double bv = tb ? hb[size_t(n * K + k)] : hb[size_t(k * N + n)];
            acc += av * bv;
          }
          want[size_t(m * N + n)] = 0.5 * acc + hc[size_t(m * N + n)];
        }
      }
      expect_close(host(c), want, 1e-5, 1e-5,
                   "gemm " + std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N) +
                       " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
    }
  }
}

TEST_F(BackendGemm, BetaZeroOverwritesAndEmptyInnerDimension) {
  Tensor a = random({3, 4}, 1);
  Tensor b = random({4, 2}, 2);
  Tensor c = be().empty({3, 2});
  be().fill(c, std::nanf(""));
  be().gemm(a, false, b, false, c);
  for (float x : host(c)) EXPECT_FALSE(std::isnan(x));
  Tensor a0 = be().empty({3, 0});
  Tensor b0 = be().empty({0, 2});
  be().fill(c, 4.0f);
  be().gemm(a0, false, b0, false, c, 1.0f, 0.5f);
  EXPECT_EQ(host(c), std::vector<float>(6, 2.0f));
}

TEST_F(BackendNorm, RmsnormForwardBackward) {
  const int64_t N = 7, C = 13;
  const float eps = 1e-5f;
  std::vector<float> hx, hw, hdy, hdw;
  Tensor x = random({N, C}, 40, 2.0f, &hx);
  Tensor w = random({C}, 41, 1.0f, &hw);
  Tensor dy = random({N, C}, 42, 1.0f, &hdy);
  Tensor dw = random({C}, 43, 1.0f, &hdw);
  Tensor y = be().empty({N, C}), rstd = be().empty({N}), dx = be().empty({N, C});
  be().rmsnorm_forward(x, w, eps, y, rstd);
  be().rmsnorm_backward(dy, x, w, rstd, dx, dw);
  std::vector<double> wy(size_t(N * C), 0.0), wr(size_t(N), 0.0), wdx(size_t(N * C), 0.0);
  std::vector<double> wdw(hdw.begin(), hdw.end());
  for (int64_t n = 0; n < N; ++n) {
    double ms = 0.0, dot = 0.0;
    for (int64_t c = 0; c < C; ++c) ms += double(hx[size_t(n * C + c)]) * hx[size_t(n * C + c)];
    const double r = 1.0 / std::sqrt(ms / C + eps);
    wr[size_t(n)] = r;
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = size_t(n * C + c);
      wy[i] = hx[i] * r * hw[size_t(c)];
      dot += double(hdy[i]) * hw[size_t(c)] * hx[i];
      wdw[size_t(c)] += double(hdy[i]) * hx[i] * r;
    }
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = size_t(n * C + c);
      wdx[i] = r * hdy[i] * hw[size_t(c)] - hx[i] * r * r * r * dot / C;
    }
  }
  expect_close(host(y), wy, 1e-5, 1e-6, "rmsnorm y");
  expect_close(host(rstd), wr, 1e-5, 1e-6, "rmsnorm rstd");
  expect_close(host(dx), wdx, 1e-5, 1e-5, "rmsnorm dx");
  expect_close(host(dw), wdw, 1e-5, 1e-5, "rmsnorm dweight (accumulated)");
}

TEST_F(BackendNorm, AddRmsnormEqualsAddThenRmsnormAndMayOverwriteX) {
  const int64_t N = 4, C = 24;
  std::vector<float> hx, hr, hw;
  Tensor x = random({N, C}, 90, 1.0f, &hx);
  Tensor r = random({N, C}, 91, 1.0f, &hr);
  Tensor w = random({C}, 92, 1.0f, &hw);
  Tensor sum_ref = be().empty({N, C}), y_ref = be().empty({N, C}), rstd = be().empty({N});
  be().add(sum_ref, x, r);
  be().rmsnorm_forward(sum_ref, w, 1e-5f, y_ref, rstd);
  Tensor sum = be().empty({N, C}), y = be().empty({N, C});
  be().add_rmsnorm(x, r, w, 1e-5f, sum, y);
  EXPECT_EQ(host(sum), host(sum_ref));
  EXPECT_EQ(host(y), host(y_ref));
  be().add_rmsnorm(x, r, w, 1e-5f, x, y);  // sum aliasing x
  EXPECT_EQ(host(x), host(sum_ref));
  EXPECT_EQ(host(y), host(y_ref));
}

TEST_F(BackendNorm, RmsnormAcceptsRank3AndLargeRows) {
  std::vector<float> hx;
  Tensor x = random({4, 300, 64}, 44, 1.0f, &hx);
  Tensor w = be().empty({64});
  be().fill(w, 1.0f);
  Tensor y = be().empty({4, 300, 64}), rstd = be().empty({1200});
  be().rmsnorm_forward(x, w, 1e-6f, y, rstd);
  const std::vector<float> hr = host(rstd);
  double ms = 0.0;
  for (int c = 0; c < 64; ++c) ms += double(hx[size_t(1199 * 64 + c)]) * hx[size_t(1199 * 64 + c)];
  EXPECT_NEAR(hr[1199], 1.0 / std::sqrt(ms / 64 + 1e-6), 1e-5 * hr[1199]);
}

TEST_F(BackendNorm, SwigluForwardBackward) {
  std::vector<float> hg, hu, hd;
  Tensor g = random({7, 13}, 50, 6.0f, &hg);
  Tensor u = random({7, 13}, 51, 1.0f, &hu);
  Tensor d = random({7, 13}, 52, 1.0f, &hd);
  Tensor out = be().empty({7, 13}), dg = be().empty({7, 13}), du = be().empty({7, 13});
  be().swiglu_forward(g, u, out);
  be().swiglu_backward(d, g, u, dg, du);
  std::vector<double> wo(hg.size()), wdg(hg.size()), wdu(hg.size());
  for (size_t i = 0; i < hg.size(); ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(hg[i])));
    wo[i] = hg[i] * s * hu[i];
    wdu[i] = hd[i] * hg[i] * s;
    wdg[i] = hd[i] * hu[i] * s * (1.0 + hg[i] * (1.0 - s));
  }
  expect_close(host(out), wo, 1e-5, 1e-6, "swiglu out");
  expect_close(host(dg), wdg, 1e-5, 1e-6, "swiglu dgate");
  expect_close(host(du), wdu, 1e-5, 1e-6, "swiglu dup");
}

TEST_F(BackendNorm, SoftmaxForwardBackwardInPlace) {
  std::vector<float> hx, hdy;
  Tensor x = random({7, 13}, 60, 20.0f, &hx);  // wide range: exercises the max subtraction
  Tensor dy = random({7, 13}, 61, 1.0f, &hdy);
  Tensor y = be().empty({7, 13});
  be().softmax_rows(x, y);
  std::vector<double> wy(hx.size()), wdx(hx.size());
  for (int n = 0; n < 7; ++n) {
    double mx = -1e300, sum = 0.0, dot = 0.0;
    for (int c = 0; c < 13; ++c) mx = std::max(mx, double(hx[size_t(n * 13 + c)]));
    for (int c = 0; c < 13; ++c) sum += std::exp(hx[size_t(n * 13 + c)] - mx);
    for (int c = 0; c < 13; ++c)
      wy[size_t(n * 13 + c)] = std::exp(hx[size_t(n * 13 + c)] - mx) / sum;
    for (int c = 0; c < 13; ++c) dot += wy[size_t(n * 13 + c)] * hdy[size_t(n * 13 + c)];
    for (int c = 0; c < 13; ++c) {
      wdx[size_t(n * 13 + c)] = wy[size_t(n * 13 + c)] * (hdy[size_t(n * 13 + c)] - dot);
    }
  }
  expect_close(host(y), wy, 1e-5, 1e-7, "softmax");
  be().softmax_backward(y, dy, dy);  // dx aliases dy
  expect_close(host(dy), wdx, 1e-5, 1e-6, "softmax backward");
  be().softmax_rows(x, x);  // y aliases x
  expect_close(host(x), wy, 1e-5, 1e-7, "softmax in place");
}

TEST_F(BackendNorm, TopkDescendingTiesToLowerIndex) {
  Tensor x = tensor_from(be(), {1, 3, 3, 2, 3, -1, 0, 0, 0, 0}, {2, 5});
  Tensor v = be().empty({2, 3});
  Tensor i = be().empty({2, 3}, DType::kI32);
  be().topk_rows(x, 3, v, i);
  EXPECT_EQ(host(v), (std::vector<float>{3, 3, 3, 0, 0, 0}));
  EXPECT_EQ(to_vector_i32(be(), i), (std::vector<int32_t>{1, 2, 4, 1, 2, 3}));
}

TEST_F(BackendNorm, TopkMatchesStableSortSmallAndLargeK) {
  const int64_t N = 9, C = 50;
  std::vector<float> hx = random_values(size_t(N * C), 70);
  for (float& f : hx) f = std::round(f * 8.0f) / 8.0f;  // plenty of ties
  Tensor x = tensor_from(be(), hx, {N, C});
  for (int64_t k : {1, 2, 7, 40, 50}) {
    Tensor v = be().empty({N, k});
    Tensor i = be().empty({N, k}, DType::kI32);
    be().topk_rows(x, k, v, i);
    const std::vector<float> hv = host(v);
    const std::vector<int32_t> hi = to_vector_i32(be(), i);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<int32_t> order(static_cast<size_t>(C));
      std::iota(order.begin(), order.end(), 0);
      const float* row = hx.data() + n * C;
      std::stable_sort(order.begin(), order.end(), [row](int a, int b) { return row[a] > row[b]; });
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_EQ(hi[size_t(n * k + j)], order[size_t(j)]) << "k=" << k << " n=" << n << " j=" << j;
        ASSERT_EQ(hv[size_t(n * k + j)], row[order[size_t(j)]]);
      }
    }
  }
}

}  // namespace
}  // namespace nnkit::test
