// Purpose: the device-length decode ops on CUDA against the CPU backend: kv_cache_append (and its
// full-cache fault), rope_kv_append (== rope + kv_cache_append on the device, bit for bit),
// attention_decode_rope (== rope_kv_append + attention_decode on the device, bit for bit),
// attention_decode for short (resident in shared memory) and long (multi-span, up to its most
// spans) caches with left padding, MQA and GQA, large batches, in f32, bf16 and (short caches)
// f16, repeating bit for bit (its arrival
// counters reset), device_memory, add_rmsnorm (== add + rmsnorm_forward), moe_combine_rows (== fill
// + gather + scatter_add_rows), and moe_grouped_gemm_nt / moe_grouped_swiglu_nt (experts with
// 0..capacity rows, padding rows zeroed), moe_swiglu_experts_padded (the whole expert block of a
// decode step against the CPU's composition and bit for bit CUDA's own: batch 1 and 8, ragged
// ffn, two row tiles, drops, the composition's shapes; repeating bit for bit). Owned by the
// backend/cuda tests; every test skips without a CUDA device.
#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "nnkit/error.h"

namespace nnkit::test {
namespace {

class CudaDecode : public CudaParityTest {
 protected:
  // Both grouped ops on E experts of (N, K) weights at several capacities and dtypes vs the CPU.
  void GroupedExpertCase(int64_t E, int64_t K, int64_t N);
};

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
  // One span, several spans (long cache, most of it unused), GQA, and a long full cache.
  // Then the most spans a sequence gets (a 40K cache at batch 1), a batch of 40 sequences, a
  // head_dim of 128 (another tile), one not a multiple of 4 (the combine's scalar path) and one
  // of 200.
  for (const Case& c :
       {Case{1, 12, 1, 64, 40, 17, false}, Case{3, 12, 1, 64, 1000, 700, true},
        Case{2, 8, 2, 32, 300, 300, true}, Case{1, 12, 1, 64, 5000, 4999, false},
        Case{1, 12, 1, 64, 40000, 39000, false}, Case{40, 12, 1, 64, 300, 250, true},
        Case{2, 20, 2, 128, 700, 650, true}, Case{2, 4, 1, 6, 500, 480, false},
        // head_dim 200 (the 256 bucket: 8-key tiles, a thread a score).
        Case{1, 4, 1, 200, 600, 590, false},
        // One span (caches up to 256 keys): the 6.9B bench's shape (17 + 128 tokens), the
        // longest one-span cache at batch 8, the first split one, and more (sequence, heads)
        // pairs than arrival counters (one span needs no combine launch).
        Case{1, 12, 1, 64, 145, 140, false}, Case{8, 12, 1, 64, 256, 256, true},
        Case{2, 12, 1, 64, 257, 200, true}, Case{1400, 12, 1, 64, 20, 19, false},
        // The resident kernel (16-bit caches of up to 256 keys): head_dim 128 with GQA, four
        // heads a block (more sequences x heads than twice the multiprocessors), a last head
        // tile of two, and sequences whose padding covers every key (a zero output).
        Case{3, 8, 2, 128, 100, 37, true}, Case{40, 12, 1, 64, 200, 150, true},
        Case{60, 6, 1, 64, 50, 50, false}, Case{4, 12, 1, 64, 16, 7, true}}) {
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
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      if (dtype == DType::kF16 && c.capacity > 256) continue;  // f16: the resident kernel's
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
      // A second call (as every replayed step is) gives the same bits: the last block of each
      // group reset its arrival counter.
      const std::vector<float> first = cuda_floats(out.cuda);
      cuda().attention_decode(q.cuda, k.cuda, v.cuda, ks_cuda, kv_len.cuda, out.cuda, s);
      EXPECT_EQ(float_bits(cuda_floats(out.cuda)), float_bits(first)) << what << " repeated";
      if (::testing::Test::HasFailure()) return;
    }
  }
}

