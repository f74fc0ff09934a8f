// Purpose: backend/cpu rope: identity at position 0, inverse undoes forward, and agreement with a
// double reference at small (cached table) and very large (direct) positions.
// Owned by the backend/cpu tests.
#include <cmath>

#include "reference.h"

namespace nnkit::test {
namespace {

using BackendRope = CpuBackendTest;

std::vector<double> rope_reference(const std::vector<float>& x, const std::vector<int32_t>& pos,
                                   int64_t H, int64_t D, double base, bool inverse) {
  std::vector<double> y(x.begin(), x.end());
  const int64_t half = D / 2;
  for (size_t n = 0; n < pos.size(); ++n) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = (inverse ? -1.0 : 1.0) * double(pos[n]) * std::pow(base, -2.0 * i / D);
        const size_t a = n * size_t(H * D) + size_t(h * D + i), b = a + size_t(half);
        y[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
        y[b] = x[b] * std::cos(angle) + x[a] * std::sin(angle);
      }
    }
  }
  return y;
}

TEST_F(BackendRope, PositionZeroIsIdentity) {
  std::vector<float> hx;
  Tensor x = random({5, 3 * 8}, 80, 1.0f, &hx);
  Tensor pos = tensor_from_i32(be(), std::vector<int32_t>(5, 0), {5});
  be().rope(x, pos, 3, 8, 10000.0f, false);
  EXPECT_EQ(host(x), hx);
}

TEST_F(BackendRope, MatchesReferenceAndInverseUndoes) {
  const int64_t H = 3, D = 10;
  std::vector<float> hx;
  Tensor x = random({7, H * D}, 81, 1.0f, &hx);
  const std::vector<int32_t> positions = {0, 1, 2, 17, 255, 256, 4000};
  Tensor pos = tensor_from_i32(be(), positions, {7});
  be().rope(x, pos, H, D, 10000.0f, false);
  expect_close(host(x), rope_reference(hx, positions, H, D, 10000.0, false), 1e-5, 1e-6, "rope");
  be().rope(x, pos, H, D, 10000.0f, true);
  expect_close(host(x), to_double(hx), 1e-5, 1e-6, "rope inverse");
}

TEST_F(BackendRope, LargePositionsStayAccurate) {
  const int64_t H = 2, D = 64;
  std::vector<float> hx;
  Tensor x = random({6, H * D}, 82, 1.0f, &hx);
  // Past the cached table (direct path) and inside it, in one call and separately.
  const std::vector<int32_t> positions = {262143, 200000, 131071, 65536, 70000, 3};
  Tensor pos = tensor_from_i32(be(), positions, {6});
  be().rope(x, pos, H, D, 500000.0f, false);
  expect_close(host(x), rope_reference(hx, positions, H, D, 500000.0, false), 1e-5, 2e-6,
               "rope large positions");
  be().rope(x, pos, H, D, 500000.0f, true);
  expect_close(host(x), to_double(hx), 1e-5, 2e-6, "rope large positions inverse");
}

}  // namespace
}  // namespace nnkit::test
