// Purpose: backend/cpu device-length decoding ops (kv_cache_append, attention_decode) and the
// grouped expert products of the padded MoE layout (moe_grouped_gemm_nt, moe_grouped_swiglu_nt).
// Owned by backend/cpu. The CPU records no graphs, but the decode step is one code path on every
// backend: these read the cache length from the (1) i32 tensor exactly as the CUDA kernels do, so
// CPU and CUDA decoding stay comparable op for op. Sums are f32 in a fixed order (deterministic);
// the softmax subtracts the row max.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../common/composed_ops.h"
#include "checks.h"
#include "cpu_backend.h"
#include "fast_math.h"

namespace nnkit::cpu {

namespace {

// *t as a length: t is a (1) i32 tensor on the host.
int64_t read_length(const char* op, const char* name, const Tensor& t) {
  expect_tensor(op, name, t, DType::kI32, {1});
  return *ptr<int32_t>(t);
}

}  // namespace

void CpuBackend::kv_cache_append(const Tensor& cache, const Tensor& rows, int64_t batch,
                                 int64_t capacity, const Tensor& cache_len_device) {
  const char* op = "kv_cache_append";
  const RowShape c = expect_rows(op, "cache", cache, DType::kF32);
  const RowShape r = expect_rows(op, "rows", rows, DType::kF32);
  if (batch < 1 || capacity < 1 || c.rows != batch * capacity || r.cols != c.cols ||
      r.rows % batch != 0) {
    shape_fail(op, "cache is " + describe(cache) + " and rows " + describe(rows) +
                       "; expected (B * capacity, W) and (B * T, W) with B = " +
                       std::to_string(batch) + ", capacity = " + std::to_string(capacity));
  }
  const int64_t len = read_length(op, "cache_len", cache_len_device);
  const int64_t t_rows = r.rows / batch;
  if (len < 0 || len + t_rows > capacity) {
    shape_fail(op, "a cache of " + std::to_string(capacity) + " tokens cannot take " +
                       std::to_string(t_rows) + " more after " + std::to_string(len));
  }
  const float* src = ptr<float>(rows);
  float* dst = ptr<float>(cache);
  const size_t bytes = static_cast<size_t>(t_rows * c.cols) * sizeof(float);
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(dst + (b * capacity + len) * c.cols, src + b * t_rows * c.cols, bytes);
  }
}

void CpuBackend::attention_decode(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& kv_start, const Tensor& kv_len_device,
                                  const Tensor& out, const AttentionShape& s) {
  const char* op = "attention_decode";
  if (s.batch < 1 || s.q_len != 1 || s.n_heads < 1 || s.n_kv_heads < 1 || s.head_dim < 1 ||
      s.n_heads % s.n_kv_heads != 0 || s.kv_capacity < 1) {
    shape_fail(op,
               "needs batch >= 1, q_len = 1, n_heads a multiple of n_kv_heads and a cache; "
               "got batch " +
                   std::to_string(s.batch) + ", q_len " + std::to_string(s.q_len) + ", heads " +
                   std::to_string(s.n_heads) + "/" + std::to_string(s.n_kv_heads) + ", capacity " +
                   std::to_string(s.kv_capacity));
  }
  const int64_t H = s.n_heads, Hkv = s.n_kv_heads, D = s.head_dim, B = s.batch;
  expect_tensor(op, "q", q, DType::kF32, {B, H * D});
  expect_tensor(op, "out", out, DType::kF32, {B, H * D});
  expect_tensor(op, "k", k, DType::kF32, {B * s.kv_capacity, Hkv * D});
  expect_tensor(op, "v", v, DType::kF32, {B * s.kv_capacity, Hkv * D});
  if (kv_start.defined()) expect_tensor(op, "kv_start", kv_start, DType::kI32, {B});
  const int64_t kv_len = read_length(op, "kv_len", kv_len_device);
  if (kv_len < 1 || kv_len > s.kv_capacity) {
    shape_fail(op, "kv_len " + std::to_string(kv_len) + " is outside [1, " +
                       std::to_string(s.kv_capacity) + "]");
  }
  const float* pq = ptr<float>(q);
  const float* pk = ptr<float>(k);
  const float* pv = ptr<float>(v);
  float* po = ptr<float>(out);
  const int32_t* starts = kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr;
  const int64_t group = H / Hkv;
  std::vector<float> scores(static_cast<size_t>(kv_len));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t first = starts != nullptr ? std::clamp<int64_t>(starts[b], 0, kv_len) : 0;
    for (int64_t h = 0; h < H; ++h) {
      const float* qh = pq + b * H * D + h * D;
      float* oh = po + b * H * D + h * D;
      const int64_t g = h / group;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = first; j < kv_len; ++j) {
        const float* kj = pk + (b * s.kv_capacity + j) * Hkv * D + g * D;
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot += qh[d] * kj[d];
        scores[static_cast<size_t>(j)] = dot * s.scale;
        mx = std::max(mx, scores[static_cast<size_t>(j)]);
      }
      std::fill(oh, oh + D, 0.0f);
      if (first >= kv_len) continue;  // every key masked: a zero output
      float total = 0.0f;
      for (int64_t j = first; j < kv_len; ++j) {
        const float p = std::exp(scores[static_cast<size_t>(j)] - mx);
        total += p;
        const float* vj = pv + (b * s.kv_capacity + j) * Hkv * D + g * D;
        for (int64_t d = 0; d < D; ++d) oh[d] += p * vj[d];
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < D; ++d) oh[d] *= inv;
    }
  }
}