TEST_F(CudaDecode, RopeKvAppendEqualsRopeThenCacheAppendOnTheDevice) {
  const int64_t B = 3, cap = 10;
  struct Case {
    int64_t heads, kv_heads, dim;
  };
  for (const Case& c : {Case{12, 1, 64}, Case{8, 2, 32}}) {
    const int64_t q_width = c.heads * c.dim, kv_width = c.kv_heads * c.dim;
    const int64_t width = q_width + 2 * kv_width;
    TensorPair pos = same_ints({5, 0, 200000}, {B});
    TensorPair len = same_ints({7}, {1});
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const std::string what = "H " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
                               " " + dtype_name(dtype);
      TensorPair qkv = same_rounded_random({B, width}, 840, dtype);
      TensorPair k_cache = same_rounded_random({B * cap, kv_width}, 841, dtype);
      TensorPair v_cache = same_rounded_random({B * cap, kv_width}, 842, dtype);
      // The unfused path on the device: column blocks copied out row by row, rope, append.
      Tensor q_ref = cuda().empty({B, q_width}, dtype);
      Tensor k_ref = cuda().empty({B, kv_width}, dtype);
      Tensor v_ref = cuda().empty({B, kv_width}, dtype);
      Tensor k_cache_ref = cuda().empty(k_cache.cuda.shape(), dtype);
      Tensor v_cache_ref = cuda().empty(v_cache.cuda.shape(), dtype);
      cuda().copy(k_cache_ref, k_cache.cuda);
      cuda().copy(v_cache_ref, v_cache.cuda);
      for (int64_t b = 0; b < B; ++b) {
        const Tensor row = qkv.cuda.slice_rows(b, b + 1).view({width});
        cuda().copy(q_ref.slice_rows(b, b + 1).view({q_width}),
                    row.view({width / c.dim, c.dim}).slice_rows(0, c.heads).view({q_width}));
        cuda().copy(k_ref.slice_rows(b, b + 1).view({kv_width}),
                    row.view({width / c.dim, c.dim})
                        .slice_rows(c.heads, c.heads + c.kv_heads)
                        .view({kv_width}));
        cuda().copy(v_ref.slice_rows(b, b + 1).view({kv_width}),
                    row.view({width / c.dim, c.dim})
                        .slice_rows(c.heads + c.kv_heads, c.heads + 2 * c.kv_heads)
                        .view({kv_width}));
      }
      cuda().rope(q_ref, pos.cuda, c.heads, c.dim, 10000.0f, false);
      cuda().rope(k_ref, pos.cuda, c.kv_heads, c.dim, 10000.0f, false);
      cuda().kv_cache_append(k_cache_ref, k_ref, B, cap, len.cuda);
      cuda().kv_cache_append(v_cache_ref, v_ref, B, cap, len.cuda);

      TensorPair q_out = poisoned({B, q_width}, dtype);
      cpu().rope_kv_append(qkv.cpu, pos.cpu, c.heads, c.kv_heads, c.dim, 10000.0f, k_cache.cpu,
                           v_cache.cpu, cap, len.cpu, q_out.cpu);
      cuda().rope_kv_append(qkv.cuda, pos.cuda, c.heads, c.kv_heads, c.dim, 10000.0f, k_cache.cuda,
                            v_cache.cuda, cap, len.cuda, q_out.cuda);
      EXPECT_EQ(float_bits(cuda_floats(q_out.cuda)), float_bits(cuda_floats(q_ref))) << what;
      EXPECT_EQ(float_bits(cuda_floats(k_cache.cuda)), float_bits(cuda_floats(k_cache_ref)))
          << what;
      EXPECT_EQ(float_bits(cuda_floats(v_cache.cuda)), float_bits(cuda_floats(v_cache_ref)))
          << what;
      expect_rounded_matches_cpu(q_out, rounded_once(kRope, dtype), what + " q vs cpu");
      expect_rounded_matches_cpu(k_cache, rounded_once(kRope, dtype), what + " k cache vs cpu");
      if (::testing::Test::HasFailure()) return;
    }
  }
  // A full cache: nothing is appended and the next synchronisation says why.
  TensorPair qkv = same_random({B, 14 * 64}, 843);
  TensorPair k_cache = same_random({B * cap, 64}, 844);
  TensorPair v_cache = same_random({B * cap, 64}, 845);
  TensorPair pos = same_ints({1, 1, 1}, {B});
  TensorPair full = same_ints({int32_t(cap)}, {1});
  Tensor q_out = cuda().empty({B, 12 * 64});
  const std::vector<float> before = cuda_values(k_cache);
  cuda().rope_kv_append(qkv.cuda, pos.cuda, 12, 1, 64, 10000.0f, k_cache.cuda, v_cache.cuda, cap,
                        full.cuda, q_out);
  try {
    cuda().synchronize();
    FAIL() << "expected the full cache to be reported";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cuda_values(k_cache), before);
}

