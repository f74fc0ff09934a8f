// Purpose: backend/cpu fused causal attention (MHA/GQA/MQA, KV cache offsets, per-batch kv_start)
// forward and backward. Owned by backend/cpu.
// Layout (see AttentionShape): q/out (B*Tq, H*D), k/v (B*cap, Hkv*D), lse (B*Tq, H); query head h
// reads kv head h / (H / Hkv). Query t of batch b sees keys [kv_start[b], min(kv_len,
// q_offset+t+1)). Strategy: queries are processed in blocks of kBlockQ rows. A block's scores S =
// scale Q K^T over the keys its last row can see, and its output P V, are two strided sgemm calls
// (single-threaded inside our parallel region); masking and the softmax happen on the block in
// between. Only keys a block can see are multiplied, so the causal half of the work is mostly
// skipped. With one KV head (MQA) all query heads of a block are folded into the same products
// (see Geometry::fold). Backward recomputes P from lse (nothing of size T^2 is stored between
// passes). It runs one task per (batch, query head), or per batch row when folded (the task then
// owns the KV head's dk/dv); with GQA several heads feed one dk/dv slice, so each head accumulates
// into its own scratch slice and a final pass sums the group in head order (race-free and
// deterministic). Small calls (decoding) run on the calling thread.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "checks.h"
#include "cpu_backend.h"
#include "fast_math.h"