namespace {

// Both grouped ops: y rows of each expert's kept rows = x W^T (or silu(x Wg^T) * (x Wu^T) when
// `up` is given), other rows 0.
void grouped_products(const char* op, const Tensor& x, const std::vector<Tensor>& weights,
                      const std::vector<Tensor>* up, const Tensor& kept_offsets, int64_t capacity,
                      const Tensor& y) {
  const auto E = static_cast<int64_t>(weights.size());
  if (E < 1 || capacity < 1 || capacity > 16 ||
      (up != nullptr && static_cast<int64_t>(up->size()) != E)) {
    shape_fail(op, std::to_string(E) + " experts, capacity " + std::to_string(capacity) +
                       "; expected >= 1 expert (as many up as gate weights) and 1 <= capacity "
                       "<= 16");
  }
  const RowShape xs = expect_rows(op, "x", x, DType::kF32);
  const int64_t K = xs.cols;
  const int64_t N = weights[0].rank() == 2 ? weights[0].dim(0) : -1;
  for (int64_t e = 0; e < E; ++e) {
    expect_tensor(op, ("weights[" + std::to_string(e) + "]").c_str(), weights[size_t(e)],
                  DType::kF32, {N, K});
    if (up != nullptr) {
      expect_tensor(op, ("up_weights[" + std::to_string(e) + "]").c_str(), (*up)[size_t(e)],
                    DType::kF32, {N, K});
    }
  }
  expect_tensor(op, "x", x, DType::kF32, {E * capacity, K});
  expect_tensor(op, "y", y, DType::kF32, {E * capacity, N});
  expect_tensor(op, "kept_offsets", kept_offsets, DType::kI32, {E + 1});
  const int32_t* off = ptr<int32_t>(kept_offsets);
  const float* px = ptr<float>(x);
  float* py = ptr<float>(y);
  auto dot = [K](const float* a, const float* b) {
    float sum = 0.0f;
    for (int64_t c = 0; c < K; ++c) sum += a[c] * b[c];
    return sum;
  };
  for (int64_t e = 0; e < E; ++e) {
    const int64_t kept = std::clamp<int64_t>(off[e + 1] - off[e], 0, capacity);
    const float* w = ptr<float>(weights[size_t(e)]);
    const float* u = up != nullptr ? ptr<float>((*up)[size_t(e)]) : nullptr;
    for (int64_t r = 0; r < capacity; ++r) {
      float* yr = py + (e * capacity + r) * N;
      if (r >= kept) {
        std::fill(yr, yr + N, 0.0f);
        continue;
      }
      const float* xr = px + (e * capacity + r) * K;
      for (int64_t n = 0; n < N; ++n) {
        const float g = dot(xr, w + n * K);
        yr[n] = u == nullptr ? g : g * (1.0f / (1.0f + std::exp(-g))) * dot(xr, u + n * K);
      }
    }
  }
}

}  // namespace

void CpuBackend::moe_grouped_gemm_nt(const Tensor& x, const std::vector<Tensor>& weights,
                                     const Tensor& kept_offsets, int64_t capacity,
                                     const Tensor& y) {
  grouped_products("moe_grouped_gemm_nt", x, weights, nullptr, kept_offsets, capacity, y);
}