TEST_F(CudaDecode, AttentionDecodeRopeEqualsRopeKvAppendThenAttentionDecode) {
  // The fused op (backend/cuda: the resident attention rotating and appending itself) against
  // the two ops on the device, bit for bit, in the output and both caches: batch 1 of the 6.9B
  // model's 12/1 heads at a 145-key cache (one head a block), batch 8 (several heads a block),
  // GQA, head_dim 128, left padding, f16, a cache whose last row is the append, a tiny cache, and
  // a long one (over the one-span limit: the two ops, so the same by construction).
  struct Case {
    int64_t batch, heads, kv_heads, dim, capacity, cache_len;
    bool padded;
    DType dtype;
  };
  const Case cases[] = {
      {1, 12, 1, 64, 145, 20, false, DType::kBF16}, {8, 12, 1, 64, 145, 100, true, DType::kBF16},
      {3, 8, 2, 128, 64, 63, false, DType::kBF16},  {40, 16, 4, 64, 32, 5, true, DType::kF16},
      {2, 4, 1, 64, 1, 0, false, DType::kBF16},     {2, 12, 1, 64, 700, 400, true, DType::kBF16}};
  for (const Case& c : cases) {
    const std::string what = "B " + std::to_string(c.batch) + " H " + std::to_string(c.heads) +
                             "/" + std::to_string(c.kv_heads) + " D " + std::to_string(c.dim) +
                             " cap " + std::to_string(c.capacity) + " len " +
                             std::to_string(c.cache_len) + " " + dtype_name(c.dtype);
    const int64_t B = c.batch, q_width = c.heads * c.dim, kv_width = c.kv_heads * c.dim;
    AttentionShape s;
    s.batch = B;
    s.q_len = 1;
    s.n_heads = c.heads;
    s.n_kv_heads = c.kv_heads;
    s.head_dim = c.dim;
    s.kv_capacity = c.capacity;
    s.scale = 1.0f / std::sqrt(float(c.dim));
    TensorPair qkv = same_rounded_random({B, q_width + 2 * kv_width}, 870, c.dtype);
    std::vector<int32_t> positions, starts;
    for (int64_t b = 0; b < B; ++b) {
      positions.push_back(int32_t(c.cache_len + 3 * b));
      starts.push_back(c.padded ? int32_t(b % 3) : 0);
    }
    TensorPair pos = same_ints(positions, {B});
    TensorPair start = same_ints(starts, {B});
    TensorPair cache_len = same_ints({int32_t(c.cache_len)}, {1});
    TensorPair kv_len = same_ints({int32_t(c.cache_len + 1)}, {1});
    TensorPair k_cache = same_rounded_random({B * c.capacity, kv_width}, 871, c.dtype);
    TensorPair v_cache = same_rounded_random({B * c.capacity, kv_width}, 872, c.dtype);
    Tensor k_ref = cuda().empty(k_cache.cuda.shape(), c.dtype);
    Tensor v_ref = cuda().empty(v_cache.cuda.shape(), c.dtype);
    cuda().copy(k_ref, k_cache.cuda);
    cuda().copy(v_ref, v_cache.cuda);
    const Tensor kv_start = c.padded ? start.cuda : Tensor();
    Tensor q = cuda().empty({B, q_width}, c.dtype);
    cuda().rope_kv_append(qkv.cuda, pos.cuda, c.heads, c.kv_heads, c.dim, 10000.0f, k_ref, v_ref,
                          c.capacity, cache_len.cuda, q);
    Tensor want = cuda().empty({B, q_width}, c.dtype);
    cuda().attention_decode(q, k_ref, v_ref, kv_start, kv_len.cuda, want, s);
    TensorPair got = poisoned({B, q_width}, c.dtype);
    cuda().attention_decode_rope(qkv.cuda, pos.cuda, 10000.0f, k_cache.cuda, v_cache.cuda,
                                 cache_len.cuda, kv_start, kv_len.cuda, got.cuda, s);
    EXPECT_EQ(float_bits(cuda_floats(got.cuda)), float_bits(cuda_floats(want))) << what;
    EXPECT_EQ(float_bits(cuda_floats(k_cache.cuda)), float_bits(cuda_floats(k_ref))) << what;
    EXPECT_EQ(float_bits(cuda_floats(v_cache.cuda)), float_bits(cuda_floats(v_ref))) << what;
    if (::testing::Test::HasFailure()) return;
  }
  // A full cache: nothing is appended and the next synchronisation says why.
  AttentionShape s;
  s.batch = 2;
  s.q_len = 1;
  s.n_heads = 12;
  s.n_kv_heads = 1;
  s.head_dim = 64;
  s.kv_capacity = 16;
  s.scale = 0.125f;
  TensorPair qkv = same_rounded_random({2, 14 * 64}, 873, DType::kBF16);
  TensorPair k_cache = same_rounded_random({2 * 16, 64}, 874, DType::kBF16);
  TensorPair v_cache = same_rounded_random({2 * 16, 64}, 875, DType::kBF16);
  TensorPair pos = same_ints({3, 3}, {2});
  TensorPair full = same_ints({16}, {1});
  Tensor out = cuda().empty({2, 12 * 64}, DType::kBF16);
  const std::vector<float> before = cuda_floats(k_cache.cuda);
  cuda().attention_decode_rope(qkv.cuda, pos.cuda, 10000.0f, k_cache.cuda, v_cache.cuda, full.cuda,
                               Tensor(), full.cuda, out, s);
  try {
    cuda().synchronize();
    FAIL() << "expected the full cache to be reported";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cuda_floats(k_cache.cuda), before);
}

TEST_F(CudaDecode, DeviceMemoryIsReportedAndShrinksWhenAllocating) {
  const std::optional<DeviceMemory> before = cuda().device_memory();
  ASSERT_TRUE(before.has_value());
  EXPECT_GT(before->total, 0);
  EXPECT_GT(before->free, 0);
  EXPECT_LE(before->free, before->total);
  // 1 GiB held by a live tensor is no longer free (the block cache cannot hand it out).
  Tensor big = cuda().empty({int64_t{1} << 28});
  const std::optional<DeviceMemory> after = cuda().device_memory();
  ASSERT_TRUE(after.has_value());
  EXPECT_LE(after->free, before->free - (int64_t{1} << 30) + (int64_t{64} << 20));
}

TEST_F(CudaDecode, MoeCombineRowsEqualsFillGatherAndScatterBitForBit) {
  // A decode step's padded layout: 16 experts x capacity 3 rows, 3 tokens x top-4 slots.
  const int64_t T = 3, k = 4, E = 16, cap = 3, C = 768;
  std::vector<int32_t> token(size_t(E * cap), -1), slot(size_t(E * cap), -1);
  for (int64_t s = 0; s < T * k; ++s) {
    const int64_t e = (s * 5) % E, row = e * cap + (s / E);
    token[size_t(row)] = int32_t(s / k);
    slot[size_t(row)] = int32_t(s);
  }
  TensorPair tok = same_ints(token, {E * cap});
  TensorPair sl = same_ints(slot, {E * cap});
  TensorPair gate = same_random({T * k}, 850);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    TensorPair src = same_rounded_random({E * cap, C}, 851, dtype);
    TensorPair dst = poisoned({T, C}, dtype);
    cpu().moe_combine_rows(src.cpu, tok.cpu, sl.cpu, gate.cpu, dst.cpu);
    cuda().moe_combine_rows(src.cuda, tok.cuda, sl.cuda, gate.cuda, dst.cuda);
    expect_rounded_matches_cpu(dst, rounded_once(kMultiplyAdd, dtype),
                               std::string("combine ") + dtype_name(dtype));
    Tensor ref = cuda().zeros({T, C}, dtype);
    Tensor weights = cuda().empty({E * cap, 1});
    cuda().gather_rows(gate.cuda.view({T * k, 1}), sl.cuda, weights);
    cuda().scatter_add_rows(src.cuda, tok.cuda, weights.view({E * cap}), ref);
    EXPECT_EQ(float_bits(cuda_floats(dst.cuda)), float_bits(cuda_floats(ref))) << dtype_name(dtype);
  }
}