namespace nnkit::cpu {

namespace {

constexpr int64_t kBlockQ = 64;

// Multiply-adds below which a call runs on the calling thread: a decode step (one query row per
// sequence) is a few microseconds of work, less than waking and joining a thread team.
constexpr int64_t kParallelWork = int64_t{1} << 18;

inline int64_t work_estimate(const AttentionShape& s) {
  return s.batch * s.n_heads * s.q_len * std::max<int64_t>(s.kv_len, 1) * s.head_dim;
}

// The validated geometry with the derived strides.
struct Geometry {
  int64_t batch, q_len, kv_len, cap, heads, kv_heads, dim, group, q_offset;
  float scale;
  int64_t q_ld;   // H * D: row stride of q, out, dout, dq
  int64_t kv_ld;  // Hkv * D: row stride of k, v, dk, dv
  // Query heads folded into one matrix (MQA): with one KV head, row t of q holds all H heads
  // back to back, so q read as (T*H, D) with row stride D stacks every head of a block of
  // positions into one product against the shared K and V (one sgemm instead of H, K/V packed
  // once, and dk/dv summed inside the product). fold = H when n_kv_heads == 1, else 1.
  int64_t fold;
  int64_t row_ld;  // stride between consecutive matrix rows of q/out/dq: D folded, q_ld otherwise
  int64_t vheads;  // H / fold: independent head tasks per batch row
  int64_t bq;      // query positions per block
  int64_t blocks;  // query blocks per (b, vhead)
};

Geometry check_geometry(const char* op, const AttentionShape& s, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& kv_start, const Tensor& lse) {
  if (s.batch < 0 || s.q_len < 0 || s.kv_len < 0 || s.kv_capacity < s.kv_len || s.n_heads <= 0 ||
      s.n_kv_heads <= 0 || s.n_heads % s.n_kv_heads != 0 || s.head_dim <= 0 || s.q_offset < 0) {
    shape_fail(op, "bad AttentionShape: batch " + std::to_string(s.batch) + ", q_len " +
                       std::to_string(s.q_len) + ", kv_len " + std::to_string(s.kv_len) +
                       ", kv_capacity " + std::to_string(s.kv_capacity) + ", n_heads " +
                       std::to_string(s.n_heads) + ", n_kv_heads " + std::to_string(s.n_kv_heads) +
                       ", head_dim " + std::to_string(s.head_dim) + ", q_offset " +
                       std::to_string(s.q_offset) +
                       " (need kv_len <= kv_capacity and n_heads divisible by n_kv_heads)");
  }
  Geometry g{};
  g.batch = s.batch;
  g.q_len = s.q_len;
  g.kv_len = s.kv_len;
  g.cap = s.kv_capacity;
  g.heads = s.n_heads;
  g.kv_heads = s.n_kv_heads;
  g.dim = s.head_dim;
  g.group = s.n_heads / s.n_kv_heads;
  g.q_offset = s.q_offset;
  g.scale = s.scale;
  g.q_ld = s.n_heads * s.head_dim;
  g.kv_ld = s.n_kv_heads * s.head_dim;
  g.fold = (s.n_kv_heads == 1 && s.n_heads > 1) ? s.n_heads : 1;
  g.row_ld = g.fold > 1 ? g.dim : g.q_ld;
  g.vheads = g.heads / g.fold;
  g.bq = std::max<int64_t>(1, std::min<int64_t>(kBlockQ, 4 * kBlockQ / g.fold));
  g.blocks = (s.q_len + g.bq - 1) / g.bq;
  expect_tensor(op, "q", q, DType::kF32, {g.batch * g.q_len, g.q_ld});
  expect_tensor(op, "k", k, DType::kF32, {g.batch * g.cap, g.kv_ld});
  expect_tensor(op, "v", v, DType::kF32, {g.batch * g.cap, g.kv_ld});
  expect_tensor(op, "lse", lse, DType::kF32, {g.batch * g.q_len, g.heads});
  if (kv_start.defined()) expect_tensor(op, "kv_start", kv_start, DType::kI32, {g.batch});
  return g;
}

// First key batch b may see.
inline int64_t key_begin(const int32_t* kv_start, int64_t b) {
  return kv_start != nullptr ? std::max<int64_t>(0, kv_start[b]) : 0;
}

// One past the last key query t may see.
inline int64_t key_end(const Geometry& g, int64_t t) {
  return std::min(g.kv_len, g.q_offset + t + 1);
}

inline void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

// Row softmax of the first `count` scores in place, zeros after; returns the log-sum-exp.
inline float softmax_prefix(float* row, int64_t count, int64_t width) {
  if (count <= 0) {
    std::fill(row, row + width, 0.0f);
    return -std::numeric_limits<float>::infinity();
  }
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t c = 0; c < count; ++c) mx = std::max(mx, row[c]);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < count; ++c) {
    const float e = fast_exp(row[c] - mx);
    row[c] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t c = 0; c < count; ++c) row[c] *= inv;
  std::fill(row + count, row + width, 0.0f);
  return mx + std::log(sum);
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& kv_start, const Tensor& out, const Tensor& lse,
                                   const AttentionShape& shape) {
  const char* op = "attention_forward";
  const Geometry g = check_geometry(op, shape, q, k, v, kv_start, lse);
  expect_tensor(op, "out", out, DType::kF32, q.shape());
  if (g.batch == 0 || g.q_len == 0) return;

  const float* pq = ptr<float>(q);
  const float* pk = ptr<float>(k);
  const float* pv = ptr<float>(v);
  const int32_t* pstart = kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr;
  float* pout = ptr<float>(out);
  float* plse = ptr<float>(lse);
  const int64_t width = std::max<int64_t>(g.kv_len, 1);
  const int64_t workers = omp_get_max_threads();
  const int64_t max_rows = g.bq * g.fold;
  Tensor scratch = empty({workers, max_rows * width});  // S/P block per thread
  float* pscratch = ptr<float>(scratch);
  const int64_t tasks = g.batch * g.vheads * g.blocks;
  const bool parallel = tasks > 1 && work_estimate(shape) > kParallelWork;

#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t task = 0; task < tasks; ++task) {
    // Latest blocks first: they see the most keys, so the dynamic schedule balances better.
    const int64_t qb = g.blocks - 1 - task % g.blocks;
    const int64_t vh = (task / g.blocks) % g.vheads;
    const int64_t b = task / (g.blocks * g.vheads);
    const int64_t h0 = vh * g.fold;  // first query head of this task
    const int64_t kvh = h0 / g.group;
    const int64_t t0 = qb * g.bq, t1 = std::min(g.q_len, t0 + g.bq);
    const int64_t m = (t1 - t0) * g.fold;  // matrix rows: row r is position t0 + r / fold
    const int64_t ks = key_begin(pstart, b);
    const int64_t nk = std::max<int64_t>(0, key_end(g, t1 - 1) - ks);
    const float* Q = pq + (b * g.q_len + t0) * g.q_ld + h0 * g.dim;
    const float* K = pk + (b * g.cap + ks) * g.kv_ld + kvh * g.dim;
    const float* V = pv + (b * g.cap + ks) * g.kv_ld + kvh * g.dim;
    float* O = pout + (b * g.q_len + t0) * g.q_ld + h0 * g.dim;
    float* L = plse + (b * g.q_len + t0) * g.heads + h0;
    // lse of matrix row r: L[(r / fold) * H + r % fold] (= L[r] folded, L[r * H] otherwise).
    auto lse_at = [&](int64_t r) -> float& { return L[(r / g.fold) * g.heads + r % g.fold]; };
    if (nk == 0) {  // kv_start past every key this block may see
      for (int64_t r = 0; r < m; ++r) {
        std::fill(O + r * g.row_ld, O + r * g.row_ld + g.dim, 0.0f);
        lse_at(r) = -std::numeric_limits<float>::infinity();
      }
      continue;
    }
    float* S = pscratch + omp_get_thread_num() * max_rows * width;  // (m, nk)
    sgemm(false, true, m, nk, g.dim, g.scale, Q, g.row_ld, K, g.kv_ld, 0.0f, S, nk);
    for (int64_t r = 0; r < m; ++r) {
      lse_at(r) = softmax_prefix(S + r * nk, key_end(g, t0 + r / g.fold) - ks, nk);
    }
    sgemm(false, false, m, g.dim, nk, 1.0f, S, nk, V, g.kv_ld, 0.0f, O, g.row_ld);
  }
}

void CpuBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& kv_start, const Tensor& out,
                                    const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                    const Tensor& dv, const AttentionShape& shape) {
  const char* op = "attention_backward";
  const Geometry g = check_geometry(op, shape, q, k, v, kv_start, lse);
  expect_tensor(op, "out", out, DType::kF32, q.shape());
  expect_tensor(op, "dout", dout, DType::kF32, q.shape());
  expect_tensor(op, "dq", dq, DType::kF32, q.shape());
  expect_tensor(op, "dk", dk, DType::kF32, k.shape());
  expect_tensor(op, "dv", dv, DType::kF32, v.shape());

  const float* pq = ptr<float>(q);
  const float* pk = ptr<float>(k);
  const float* pv = ptr<float>(v);
  const float* pout = ptr<float>(out);
  const float* pdout = ptr<float>(dout);
  const float* plse = ptr<float>(lse);
  const int32_t* pstart = kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr;
  float* pdq = ptr<float>(dq);
  float* pdk = ptr<float>(dk);
  float* pdv = ptr<float>(dv);
  if (g.batch == 0 || g.q_len == 0) {
    fill(dk, 0.0f);
    fill(dv, 0.0f);
    return;
  }

  // GQA with several KV heads: per-query-head dk/dv slices (B, H, kv_len, D), reduced over each
  // group below. MHA writes dk/dv directly; so does MQA, whose folded task owns the KV head.
  const bool shared_kv = g.group > 1 && g.fold == 1;
  Tensor head_grads;
  float* phk = nullptr;
  float* phv = nullptr;
  const int64_t head_slice = g.kv_len * g.dim;
  if (shared_kv) {
    head_grads = empty({2, g.batch * g.heads * head_slice});
    phk = ptr<float>(head_grads);
    phv = phk + g.batch * g.heads * head_slice;
  }
  const int64_t width = std::max<int64_t>(g.kv_len, 1);
  const int64_t max_rows = g.bq * g.fold;
  const int64_t per_worker = 2 * max_rows * width + max_rows;  // P, dP/dS, rowsum(dout * out)
  Tensor scratch = empty({static_cast<int64_t>(omp_get_max_threads()), per_worker});
  float* pscratch = ptr<float>(scratch);
  const int64_t tasks = g.batch * g.vheads;
  const bool parallel = tasks > 1 && work_estimate(shape) > kParallelWork;

#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t vh = task % g.vheads, b = task / g.vheads;
    const int64_t h0 = vh * g.fold, kvh = h0 / g.group;
    float* P = pscratch + omp_get_thread_num() * per_worker;
    float* dS = P + max_rows * width;
    float* delta = dS + max_rows * width;
    // This task's dk/dv target: the (b, kvh) slice itself (MHA, MQA), its own scratch slice (GQA).
    float* dK;
    float* dV;
    int64_t ld;
    if (shared_kv) {
      dK = phk + task * head_slice;
      dV = phv + task * head_slice;
      ld = g.dim;
      std::fill(dK, dK + head_slice, 0.0f);
      std::fill(dV, dV + head_slice, 0.0f);
    } else {
      dK = pdk + b * g.cap * g.kv_ld + kvh * g.dim;
      dV = pdv + b * g.cap * g.kv_ld + kvh * g.dim;
      ld = g.kv_ld;
      for (int64_t j = 0; j < g.cap; ++j) {  // rows past kv_len are zeroed too
        std::fill(dK + j * ld, dK + j * ld + g.dim, 0.0f);
        std::fill(dV + j * ld, dV + j * ld + g.dim, 0.0f);
      }
    }
    const int64_t ks = key_begin(pstart, b);
    for (int64_t qb = 0; qb < g.blocks; ++qb) {
      const int64_t t0 = qb * g.bq, t1 = std::min(g.q_len, t0 + g.bq);
      const int64_t m = (t1 - t0) * g.fold;  // matrix rows: row r is position t0 + r / fold
      const int64_t row0 = b * g.q_len + t0;
      const float* Q = pq + row0 * g.q_ld + h0 * g.dim;
      const float* O = pout + row0 * g.q_ld + h0 * g.dim;
      const float* dO = pdout + row0 * g.q_ld + h0 * g.dim;
      const float* L = plse + row0 * g.heads + h0;
      float* dQ = pdq + row0 * g.q_ld + h0 * g.dim;
      const int64_t rl = g.row_ld;
      const int64_t nk = std::max<int64_t>(0, key_end(g, t1 - 1) - ks);
      if (nk == 0) {
        for (int64_t r = 0; r < m; ++r) std::fill(dQ + r * rl, dQ + r * rl + g.dim, 0.0f);
        continue;
      }
      const float* K = pk + (b * g.cap + ks) * g.kv_ld + kvh * g.dim;
      const float* V = pv + (b * g.cap + ks) * g.kv_ld + kvh * g.dim;
      // P = exp(scale Q K^T - lse) on the visible keys (forward's probabilities, recomputed).
      sgemm(false, true, m, nk, g.dim, g.scale, Q, rl, K, g.kv_ld, 0.0f, P, nk);
      for (int64_t r = 0; r < m; ++r) {
        float* row = P + r * nk;
        const float l = L[(r / g.fold) * g.heads + r % g.fold];
        const int64_t count =
            std::isinf(l) ? 0 : std::max<int64_t>(0, key_end(g, t0 + r / g.fold) - ks);
#pragma omp simd
        for (int64_t c = 0; c < count; ++c) row[c] = fast_exp(row[c] - l);
        std::fill(row + count, row + nk, 0.0f);
        const float* orow = O + r * rl;
        const float* dorow = dO + r * rl;
        float d = 0.0f;
#pragma omp simd reduction(+ : d)
        for (int64_t c = 0; c < g.dim; ++c) d += orow[c] * dorow[c];
        delta[r] = d;
      }
      // dP = dO V^T; dS = P (dP - rowsum(dO * O)).
      sgemm(false, true, m, nk, g.dim, 1.0f, dO, rl, V, g.kv_ld, 0.0f, dS, nk);
      for (int64_t r = 0; r < m; ++r) {
        float* ds = dS + r * nk;
        const float* p = P + r * nk;
        const float d = delta[r];
#pragma omp simd
        for (int64_t c = 0; c < nk; ++c) ds[c] = p[c] * (ds[c] - d);
      }
      // dQ = scale dS K (each query row is written by exactly this task);
      // dK += scale dS^T Q; dV += P^T dO (accumulated over query blocks; folded heads are summed
      // inside these products).
      sgemm(false, false, m, g.dim, nk, g.scale, dS, nk, K, g.kv_ld, 0.0f, dQ, rl);
      sgemm(true, false, nk, g.dim, m, g.scale, dS, nk, Q, rl, 1.0f, dK + ks * ld, ld);
      sgemm(true, false, nk, g.dim, m, 1.0f, P, nk, dO, rl, 1.0f, dV + ks * ld, ld);
    }
  }

  if (!shared_kv) return;
  // dk[b, j, kvh] = sum over the group's heads in order; rows past kv_len are zero.
  const int64_t rows = g.batch * g.cap;
#pragma omp parallel for schedule(static) if (rows * g.kv_ld > kParallelGrain)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / g.cap, j = row % g.cap;
    for (int64_t kvh = 0; kvh < g.kv_heads; ++kvh) {
      float* ok = pdk + row * g.kv_ld + kvh * g.dim;
      float* ov = pdv + row * g.kv_ld + kvh * g.dim;
      std::fill(ok, ok + g.dim, 0.0f);
      std::fill(ov, ov + g.dim, 0.0f);
      if (j >= g.kv_len) continue;
      for (int64_t i = 0; i < g.group; ++i) {
        const int64_t slice = (b * g.heads + kvh * g.group + i) * head_slice + j * g.dim;
        const float* hk = phk + slice;
        const float* hv = phv + slice;
#pragma omp simd
        for (int64_t c = 0; c < g.dim; ++c) {
          ok[c] += hk[c];
          ov[c] += hv[c];
        }
      }
    }
  }
}

}  // namespace nnkit::cpu
