// Purpose: backend/cpu memory, copies, threads, fills (including the counter-based normal
// generator) and elementwise ops against double references. Owned by the backend/cpu tests.
#include <cmath>
#include <cstdint>

#include "nnkit/random.h"
#include "reference.h"

namespace nnkit::test {
namespace {

using BackendMemory = CpuBackendTest;
using BackendElementwise = CpuBackendTest;

TEST_F(BackendMemory, EmptyIsAlignedHostMemoryAndZeroElementsWork) {
  EXPECT_EQ(be().threads(), 2);
  EXPECT_TRUE(be().device().is_host());
  Tensor t = be().empty({7, 13});
  EXPECT_EQ(t.shape(), (Shape{7, 13}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  Tensor none = be().empty({0, 5});
  EXPECT_TRUE(none.defined());
  EXPECT_EQ(none.numel(), 0);
  be().fill(none, 1.0f);
  Tensor none2 = be().empty({0});
  be().copy(none2, none.view({0}));
}

TEST_F(BackendMemory, CopiesRoundTripAnyDtype) {
  std::vector<float> values;
  Tensor a = random({7, 13}, 1, 1.0f, &values);
  EXPECT_EQ(host(a), values);
  Tensor b = be().empty({13, 7});  // same numel, other shape
  be().copy(b, a);
  EXPECT_EQ(host(b), values);
  std::vector<int32_t> ints = {3, -1, 7, 42, 0};
  Tensor i = tensor_from_i32(be(), ints, {5});
  Tensor j = be().empty({5}, DType::kI32);
  be().copy(j, i);
  EXPECT_EQ(to_vector_i32(be(), j), ints);
  std::vector<uint8_t> bytes = {1, 2, 3};
  Tensor u = be().from_host(bytes.data(), {3}, DType::kU8);
  std::vector<uint8_t> back(3);
  be().copy_to_host(back.data(), u);
  EXPECT_EQ(back, bytes);
}

TEST_F(BackendMemory, ZerosAndFillWorkForEveryDtype) {
  EXPECT_EQ(to_vector_i32(be(), be().zeros({4}, DType::kI32)), std::vector<int32_t>(4, 0));
  Tensor t = be().empty({5}, DType::kI32);
  be().fill(t, -1.0f);
  EXPECT_EQ(to_vector_i32(be(), t), std::vector<int32_t>(5, -1));
  Tensor f = be().empty({3, 3});
  be().fill(f, 2.5f);
  EXPECT_EQ(host(f), std::vector<float>(9, 2.5f));
  Tensor h = be().zeros({4}, DType::kBF16);
  std::vector<uint16_t> bits(4, 1);
  be().copy_to_host(bits.data(), h);
  EXPECT_EQ(bits, std::vector<uint16_t>(4, 0));
}

TEST_F(BackendElementwise, FillNormalIsCounterBasedAndRoughlyStandard) {
  const int64_t n = 100000;
  Tensor a = be().empty({n});
  Tensor b = be().empty({n});
  be().fill_normal(a, 0.5f, 2.0f, 1234);
  be().fill_normal(b, 0.5f, 2.0f, 1234);
  const std::vector<float> va = host(a);
  EXPECT_EQ(va, host(b));
  // Element i depends only on (seed, i): the header's formula, and a shorter fill's prefix.
  for (uint64_t i : {0ull, 1ull, 777ull, 99999ull}) {
    EXPECT_EQ(va[i], random::normal_at(1234, i, 0.5f, 2.0f)) << i;
  }
  Tensor prefix = be().empty({7, 13});
  be().fill_normal(prefix, 0.5f, 2.0f, 1234);
  const std::vector<float> vp = host(prefix);
  EXPECT_TRUE(std::equal(vp.begin(), vp.end(), va.begin()));
  double sum = 0.0, sq = 0.0;
  for (float x : va) {
    sum += x;
    sq += double(x) * x;
  }
  const double mean = sum / n, stdev = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.5, 0.03);
  EXPECT_NEAR(stdev, 2.0, 0.03);
  be().fill_normal(b, 0.5f, 2.0f, 1235);
  const std::vector<float> vb = host(b);
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) same += va[size_t(i)] == vb[size_t(i)];
  EXPECT_LT(same, 10);
}

TEST_F(BackendElementwise, FillNormalDoesNotDependOnThreadCount) {
  Tensor a = be().empty({50001});
  be().fill_normal(a, 0.0f, 1.0f, 9);
  auto single = cpu_backend(1);
  EXPECT_EQ(single->threads(), 1);
  Tensor b = single->empty({50001});
  single->fill_normal(b, 0.0f, 1.0f, 9);
  EXPECT_EQ(host(a), to_vector(*single, b));
  cpu_backend(2);  // restore the process-wide OpenMP setting for later tests
}

TEST_F(BackendElementwise, AddAxpyScaleIncludingAliasing) {
  std::vector<float> ha, hb;
  Tensor a = random({7, 13}, 2, 1.0f, &ha);
  Tensor b = random({7, 13}, 3, 1.0f, &hb);
  Tensor out = be().empty({7, 13});
  be().add(out, a, b);
  std::vector<double> want(ha.size());
  for (size_t i = 0; i < ha.size(); ++i) want[i] = double(ha[i]) + hb[i];
  expect_close(host(out), want, 1e-6, 1e-7, "add");
  be().add(a, a, b);  // out aliases a
  expect_close(host(a), want, 1e-6, 1e-7, "add aliased");
  be().axpy(b, -0.25f, a);
  for (size_t i = 0; i < ha.size(); ++i) want[i] = hb[i] - 0.25 * (double(ha[i]) + hb[i]);
  expect_close(host(b), want, 1e-6, 1e-7, "axpy");
  be().scale(b, 3.0f);
  for (double& w : want) w *= 3.0;
  expect_close(host(b), want, 1e-6, 1e-6, "scale");
  // Large enough to take the parallel path.
  std::vector<float> hx;
  Tensor x = random({300001}, 4, 1.0f, &hx);
  be().scale(x, -2.0f);
  std::vector<double> wx(hx.size());
  for (size_t i = 0; i < hx.size(); ++i) wx[i] = -2.0 * hx[i];
  expect_close(host(x), wx, 0.0, 0.0, "scale large");
}

TEST_F(BackendElementwise, ScaleRowsRowDotSumSquares) {
  std::vector<float> hx, hw, hy;
  Tensor x = random({7, 13}, 5, 1.0f, &hx);
  Tensor y = random({7, 13}, 6, 1.0f, &hy);
  Tensor w = random({7}, 7, 1.0f, &hw);
  Tensor dots = be().empty({7});
  be().row_dot(x, y, dots);
  std::vector<double> want_dot(7, 0.0), want_scaled(hx.size());
  for (int n = 0; n < 7; ++n) {
    for (int c = 0; c < 13; ++c) {
      want_dot[size_t(n)] += double(hx[size_t(n * 13 + c)]) * hy[size_t(n * 13 + c)];
      want_scaled[size_t(n * 13 + c)] = double(hx[size_t(n * 13 + c)]) * hw[size_t(n)];
    }
  }
  expect_close(host(dots), want_dot, 1e-5, 1e-6, "row_dot");
  be().scale_rows(x, w);
  expect_close(host(x), want_scaled, 1e-6, 1e-7, "scale_rows");

  std::vector<float> hz;
  Tensor z = random({1000, 37}, 8, 1.0f, &hz);
  Tensor acc = tensor_from(be(), {1.5f}, {1});
  be().sum_squares(z, acc);
  be().sum_squares(y, acc);  // accumulates
  double want = 1.5;
  for (float v : hz) want += double(v) * v;
  for (float v : hy) want += double(v) * v;
  expect_close(host(acc), {want}, 1e-6, 0.0, "sum_squares");
}

}  // namespace
}  // namespace nnkit::test