TEST_F(CudaDecode, AddRmsnormMatchesTheCpuAndAddThenRmsnormOnTheDevice) {
  // 2056 columns: past the packs a bf16 lane keeps in registers (and f32 past 128).
  for (const Shape& shape : {Shape{1, 768}, Shape{8, 768}, Shape{5, 100}, Shape{3, 2056}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const std::string what = to_string(shape) + " " + dtype_name(dtype);
      TensorPair x = same_rounded_random(shape, 860, dtype);
      TensorPair r = same_rounded_random(shape, 861, dtype);
      TensorPair w = same_random({shape[1]}, 862);
      TensorPair sum = poisoned(shape, dtype);
      TensorPair y = poisoned(shape, dtype);
      cpu().add_rmsnorm(x.cpu, r.cpu, w.cpu, 1e-5f, sum.cpu, y.cpu);
      cuda().add_rmsnorm(x.cuda, r.cuda, w.cuda, 1e-5f, sum.cuda, y.cuda);
      expect_rounded_matches_cpu(sum, rounded_once(kMultiplyAdd, dtype), what + " sum");
      // The CPU keeps the sum in f32 while CUDA rounds it to the dtype first (as add() does):
      // the CPU's norm of CUDA's rounded sum is y's reference (then y is rounded once).
      TensorPair y_of_sum{cpu().empty(shape), y.cuda};
      cpu().rmsnorm_forward(tensor_from(cpu(), cuda_floats(sum.cuda), shape), w.cpu, 1e-5f,
                            y_of_sum.cpu, cpu().empty({shape[0]}));
      expect_rounded_matches_cpu(y_of_sum, rounded_once(kReduction, dtype), what + " y");
      Tensor sum_ref = cuda().empty(shape, dtype), y_ref = cuda().empty(shape, dtype);
      Tensor rstd = cuda().empty({shape[0]});
      cuda().add(sum_ref, x.cuda, r.cuda);
      cuda().rmsnorm_forward(sum_ref, w.cuda, 1e-5f, y_ref, rstd);
      EXPECT_EQ(float_bits(cuda_floats(sum.cuda)), float_bits(cuda_floats(sum_ref))) << what;
      // bf16 runs the same warp kernel as rmsnorm_forward (f32 rmsnorm_forward uses a block
      // per row, whose double sum of squares may round differently in its last bit).
      if (dtype == DType::kBF16) {
        EXPECT_EQ(float_bits(cuda_floats(y.cuda)), float_bits(cuda_floats(y_ref))) << what;
      } else {
        expect_close_to_cpu(cuda_floats(y.cuda), cuda_floats(y_ref), kMultiplyAdd, what);
      }
    }
  }
}

TEST_F(CudaDecode, AddRmsnormGemmEqualsAddRmsnormThenGemmBitForBit) {
  // The fused norm + product (batch 1 and 8 of the 6.9B model's qkv; 2 and 16 rows; an f32
  // norm weight and one in the dtype; f16) against the two ops on the device, and the shapes
  // the fused kernel does not take (3 rows, 1032 columns, f32) through the same op.
  struct Case {
    int64_t rows, cols, outputs;
    DType dtype;
    bool f32_weight;
  };
  const Case cases[] = {{1, 768, 896, DType::kBF16, true},  {8, 768, 896, DType::kBF16, true},
                        {2, 512, 100, DType::kBF16, false}, {16, 1024, 64, DType::kF16, true},
                        {3, 768, 96, DType::kBF16, true},   {1, 1032, 40, DType::kBF16, true},
                        {4, 96, 24, DType::kF32, true}};
  for (const Case& c : cases) {
    const std::string what = std::to_string(c.rows) + " x " + std::to_string(c.cols) + " -> " +
                             std::to_string(c.outputs) + " " + dtype_name(c.dtype);
    TensorPair x = same_rounded_random({c.rows, c.cols}, 880, c.dtype);
    TensorPair r = same_rounded_random({c.rows, c.cols}, 881, c.dtype);
    TensorPair nw = same_rounded_random({c.cols}, 882, c.f32_weight ? DType::kF32 : c.dtype);
    TensorPair w = same_rounded_random({c.outputs, c.cols}, 883, c.dtype, 0.05f);
    Tensor sum_ref = cuda().empty({c.rows, c.cols}, c.dtype);
    Tensor h = cuda().empty({c.rows, c.cols}, c.dtype);
    Tensor want = cuda().empty({c.rows, c.outputs}, c.dtype);
    cuda().add_rmsnorm(x.cuda, r.cuda, nw.cuda, 1e-5f, sum_ref, h);
    cuda().gemm(h, false, w.cuda, true, want);
    TensorPair sum = poisoned({c.rows, c.cols}, c.dtype);
    TensorPair got = poisoned({c.rows, c.outputs}, c.dtype);
    cuda().add_rmsnorm_gemm_nt(x.cuda, r.cuda, nw.cuda, 1e-5f, w.cuda, sum.cuda, got.cuda);
    EXPECT_EQ(float_bits(cuda_floats(got.cuda)), float_bits(cuda_floats(want))) << what;
    EXPECT_EQ(float_bits(cuda_floats(sum.cuda)), float_bits(cuda_floats(sum_ref))) << what;
    if (::testing::Test::HasFailure()) return;
  }
}

