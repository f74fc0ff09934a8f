// Purpose: backend/cpu rope: identity at position 0, inverse undoes forward, and agreement with a
// double reference at small (cached table) and very large (direct) positions; rope_kv_append
// (the decode step's fused rotation and cache append) against rope + kv_cache_append, and its
// errors; attention_decode_rope against rope_kv_append + attention_decode.
// Owned by the backend/cpu tests.
#include <cmath>
#include <string>

#include "nnkit/error.h"
#include "reference.h"

namespace nnkit::test {
namespace {

using BackendRope = CpuBackendTest;

// Runs `call`, which must throw a ShapeError whose message contains `needle`.
template <typename Fn>
void expect_shape_error(Fn&& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "expected a ShapeError containing: " << needle;
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

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

TEST_F(BackendRope, RopeKvAppendEqualsRopeThenCacheAppend) {
  const int64_t B = 3, H = 4, Hkv = 2, D = 8, cap = 6;
  const int64_t q_width = H * D, kv_width = Hkv * D, width = q_width + 2 * kv_width;
  std::vector<float> hqkv;
  Tensor qkv = random({B, width}, 83, 1.0f, &hqkv);
  const std::vector<int32_t> positions = {4, 2, 200000};
  Tensor pos = tensor_from_i32(be(), positions, {B});
  Tensor len = tensor_from_i32(be(), {4}, {1});
  Tensor k_cache = random({B * cap, kv_width}, 84);
  Tensor v_cache = random({B * cap, kv_width}, 85);
  const std::vector<float> k_before = host(k_cache), v_before = host(v_cache);
  Tensor q_out = be().empty({B, q_width});
  be().rope_kv_append(qkv, pos, H, Hkv, D, 10000.0f, k_cache, v_cache, cap, len, q_out);

  // The unfused reference: split the columns, rotate q and k, append k and v at row 4.
  std::vector<float> hq, hk, hv;
  for (int64_t b = 0; b < B; ++b) {
    const auto row = hqkv.begin() + b * width;
    hq.insert(hq.end(), row, row + q_width);
    hk.insert(hk.end(), row + q_width, row + q_width + kv_width);
    hv.insert(hv.end(), row + q_width + kv_width, row + width);
  }
  Tensor q_ref = tensor_from(be(), hq, {B, q_width});
  Tensor k_ref = tensor_from(be(), hk, {B, kv_width});
  be().rope(q_ref, pos, H, D, 10000.0f, false);
  be().rope(k_ref, pos, Hkv, D, 10000.0f, false);
  EXPECT_EQ(host(q_out), host(q_ref));
  const std::vector<float> k_rot = host(k_ref), k_after = host(k_cache), v_after = host(v_cache);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t r = 0; r < cap; ++r) {
      for (int64_t c = 0; c < kv_width; ++c) {
        const size_t at = size_t((b * cap + r) * kv_width + c);
        const float k_want = r == 4 ? k_rot[size_t(b * kv_width + c)] : k_before[at];
        const float v_want = r == 4 ? hv[size_t(b * kv_width + c)] : v_before[at];
        ASSERT_EQ(k_after[at], k_want) << "k cache row " << b * cap + r << " col " << c;
        ASSERT_EQ(v_after[at], v_want) << "v cache row " << b * cap + r << " col " << c;
      }
    }
  }
}

TEST_F(BackendRope, RopeKvAppendRefusesABadLayoutAndAFullCache) {
  const int64_t B = 2, H = 4, Hkv = 1, D = 8, cap = 3;
  Tensor pos = tensor_from_i32(be(), {0, 0}, {B});
  Tensor k_cache = be().zeros({B * cap, Hkv * D});
  Tensor v_cache = be().zeros({B * cap, Hkv * D});
  Tensor q_out = be().empty({B, H * D});
  Tensor len = tensor_from_i32(be(), {1}, {1});
  Tensor narrow = be().zeros({B, (H + Hkv) * D});  // v's columns missing
  expect_shape_error(
      [&] {
        be().rope_kv_append(narrow, pos, H, Hkv, D, 10000.0f, k_cache, v_cache, cap, len, q_out);
      },
      "(B, (H + 2 * Hkv) * D)");
  Tensor qkv = random({B, (H + 2 * Hkv) * D}, 86);
  Tensor full = tensor_from_i32(be(), {3}, {1});
  expect_shape_error(
      [&] {
        be().rope_kv_append(qkv, pos, H, Hkv, D, 10000.0f, k_cache, v_cache, cap, full, q_out);
      },
      "cannot take 1 more after 3");
  EXPECT_EQ(host(k_cache), std::vector<float>(size_t(B * cap * Hkv * D), 0.0f));
  EXPECT_EQ(host(v_cache), std::vector<float>(size_t(B * cap * Hkv * D), 0.0f));
}

TEST_F(BackendRope, AttentionDecodeRopeEqualsRopeKvAppendThenAttentionDecode) {
  // Left padding (kv_start) and GQA; the caches and the output equal the two ops exactly.
  const int64_t B = 2, H = 4, Hkv = 2, D = 8, cap = 7;
  const int64_t q_width = H * D, kv_width = Hkv * D;
  AttentionShape s;
  s.batch = B;
  s.q_len = 1;
  s.n_heads = H;
  s.n_kv_heads = Hkv;
  s.head_dim = D;
  s.kv_capacity = cap;
  s.scale = 0.35f;
  Tensor qkv = random({B, q_width + 2 * kv_width}, 87);
  Tensor pos = tensor_from_i32(be(), {5, 3}, {B});
  Tensor start = tensor_from_i32(be(), {0, 2}, {B});
  Tensor len = tensor_from_i32(be(), {5}, {1});
  Tensor kv_len = tensor_from_i32(be(), {6}, {1});
  Tensor k_cache = random({B * cap, kv_width}, 88), v_cache = random({B * cap, kv_width}, 89);
  Tensor k_ref = tensor_from(be(), host(k_cache), {B * cap, kv_width});
  Tensor v_ref = tensor_from(be(), host(v_cache), {B * cap, kv_width});
  Tensor q = be().empty({B, q_width}), want = be().empty({B, q_width});
  be().rope_kv_append(qkv, pos, H, Hkv, D, 10000.0f, k_ref, v_ref, cap, len, q);
  be().attention_decode(q, k_ref, v_ref, start, kv_len, want, s);
  Tensor got = be().empty({B, q_width});
  be().attention_decode_rope(qkv, pos, 10000.0f, k_cache, v_cache, len, start, kv_len, got, s);
  EXPECT_EQ(host(got), host(want));
  EXPECT_EQ(host(k_cache), host(k_ref));
  EXPECT_EQ(host(v_cache), host(v_ref));
  // A full cache is refused with the append's message, before anything is written.
  Tensor full = tensor_from_i32(be(), {int32_t(cap)}, {1});
  expect_shape_error(
      [&] {
        be().attention_decode_rope(qkv, pos, 10000.0f, k_cache, v_cache, full, start, full, got, s);
      },
      "cannot take 1 more");
  EXPECT_EQ(host(k_cache), host(k_ref));
}

TEST_F(BackendRope, AddRmsnormGemmEqualsAddRmsnormThenGemm) {
  const int64_t N = 3, C = 16, M = 5;
  Tensor x = random({N, C}, 90), r = random({N, C}, 91), nw = random({C}, 92);
  Tensor w = random({M, C}, 93);
  Tensor sum_ref = be().empty({N, C}), h = be().empty({N, C}), want = be().empty({N, M});
  be().add_rmsnorm(x, r, nw, 1e-5f, sum_ref, h);
  be().gemm(h, false, w, true, want);
  Tensor sum = be().empty({N, C}), got = be().empty({N, M});
  be().add_rmsnorm_gemm_nt(x, r, nw, 1e-5f, w, sum, got);
  EXPECT_EQ(host(got), host(want));
  EXPECT_EQ(host(sum), host(sum_ref));
  // A weight of the wrong width is refused by the product with its shapes.
  Tensor narrow = random({M, C - 1}, 94);
  EXPECT_THROW(be().add_rmsnorm_gemm_nt(x, r, nw, 1e-5f, narrow, sum, got), Error);
}

TEST_F(BackendRope, HostBackendsReportNoDeviceMemory) {
  EXPECT_FALSE(be().device_memory().has_value());
}

}  // namespace
}  // namespace nnkit::test
