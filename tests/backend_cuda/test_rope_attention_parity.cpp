// Purpose: backend/cuda rope (forward and inverse, positions up to 70000, odd head counts) and
// attention forward/backward (MHA, GQA, MQA, odd and large head_dim, KV-cache offsets with spare
// capacity, kv_start left padding, rows with no visible key, queries past kv_len) against
// backend/cpu on the same inputs. Owned by the backend/cuda tests.
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "backend/attention_cases.h"
#include "cuda_parity.h"

namespace nnkit::test {
namespace {

using CudaRopeParity = CudaParityTest;

struct RopeCase {
  int64_t n_heads, head_dim;
  float base;
};

TEST_F(CudaRopeParity, ForwardAndInverseMatchCpu) {
  const std::vector<int32_t> positions = {0,    1,    2,     17,    255,   256,   4000,
                                          8191, 8192, 32768, 65535, 65536, 69999, 70000};
  const int64_t N = static_cast<int64_t>(positions.size());
  for (const RopeCase& c :
       {RopeCase{3, 64, 10000.0f}, RopeCase{5, 64, 500000.0f}, RopeCase{3, 10, 10000.0f}}) {
    const std::string what = "rope H=" + std::to_string(c.n_heads) +
                             " D=" + std::to_string(c.head_dim) + " base=" + std::to_string(c.base);
    TensorPair pos = same_ints(positions, {N});
    std::vector<float> original;
    TensorPair x = same_random({N, c.n_heads * c.head_dim}, 80, 1.0f, &original);
    cpu().rope(x.cpu, pos.cpu, c.n_heads, c.head_dim, c.base, false);
    cuda().rope(x.cuda, pos.cuda, c.n_heads, c.head_dim, c.base, false);
    expect_matches_cpu(x, kRope, what + " forward");
    cpu().rope(x.cpu, pos.cpu, c.n_heads, c.head_dim, c.base, true);
    cuda().rope(x.cuda, pos.cuda, c.n_heads, c.head_dim, c.base, true);
    expect_matches_cpu(x, kRope, what + " inverse of forward");
    // The inverse undoes the forward on the CUDA side alone, too.
    expect_close_to_cpu(cuda_values(x), original, kRope, what + " inverse restores the input");
    // The inverse applied to fresh input (the backward of rope).
    TensorPair y = same_random({N, c.n_heads * c.head_dim}, 81);
    cpu().rope(y.cpu, pos.cpu, c.n_heads, c.head_dim, c.base, true);
    cuda().rope(y.cuda, pos.cuda, c.n_heads, c.head_dim, c.base, true);
    expect_matches_cpu(y, kRope, what + " inverse");
  }
}

TEST_F(CudaRopeParity, ManyRowsOfATrainingBatch) {
  const int64_t N = 2048, H = 5, D = 128;
  std::vector<int32_t> positions(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) positions[size_t(n)] = int32_t(n % 1024);  // 2 x 1024 tokens
  TensorPair pos = same_ints(positions, {N});
  TensorPair x = same_random({N, H * D}, 82);
  cpu().rope(x.cpu, pos.cpu, H, D, 10000.0f, false);
  cuda().rope(x.cuda, pos.cuda, H, D, 10000.0f, false);
  expect_matches_cpu(x, kRope, "rope 2048 rows");
}

// The backend tests' common cases, plus head dims of real models and spare cache rows holding NaN
// (rows at or past kv_len are "not in use" and must never be read).
std::vector<AttentionCase> attention_cases() {
  std::vector<AttentionCase> cases = common_attention_cases();
  cases.push_back({"gqa_head_dim_64", make_attention_shape(2, 130, 130, 130, 8, 2, 64, 0), {}});
  cases.push_back({"mqa_head_dim_128_chunked_prefill",
                   make_attention_shape(1, 65, 200, 256, 8, 1, 128, 135),
                   {}});
  cases.push_back({"decode_spare_capacity_holds_nan",
                   make_attention_shape(2, 1, 37, 64, 4, 2, 64, 36),
                   {0, 3},
                   true});
  return cases;
}

class CudaAttentionParity : public CudaParityTest,
                            public ::testing::WithParamInterface<AttentionCase> {};

TEST_P(CudaAttentionParity, ForwardAndBackwardMatchCpu) {
  const AttentionCase& c = GetParam();
  const AttentionShape& s = c.shape;
  const int64_t qrows = s.batch * s.q_len, kvrows = s.batch * s.kv_capacity;
  const int64_t kv_width = s.n_kv_heads * s.head_dim;
  std::vector<float> hk = random_values(size_t(kvrows * kv_width), 101);
  std::vector<float> hv = random_values(size_t(kvrows * kv_width), 102);
  if (c.nan_in_spare_capacity) {
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t j = s.kv_len; j < s.kv_capacity; ++j) {
        for (int64_t e = 0; e < kv_width; ++e) {
          const size_t at = size_t((b * s.kv_capacity + j) * kv_width + e);
          hk[at] = hv[at] = std::numeric_limits<float>::quiet_NaN();
        }
      }
    }
  }
  TensorPair q = same_random({qrows, s.n_heads * s.head_dim}, 100);
  TensorPair k = same_values(hk, {kvrows, kv_width});
  TensorPair v = same_values(hv, {kvrows, kv_width});
  TensorPair dout = same_random(q.cpu.shape(), 103);
  TensorPair kv_start;
  if (!c.kv_start.empty()) kv_start = same_ints(c.kv_start, {s.batch});
  TensorPair out = poisoned(q.cpu.shape()), lse = poisoned({qrows, s.n_heads});
  TensorPair dq = poisoned(q.cpu.shape()), dk = poisoned(k.cpu.shape());
  TensorPair dv = poisoned(v.cpu.shape());

  cpu().attention_forward(q.cpu, k.cpu, v.cpu, kv_start.cpu, out.cpu, lse.cpu, s);
  cuda().attention_forward(q.cuda, k.cuda, v.cuda, kv_start.cuda, out.cuda, lse.cuda, s);
  expect_matches_cpu(out, kAttentionForward, std::string(c.name) + " out");
  expect_matches_cpu(lse, kAttentionForward, std::string(c.name) + " lse");

  cpu().attention_backward(dout.cpu, q.cpu, k.cpu, v.cpu, kv_start.cpu, out.cpu, lse.cpu, dq.cpu,
                           dk.cpu, dv.cpu, s);
  cuda().attention_backward(dout.cuda, q.cuda, k.cuda, v.cuda, kv_start.cuda, out.cuda, lse.cuda,
                            dq.cuda, dk.cuda, dv.cuda, s);
  expect_matches_cpu(dq, kAttentionBackward, std::string(c.name) + " dq");
  expect_matches_cpu(dk, kAttentionBackward, std::string(c.name) + " dk");
  expect_matches_cpu(dv, kAttentionBackward, std::string(c.name) + " dv");
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttentionParity, ::testing::ValuesIn(attention_cases()),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace nnkit::test