TEST_F(CudaDecode, AddRmsnormMoeRoutePaddedEqualsAddRmsnormThenMoeRoutePaddedBitForBit) {
  // The norm folded into the one-block router (batch 1 and 8 of the 6.9B model; 3 rows of 64
  // experts in f16 with a weight in the dtype; 16 rows of 1024 columns, more rows than norm
  // warps) against the two ops on the device, and shapes the fold does not take (1032 columns,
  // f32) through the same op.
  struct Case {
    int64_t n, experts, cols, top_k;
    bool renormalize;
    int64_t capacity;
    DType dtype;
    bool f32_weight;
  };
  const Case cases[] = {
      {1, 16, 768, 4, true, 1, DType::kBF16, true},  {8, 16, 768, 4, true, 8, DType::kBF16, true},
      {3, 64, 256, 8, false, 2, DType::kF16, false}, {16, 8, 1024, 2, true, 4, DType::kBF16, true},
      {2, 16, 1032, 4, true, 2, DType::kBF16, true}, {4, 16, 96, 4, true, 4, DType::kF32, true}};
  const auto ints = [&](const Tensor& t) {
    std::vector<int32_t> values(static_cast<size_t>(t.numel()));
    cuda().copy_to_host(values.data(), t);
    return values;
  };
  for (const Case& c : cases) {
    const std::string what = "N " + std::to_string(c.n) + " E " + std::to_string(c.experts) +
                             " C " + std::to_string(c.cols) + " k " + std::to_string(c.top_k) +
                             " " + dtype_name(c.dtype);
    TensorPair x = same_rounded_random({c.n, c.cols}, 1400 + uint64_t(c.n), c.dtype);
    TensorPair r = same_rounded_random({c.n, c.cols}, 1401 + uint64_t(c.n), c.dtype);
    TensorPair nw = same_rounded_random({c.cols}, 1402, c.f32_weight ? DType::kF32 : c.dtype);
    TensorPair w = same_rounded_random({c.experts, c.cols}, 1403, c.dtype, 0.05f);
    const int64_t rows = c.experts * c.capacity;
    struct Outputs {
      Tensor sum, normed, index, gate, token, slot, offsets, load;
    };
    const auto outputs = [&] {
      Outputs o;
      o.sum = cuda().empty({c.n, c.cols}, c.dtype);
      o.normed = cuda().empty({c.n, c.cols}, c.dtype);
      o.index = cuda().empty({c.n, c.top_k}, DType::kI32);
      o.gate = cuda().empty({c.n, c.top_k});
      o.token = cuda().empty({rows}, DType::kI32);
      o.slot = cuda().empty({rows}, DType::kI32);
      o.offsets = cuda().empty({c.experts + 1}, DType::kI32);
      o.load = cuda().empty({c.experts});
      return o;
    };
    Outputs want = outputs(), got = outputs();
    cuda().add_rmsnorm(x.cuda, r.cuda, nw.cuda, 1e-5f, want.sum, want.normed);
    cuda().moe_route_padded(want.normed, w.cuda, c.top_k, c.renormalize, c.capacity, want.index,
                            want.gate, want.token, want.slot, want.offsets, want.load);
    cuda().add_rmsnorm_moe_route_padded(x.cuda, r.cuda, nw.cuda, 1e-5f, got.sum, got.normed, w.cuda,
                                        c.top_k, c.renormalize, c.capacity, got.index, got.gate,
                                        got.token, got.slot, got.offsets, got.load);
    EXPECT_EQ(float_bits(cuda_floats(got.sum)), float_bits(cuda_floats(want.sum))) << what;
    EXPECT_EQ(float_bits(cuda_floats(got.normed)), float_bits(cuda_floats(want.normed))) << what;
    EXPECT_EQ(float_bits(cuda_floats(got.gate)), float_bits(cuda_floats(want.gate))) << what;
    EXPECT_EQ(float_bits(cuda_floats(got.load)), float_bits(cuda_floats(want.load))) << what;
    EXPECT_EQ(ints(got.index), ints(want.index)) << what;
    EXPECT_EQ(ints(got.token), ints(want.token)) << what;
    EXPECT_EQ(ints(got.slot), ints(want.slot)) << what;
    EXPECT_EQ(ints(got.offsets), ints(want.offsets)) << what;
    if (::testing::Test::HasFailure()) return;
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
  // N = 300: the CUDA-core kernel; the others (16-bit, k % 32 == 0, n % 8 == 0) take the
  // tensor-core kernel with each k split: K = 256 none, 768 two warps (gate/up), 2048 eight
  // (down); capacity 16 uses its second row tile.
  const int64_t E = 16;
  for (auto [K, N] : {std::pair<int64_t, int64_t>{768, 300}, {768, 304}, {2048, 64}, {256, 24}}) {
    GroupedExpertCase(E, K, N);
    if (::testing::Test::HasFailure()) return;
  }
}

TEST_F(CudaDecode, GroupedTensorCoreProductRepeatsBitForBit) {
  const int64_t E = 16, K = 2048, N = 64, capacity = 16;
  std::vector<int32_t> offsets{0};
  for (int64_t e = 0; e < E; ++e) offsets.push_back(offsets.back() + int32_t((e * 5) % 17));
  TensorPair kept = same_ints(offsets, {E + 1});
  TensorPair x = same_rounded_random({E * capacity, K}, 870, DType::kBF16);
  std::vector<Tensor> w;
  for (int64_t e = 0; e < E; ++e)
    w.push_back(same_rounded_random({N, K}, 880 + uint64_t(e), DType::kBF16, 0.05f).cuda);
  Tensor first = cuda().empty({E * capacity, N}, DType::kBF16);
  Tensor second = cuda().empty({E * capacity, N}, DType::kBF16);
  cuda().moe_grouped_gemm_nt(x.cuda, w, kept.cuda, capacity, first);
  cuda().moe_grouped_gemm_nt(x.cuda, w, kept.cuda, capacity, second);
  EXPECT_EQ(to_vector(cuda(), first), to_vector(cuda(), second));
}

TEST_F(CudaDecode, RoutePaddedMatchesTheCpuOpsOneByOne) {
  // (N, E, C, k, renormalize, capacity): decode steps at batch 1 and 8 (one launch), 64 experts
  // with probability gates, a capacity that drops slots, and shapes past the one-block kernel
  // (f32; 300 tokens) that run the ops one by one.
  // Then tied logits (experts 2, 9 and 14 share a weight row: the lower index ranks first) and
  // more choices than a warp has lanes (top 40 of 64).
  struct Case {
    int64_t n, experts, cols, top_k;
    bool renormalize;
    int64_t capacity;
    DType dtype;
    bool tied = false;
  };
  const Case cases[] = {
      {1, 16, 768, 4, true, 1, DType::kBF16},       {8, 16, 768, 4, true, 8, DType::kBF16},
      {16, 64, 256, 8, false, 16, DType::kF16},     {8, 16, 768, 4, true, 1, DType::kBF16},
      {8, 16, 768, 4, true, 8, DType::kF32},        {300, 16, 64, 2, true, 300, DType::kBF16},
      {8, 16, 768, 4, true, 8, DType::kBF16, true}, {2, 16, 768, 4, false, 2, DType::kBF16, true},
      {4, 64, 256, 40, true, 4, DType::kBF16}};
  for (const Case& c : cases) {
    const std::string what = "N " + std::to_string(c.n) + " E " + std::to_string(c.experts) +
                             " k " + std::to_string(c.top_k) + " capacity " +
                             std::to_string(c.capacity) + " " + dtype_name(c.dtype);
    TensorPair x = same_rounded_random({c.n, c.cols}, 960 + uint64_t(c.n), c.dtype);
    TensorPair w =
        same_rounded_random({c.experts, c.cols}, 970 + uint64_t(c.experts), c.dtype, 0.05f);
    if (c.tied) {
      std::vector<float> values = cpu_values(w);
      for (int64_t e : {9, 14}) {
        std::copy(values.begin() + 2 * c.cols, values.begin() + 3 * c.cols,
                  values.begin() + e * c.cols);
      }
      w = same_rounded(values, {c.experts, c.cols}, c.dtype);
    }
    const int64_t rows = c.experts * c.capacity;
    TensorPair index = same_ints(std::vector<int32_t>(size_t(c.n * c.top_k), 77), {c.n, c.top_k});
    TensorPair gate = poisoned({c.n, c.top_k});
    TensorPair token = same_ints(std::vector<int32_t>(size_t(rows), 77), {rows});
    TensorPair slot = same_ints(std::vector<int32_t>(size_t(rows), 77), {rows});
    TensorPair offsets =
        same_ints(std::vector<int32_t>(size_t(c.experts + 1), 77), {c.experts + 1});
    TensorPair load = poisoned({c.experts});
    cpu().moe_route_padded(x.cpu, w.cpu, c.top_k, c.renormalize, c.capacity, index.cpu, gate.cpu,
                           token.cpu, slot.cpu, offsets.cpu, load.cpu);
    cuda().moe_route_padded(x.cuda, w.cuda, c.top_k, c.renormalize, c.capacity, index.cuda,
                            gate.cuda, token.cuda, slot.cuda, offsets.cuda, load.cuda);
    expect_ints_match_cpu(index, what + " expert_index");
    expect_ints_match_cpu(token, what + " token");
    expect_ints_match_cpu(slot, what + " slot");
    expect_ints_match_cpu(offsets, what + " offsets");
    expect_matches_cpu(gate, Tolerance{2e-5, 1e-5}, what + " gate");
    expect_matches_cpu(load, Tolerance{0, 0}, what + " load");
    if (c.capacity < c.n) {  // the dropped slots: expert -1, gate 0
      const std::vector<float> gates = cuda_values(gate);
      int dropped = 0;
      for (float g : gates) dropped += g == 0.0f;
      EXPECT_GT(dropped, 0) << what;
    }
    // Repeated calls give the same bits.
    const std::vector<float> first = cuda_values(gate);
    cuda().moe_route_padded(x.cuda, w.cuda, c.top_k, c.renormalize, c.capacity, index.cuda,
                            gate.cuda, token.cuda, slot.cuda, offsets.cuda, load.cuda);
    EXPECT_EQ(first, cuda_values(gate)) << what;
    if (::testing::Test::HasFailure()) return;
  }
}

// A decode step's padded routing built on the host: token t picks top_k distinct experts from a
// fixed pattern, gates in (0, 1); each expert keeps its first `capacity` slots (ascending), the
// rest are dropped (no row).
struct PaddedRouting {
  std::vector<int32_t> token, slot, kept_offsets;
  std::vector<float> gate;
  int64_t dropped = 0;
};

PaddedRouting padded_routing(int64_t tokens, int64_t experts, int64_t top_k, int64_t capacity,
                             uint64_t seed) {
  PaddedRouting r;
  r.token.assign(size_t(experts * capacity), -1);
  r.slot.assign(size_t(experts * capacity), -1);
  r.gate.resize(size_t(tokens * top_k));
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return state >> 33;
  };
  std::vector<std::vector<int64_t>> by_expert(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int64_t> picked;
    while (static_cast<int64_t>(picked.size()) < top_k) {
      const auto e = static_cast<int64_t>(next() % uint64_t(experts));
      if (std::find(picked.begin(), picked.end(), e) == picked.end()) picked.push_back(e);
    }
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t s = t * top_k + j;
      r.gate[size_t(s)] = 0.05f + 0.9f * float(next() % 1000) / 1000.0f;
      by_expert[size_t(picked[size_t(j)])].push_back(s);
    }
  }
  r.kept_offsets.push_back(0);
  for (int64_t e = 0; e < experts; ++e) {
    const auto& slots = by_expert[size_t(e)];
    const int64_t kept = std::min<int64_t>(capacity, static_cast<int64_t>(slots.size()));
    r.dropped += static_cast<int64_t>(slots.size()) - kept;
    for (int64_t i = 0; i < kept; ++i) {
      const int64_t s = slots[size_t(i)];
      r.token[size_t(e * capacity + i)] = int32_t(s / top_k);
      r.slot[size_t(e * capacity + i)] = int32_t(s);
    }
    for (int64_t i = kept; i < static_cast<int64_t>(slots.size()); ++i)
      r.gate[size_t(slots[size_t(i)])] = 0.0f;
    r.kept_offsets.push_back(r.kept_offsets.back() + int32_t(kept));
  }
  return r;
}