void CpuBackend::moe_grouped_swiglu_nt(const Tensor& x, const std::vector<Tensor>& gate_weights,
                                       const std::vector<Tensor>& up_weights,
                                       const Tensor& kept_offsets, int64_t capacity,
                                       const Tensor& y) {
  grouped_products("moe_grouped_swiglu_nt", x, gate_weights, &up_weights, kept_offsets, capacity,
                   y);
}

// The fused op is rope() and kv_cache_append() on the three column blocks of qkv, composed here
// so that the CPU's decode step equals its unfused one bit for bit.
void CpuBackend::rope_kv_append(const Tensor& qkv, const Tensor& positions, int64_t n_heads,
                                int64_t n_kv_heads, int64_t head_dim, float base,
                                const Tensor& k_cache, const Tensor& v_cache, int64_t capacity,
                                const Tensor& cache_len_device, const Tensor& q_out) {
  const char* op = "rope_kv_append";
  const RowShape r = expect_rows(op, "qkv", qkv, DType::kF32);
  if (n_heads < 1 || n_kv_heads < 1 || head_dim < 1 ||
      r.cols != (n_heads + 2 * n_kv_heads) * head_dim) {
    shape_fail(op, "qkv is " + describe(qkv) + "; expected (B, (H + 2 * Hkv) * D) with H = " +
                       std::to_string(n_heads) + ", Hkv = " + std::to_string(n_kv_heads) +
                       ", D = " + std::to_string(head_dim));
  }
  const int64_t batch = r.rows, q_width = n_heads * head_dim, kv_width = n_kv_heads * head_dim;
  expect_tensor(op, "q_out", q_out, DType::kF32, {batch, q_width});
  expect_tensor(op, "v_cache", v_cache, DType::kF32, k_cache.shape());
  if (batch == 0) return;
  Tensor k_rows = empty({batch, kv_width});
  Tensor v_rows = empty({batch, kv_width});
  const float* src = ptr<float>(qkv);
  for (int64_t b = 0; b < batch; ++b) {
    const float* row = src + b * r.cols;
    std::memcpy(ptr<float>(q_out) + b * q_width, row, sizeof(float) * size_t(q_width));
    std::memcpy(ptr<float>(k_rows) + b * kv_width, row + q_width, sizeof(float) * size_t(kv_width));
    std::memcpy(ptr<float>(v_rows) + b * kv_width, row + q_width + kv_width,
                sizeof(float) * size_t(kv_width));
  }
  rope(q_out, positions, n_heads, head_dim, base, false);
  rope(k_rows, positions, n_kv_heads, head_dim, base, false);
  kv_cache_append(k_cache, k_rows, batch, capacity, cache_len_device);
  kv_cache_append(v_cache, v_rows, batch, capacity, cache_len_device);
}

// No fused kernels on the CPU: the two ops each (each checks its arguments).
void CpuBackend::attention_decode_rope(const Tensor& qkv, const Tensor& positions, float base,
                                       const Tensor& k_cache, const Tensor& v_cache,
                                       const Tensor& cache_len_device, const Tensor& kv_start,
                                       const Tensor& kv_len_device, const Tensor& out,
                                       const AttentionShape& shape) {
  backend_common::attention_decode_rope_by_ops(*this, qkv, positions, base, k_cache, v_cache,
                                               cache_len_device, kv_start, kv_len_device, out,
                                               shape);
}

void CpuBackend::add_rmsnorm_gemm_nt(const Tensor& x, const Tensor& residual,
                                     const Tensor& norm_weight, float eps, const Tensor& w,
                                     const Tensor& sum, const Tensor& out) {
  backend_common::add_rmsnorm_gemm_nt_by_ops(*this, x, residual, norm_weight, eps, w, sum, out);
}

void CpuBackend::add_rmsnorm_moe_route_padded(
    const Tensor& x, const Tensor& residual, const Tensor& norm_weight, float eps,
    const Tensor& sum, const Tensor& normed, const Tensor& weight, int64_t top_k, bool renormalize,
    int64_t capacity, const Tensor& expert_index, const Tensor& gate, const Tensor& token,
    const Tensor& slot, const Tensor& offsets, const Tensor& load) {
  backend_common::add_rmsnorm_moe_route_padded_by_ops(
      *this, x, residual, norm_weight, eps, sum, normed, weight, top_k, renormalize, capacity,
      expert_index, gate, token, slot, offsets, load);
}

}  // namespace nnkit::cpu
