// Purpose: the device-length decode ops on CUDA against the CPU backend: kv_cache_append (and its
// full-cache fault), attention_decode for short and long (multi-chunk) caches with left padding,
// MQA and GQA, in f32 and bf16, and moe_grouped_gemm_nt / moe_grouped_swiglu_nt (experts with
// 0..capacity rows, padding rows zeroed). Owned by the backend/cuda tests; every test skips without
// a CUDA device.
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "nnkit/error.h"

namespace nnkit::test {
namespace {

using CudaDecode = CudaParityTest;

TEST_F(CudaDecode, KvCacheAppendWritesAtTheDeviceLengthAndFaultsWhenFull) {
  const int64_t B = 3, cap = 9, W = 20;
  TensorPair cache = same_random({B * cap, W}, 800);
  TensorPair rows = same_random({B * 2, W}, 801);
  TensorPair len = same_ints({4}, {1});
  cpu().kv_cache_append(cache.cpu, rows.cpu, B, cap, len.cpu);
  cuda().kv_cache_append(cache.cuda, rows.cuda, B, cap, len.cuda);
  expect_matches_cpu(cache, kExact, "cache after append at 4");
  // 8 + 2 rows do not fit 9: nothing is written and the next synchronisation says why.
  TensorPair full = same_ints({8}, {1});
  const std::vector<float> before = cuda_values(cache);
  cuda().kv_cache_append(cache.cuda, rows.cuda, B, cap, full.cuda);
  try {
    cuda().synchronize();
    FAIL() << "expected the full cache to be reported";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("kv_cache_append"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("KV cache is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cuda_values(cache), before);
}

TEST_F(CudaDecode, AttentionDecodeMatchesTheCpu) {
  struct Case {
    int64_t batch, heads, kv_heads, dim, capacity, kv_len;
    bool padded;
  };
  // One chunk, several chunks (long cache, most of it unused), GQA, and a long full cache.
  for (const Case& c : {Case{1, 12, 1, 64, 40, 17, false}, Case{3, 12, 1, 64, 1000, 700, true},
                        Case{2, 8, 2, 32, 300, 300, true}, Case{1, 12, 1, 64, 5000, 4999, false}}) {
    const std::string what = "B " + std::to_string(c.batch) + " cap " + std::to_string(c.capacity) +
                             " len " + std::to_string(c.kv_len);
    AttentionShape s;
    s.batch = c.batch;
    s.q_len = 1;
    s.n_heads = c.heads;
    s.n_kv_heads = c.kv_heads;
    s.head_dim = c.dim;
    s.kv_capacity = c.capacity;
    s.scale = 0.125f;
    std::vector<int32_t> starts;
    for (int64_t b = 0; b < c.batch; ++b) starts.push_back(c.padded ? int32_t(b * 3) : 0);
    TensorPair kv_start = same_ints(starts, {c.batch});
    TensorPair kv_len = same_ints({int32_t(c.kv_len)}, {1});
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      TensorPair q = same_rounded_random({c.batch, c.heads * c.dim}, 810, dtype, 2.0f);
      TensorPair k = same_rounded_random({c.batch * c.capacity, c.kv_heads * c.dim}, 811, dtype);
      TensorPair v = same_rounded_random({c.batch * c.capacity, c.kv_heads * c.dim}, 812, dtype);
      TensorPair out = poisoned({c.batch, c.heads * c.dim}, dtype);
      const Tensor ks_cpu = c.padded ? kv_start.cpu : Tensor();
      const Tensor ks_cuda = c.padded ? kv_start.cuda : Tensor();
      cpu().attention_decode(q.cpu, k.cpu, v.cpu, ks_cpu, kv_len.cpu, out.cpu, s);
      cuda().attention_decode(q.cuda, k.cuda, v.cuda, ks_cuda, kv_len.cuda, out.cuda, s);
      expect_rounded_matches_cpu(out, rounded_once(kAttentionForward, dtype),
                                 what + " " + dtype_name(dtype));
      if (::testing::Test::HasFailure()) return;
    }
  }
}

TEST_F(CudaDecode, AttentionDecodeEqualsTheCachedAttentionForward) {
  // The new op and the existing cached attention_forward (q_len 1) give the same output.
  AttentionShape s;
  s.batch = 2;
  s.q_len = 1;
  s.n_heads = 12;
  s.n_kv_heads = 1;
  s.head_dim = 64;
  s.kv_capacity = 600;
  s.kv_len = 333;
  s.q_offset = 332;
  s.scale = 0.125f;
  TensorPair q = same_random({2, 12 * 64}, 820);
  TensorPair k = same_random({2 * 600, 64}, 821);
  TensorPair v = same_random({2 * 600, 64}, 822);
  TensorPair kv_len = same_ints({333}, {1});
  Tensor out_decode = cuda().empty({2, 12 * 64});
  Tensor out_forward = cuda().empty({2, 12 * 64});
  Tensor lse = cuda().empty({2, 12});
  cuda().attention_decode(q.cuda, k.cuda, v.cuda, Tensor(), kv_len.cuda, out_decode, s);
  cuda().attention_forward(q.cuda, k.cuda, v.cuda, Tensor(), out_forward, lse, s);
  expect_close_to_cpu(to_vector(cuda(), out_decode), to_vector(cuda(), out_forward),
                      kAttentionForward, "decode vs forward");
}

TEST_F(CudaDecode, GroupedExpertProductMatchesTheCpuAndSkipsEmptyExperts) {
  const int64_t E = 16, K = 768, N = 300;
  for (int64_t capacity : {int64_t(1), int64_t(3), int64_t(8), int64_t(16)}) {
    // Kept rows per expert: 0, capacity, and in between.
    std::vector<int32_t> offsets{0};
    for (int64_t e = 0; e < E; ++e)
      offsets.push_back(offsets.back() + int32_t((e * 7) % (capacity + 1)));
    TensorPair kept = same_ints(offsets, {E + 1});
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const std::string what = "capacity " + std::to_string(capacity) + " " + dtype_name(dtype);
      TensorPair x = same_rounded_random({E * capacity, K}, 830 + uint64_t(capacity), dtype);
      std::vector<Tensor> w_cpu, w_cuda;
      for (int64_t e = 0; e < E; ++e) {
        TensorPair w = same_rounded_random({N, K}, 900 + uint64_t(e), dtype, 0.05f);
        w_cpu.push_back(w.cpu);
        w_cuda.push_back(w.cuda);
      }
      TensorPair y = poisoned({E * capacity, N}, dtype);
      cpu().moe_grouped_gemm_nt(x.cpu, w_cpu, kept.cpu, capacity, y.cpu);
      cuda().moe_grouped_gemm_nt(x.cuda, w_cuda, kept.cuda, capacity, y.cuda);
      expect_rounded_matches_cpu(y, rounded_once(Tolerance{2e-5, 2e-5}, dtype), what);
      // The fused SwiGLU of two grouped products (the up weights: the gate weights reversed).
      const std::vector<Tensor> up_cpu(w_cpu.rbegin(), w_cpu.rend());
      const std::vector<Tensor> up_cuda(w_cuda.rbegin(), w_cuda.rend());
      TensorPair a = poisoned({E * capacity, N}, dtype);
      cpu().moe_grouped_swiglu_nt(x.cpu, w_cpu, up_cpu, kept.cpu, capacity, a.cpu);
      cuda().moe_grouped_swiglu_nt(x.cuda, w_cuda, up_cuda, kept.cuda, capacity, a.cuda);
      expect_rounded_matches_cpu(a, rounded_once(Tolerance{4e-5, 2e-5}, dtype), what + " swiglu");
      if (::testing::Test::HasFailure()) return;
    }
  }
}

}  // namespace
}  // namespace nnkit::test