TEST_F(CudaDecode, SwigluExpertsPaddedMatchesTheCpuCompositionAndRepeats) {
  // (tokens, experts, hidden, ffn, top_k, capacity, dtype): single-token steps (backend/cuda's
  // gathered SwiGLU: 768 wide; 64 experts of 256 at capacity 16 in f16; ffn 1056 at capacity
  // 9), batch 8 of a 768-wide model, 64 experts of 256 with two row tiles (capacity 16) in f16,
  // drops (capacity below the load) at hidden 512, and other shapes (f32; hidden 320).
  struct Case {
    int64_t tokens, experts, hidden, ffn, top_k, capacity;
    DType dtype;
  };
  const Case cases[] = {
      {1, 16, 768, 1024, 4, 1, DType::kBF16},
      {1, 64, 256, 96, 8, 16, DType::kF16},
      {1, 8, 512, 1056, 2, 9, DType::kBF16},
      {8, 16, 768, 1056, 4, 8, DType::kBF16},
      {16, 64, 256, 96, 8, 16, DType::kF16},
      {9, 4, 512, 64, 2, 3, DType::kBF16},
      {12, 8, 768, 128, 4, 10, DType::kBF16},
      {3, 4, 64, 32, 2, 2, DType::kF32},
      {2, 4, 320, 64, 2, 2, DType::kBF16},
      // Single-token steps with a long down product (ffn >= 2048: k split over eight warps),
      // ffn not a multiple of 64, and the two-row-tile instance in f16.
      {1, 4, 512, 2080, 2, 3, DType::kBF16},
      {1, 4, 768, 2048, 2, 12, DType::kF16},
      // The single-token gate/up product past one batch of k spans (hidden 1024's four), a
      // hidden that ends in a partial span (320), and a long down product after it (ffn 8200).
      {1, 4, 256, 8200, 2, 1, DType::kBF16},
      {1, 4, 1024, 64, 2, 1, DType::kBF16},
      {1, 4, 320, 1000, 2, 2, DType::kF16}};
  for (const Case& c : cases) {
    const std::string what = "N " + std::to_string(c.tokens) + " E " + std::to_string(c.experts) +
                             " C " + std::to_string(c.hidden) + " F " + std::to_string(c.ffn) +
                             " k " + std::to_string(c.top_k) + " capacity " +
                             std::to_string(c.capacity) + " " + dtype_name(c.dtype);
    const PaddedRouting r = padded_routing(c.tokens, c.experts, c.top_k, c.capacity,
                                           uint64_t(c.tokens * 131 + c.experts));
    if (c.capacity < c.tokens * c.top_k / c.experts) {
      EXPECT_GT(r.dropped, 0) << what;
    }
    const int64_t rows = c.experts * c.capacity;
    TensorPair token = same_ints(r.token, {rows});
    TensorPair slot = same_ints(r.slot, {rows});
    TensorPair kept = same_ints(r.kept_offsets, {c.experts + 1});
    TensorPair gate = same_values(r.gate, {c.tokens * c.top_k});
    TensorPair x = same_rounded_random({c.tokens, c.hidden}, 1200 + uint64_t(c.tokens), c.dtype);
    std::vector<Tensor> gw_cpu, uw_cpu, dw_cpu, gw, uw, dw;
    for (int64_t e = 0; e < c.experts; ++e) {
      const auto seed = 1300 + 3 * uint64_t(e);
      TensorPair g = same_rounded_random({c.ffn, c.hidden}, seed, c.dtype, 0.08f);
      TensorPair u = same_rounded_random({c.ffn, c.hidden}, seed + 1, c.dtype, 0.08f);
      TensorPair d = same_rounded_random({c.hidden, c.ffn}, seed + 2, c.dtype, 0.08f);
      gw_cpu.push_back(g.cpu), uw_cpu.push_back(u.cpu), dw_cpu.push_back(d.cpu);
      gw.push_back(g.cuda), uw.push_back(u.cuda), dw.push_back(d.cuda);
    }
    TensorPair y = poisoned({c.tokens, c.hidden}, c.dtype);
    cpu().moe_swiglu_experts_padded(x.cpu, token.cpu, slot.cpu, gate.cpu, gw_cpu, uw_cpu, dw_cpu,
                                    kept.cpu, c.capacity, y.cpu);
    cuda().moe_swiglu_experts_padded(x.cuda, token.cuda, slot.cuda, gate.cuda, gw, uw, dw,
                                     kept.cuda, c.capacity, y.cuda);
    // Both compose the same rounded steps, but the f32 sums run in other orders, so a SwiGLU
    // value or an expert's output may round the other way: up to k roundings of size
    // u |gate * y_e| apart. Bound: 2.2 u relative plus 4 u of the largest output, absolute.
    const std::vector<float> want = cpu_values(y);
    const std::vector<float> got = cuda_floats(y.cuda);
    float largest = 0.0f;
    for (float v : want) largest = std::max(largest, std::fabs(v));
    EXPECT_GT(largest, 0.0f) << what;
    const double u = unit_roundoff(c.dtype);
    expect_close_to_cpu(got, want, Tolerance{2.2 * u + 1e-5, 4.0 * u * largest + 1e-6}, what);
    // backend/cuda's op is its four-op composition bit for bit (the same kernels and k order),
    // except for single-token steps of 16-bit tensors: their gate/up product
    // (single_token_experts.cuh) sums k in another order, so they agree with the composition to
    // the same bound as the CPU's.
    {
      const int64_t F = c.ffn;
      Tensor x_routed = cuda().empty({rows, c.hidden}, c.dtype);
      cuda().gather_rows(x.cuda, token.cuda, x_routed);
      Tensor activated = cuda().empty({rows, F}, c.dtype);
      cuda().moe_grouped_swiglu_nt(x_routed, gw, uw, kept.cuda, c.capacity, activated);
      Tensor y_routed = cuda().empty({rows, c.hidden}, c.dtype);
      cuda().moe_grouped_gemm_nt(activated, dw, kept.cuda, c.capacity, y_routed);
      Tensor composed = cuda().empty({c.tokens, c.hidden}, c.dtype);
      cuda().moe_combine_rows(y_routed, token.cuda, slot.cuda, gate.cuda, composed);
      if (c.tokens == 1 && c.dtype != DType::kF32) {
        expect_close_to_cpu(got, cuda_floats(composed),
                            Tolerance{2.2 * u + 1e-5, 4.0 * u * largest + 1e-6}, what);
      } else {
        EXPECT_EQ(float_bits(got), float_bits(cuda_floats(composed))) << what;
      }
    }
    // Repeated calls give the same bits.
    TensorPair again = poisoned({c.tokens, c.hidden}, c.dtype);
    cuda().moe_swiglu_experts_padded(x.cuda, token.cuda, slot.cuda, gate.cuda, gw, uw, dw,
                                     kept.cuda, c.capacity, again.cuda);
    EXPECT_EQ(float_bits(got), float_bits(cuda_floats(again.cuda))) << what;
    if (::testing::Test::HasFailure()) return;
  }
}

TEST_F(CudaDecode, SwigluExpertsPaddedRefusesMismatchedWeights) {
  const int64_t E = 4, C = 256, F = 64, cap = 2;
  Tensor x = cuda().zeros({1, C}, DType::kBF16);
  Tensor ints = cuda().zeros({E * cap}, DType::kI32);
  Tensor kept = cuda().zeros({E + 1}, DType::kI32);
  Tensor gate = cuda().zeros({4});
  Tensor y = cuda().empty({1, C}, DType::kBF16);
  std::vector<Tensor> g(E, cuda().zeros({F, C}, DType::kBF16));
  std::vector<Tensor> d(E, cuda().zeros({C, F}, DType::kBF16));
  std::vector<Tensor> wrong(E, cuda().zeros({F, C + 8}, DType::kBF16));
  try {
    cuda().moe_swiglu_experts_padded(x, ints, ints, gate, g, wrong, d, kept, cap, y);
    ADD_FAILURE() << "accepted up weights of the wrong shape";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("up_w[0]"), std::string::npos) << e.what();
  }
  try {
    cuda().moe_swiglu_experts_padded(x, ints, ints, gate, g, g, {d.begin(), d.end() - 1}, kept, cap,
                                     y);
    ADD_FAILURE() << "accepted three down weights for four experts";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("one of each per expert"), std::string::npos) << e.what();
  }
}

void CudaDecode::GroupedExpertCase(int64_t E, int64_t K, int64_t N) {
  for (int64_t capacity : {int64_t(1), int64_t(3), int64_t(8), int64_t(16)}) {
    // Kept rows per expert: 0, capacity, and in between.
    std::vector<int32_t> offsets{0};
    for (int64_t e = 0; e < E; ++e)
      offsets.push_back(offsets.back() + int32_t((e * 7) % (capacity + 1)));
    TensorPair kept = same_ints(offsets, {E + 1});
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      const std::string what = "K " + std::to_string(K) + " N " + std::to_string(N) + " capacity " +
                               std::to_string(capacity) + " " + dtype_name(dtype);
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
