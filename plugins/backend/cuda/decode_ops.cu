// Purpose: backend/cuda ops of the device-resident decode step: kv_cache_append and
// attention_decode read the cache length from device memory (so one recorded CUDA Graph serves
// every token), and moe_grouped_gemm_nt runs every expert's few decode rows in one launch that
// reads only the chosen experts' weights. Owned by backend/cuda.
// attention_decode is split-K ("flash decoding"): the cache is cut into chunks of kChunk keys,
// one block per (chunk, sequence, group of heads) scores its keys for all the group's heads
// (with MQA every head shares the key, which is read once), keeps the chunk's max and sum of
// exponentials, and writes an unnormalised partial output; a second kernel combines the chunks
// of each (sequence, head) in chunk order. Chunks past the length (read on the device) exit at
// once, so the grid is sized by the capacity and stays the same for the whole generation.
// Statistics and partial outputs are f32; the output is rounded once. Fixed orders throughout:
// results repeat bit for bit.
#include <algorithm>
#include <string>

#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kChunk = 64;           // keys per attention_decode block
constexpr int kHeadsPerBlock = 16;   // query heads per block
constexpr int kMaxHeadDim = 256;     // D: q of the block's heads lives in shared memory
constexpr int kDecodeThreads = 256;  // 8 warps
constexpr int kMaxGroupedExperts = 64;

// ---- kv_cache_append ------------------------------------------------------------------------
template <typename T>
__global__ void kv_append_kernel(T* cache, const T* rows, int64_t batch, int64_t t_rows,
                                 int64_t width, int64_t capacity, const int32_t* cache_len,
                                 DeviceFault* fault) {
  const int64_t len = *cache_len;
  if (len < 0 || len + t_rows > capacity) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      report_fault(fault, FaultOp::kKvCacheAppend, len + t_rows, capacity + 1, 0);
    }
    return;
  }
  const int64_t n = batch * t_rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / width, col = i % width;
    const int64_t b = row / t_rows, t = row % t_rows;
    cache[(b * capacity + len + t) * width + col] = rows[i];
  }
}

// ---- attention_decode -------------------------------------------------------------------------
struct DecodeGeometry {
  int batch, heads, kv_heads, dim, capacity, chunks;
  float scale;
};

// Partials: o (B, chunks, H, D), m and l (B, chunks, H).
template <typename T>
__global__ void __launch_bounds__(kDecodeThreads)
    attention_decode_partial_kernel(const T* q, const T* k, const T* v, const int32_t* kv_start,
                                    const int32_t* kv_len_device, DecodeGeometry g, float* part_o,
                                    float* part_m, float* part_l) {
  __shared__ float q_shared[kHeadsPerBlock * kMaxHeadDim];
  __shared__ float p_shared[kHeadsPerBlock * kChunk];
  const int chunk = blockIdx.x, b = blockIdx.y;
  const int h0 = blockIdx.z * kHeadsPerBlock;
  const int hn = min(kHeadsPerBlock, g.heads - h0);
  const int group = g.heads / g.kv_heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int kv_len = min(*kv_len_device, g.capacity);
  const int first = kv_start != nullptr ? max(0, kv_start[b]) : 0;
  const int begin = max(first, chunk * kChunk), end = min(kv_len, (chunk + 1) * kChunk);
  const int64_t stat = (int64_t(b) * g.chunks + chunk) * g.heads;
  if (begin >= end) {  // nothing of this chunk is visible: an empty partial
    for (int h = threadIdx.x; h < hn; h += blockDim.x) {
      part_m[stat + h0 + h] = -INFINITY;
      part_l[stat + h0 + h] = 0.0f;
    }
    return;
  }
  for (int i = threadIdx.x; i < hn * g.dim; i += blockDim.x) {
    q_shared[i] = to_float(q[int64_t(b) * g.heads * g.dim + int64_t(h0) * g.dim + i]);
  }
  __syncthreads();
  const int64_t kv_ld = int64_t(g.kv_heads) * g.dim;
  // Scores: a warp per key, lanes along D, one reduction per head of the block.
  for (int j = begin + warp; j < end; j += warps) {
    const T* kj = k + (int64_t(b) * g.capacity + j) * kv_ld;
    for (int h = 0; h < hn; ++h) {
      const int kvh = (h0 + h) / group;
      float dot = 0.0f;
      for (int d = lane; d < g.dim; d += 32)
        dot += q_shared[h * g.dim + d] * to_float(kj[kvh * g.dim + d]);
      dot = warp_sum(dot);
      if (lane == 0) p_shared[h * kChunk + (j - begin)] = dot * g.scale;
    }
  }
  __syncthreads();
  // Max and sum of exponentials per head (a warp per head), p overwritten with exp(s - max).
  const int n = end - begin;
  for (int h = warp; h < hn; h += warps) {
    float mx = -INFINITY;
    for (int j = lane; j < n; j += 32) mx = fmaxf(mx, p_shared[h * kChunk + j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) {
      const float p = expf(p_shared[h * kChunk + j] - mx);
      p_shared[h * kChunk + j] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      part_m[stat + h0 + h] = mx;
      part_l[stat + h0 + h] = sum;
    }
  }
  __syncthreads();
  // Unnormalised output: o[h][d] = sum_j p[h][j] v[j][d], keys in order.
  for (int i = threadIdx.x; i < hn * g.dim; i += blockDim.x) {
    const int h = i / g.dim, d = i % g.dim;
    const int kvh = (h0 + h) / group;
    const T* vcol = v + (int64_t(b) * g.capacity + begin) * kv_ld + kvh * g.dim + d;
    float acc = 0.0f;
#pragma unroll 8
    for (int j = 0; j < n; ++j)
      acc += p_shared[h * kChunk + j] * to_float(vcol[int64_t(j) * kv_ld]);
    part_o[(stat + h0 + h) * g.dim + d] = acc;
  }
}

// One block per (head, sequence), a thread per output element of the head: the chunks combined
// in order with the shared max.
template <typename T>
__global__ void attention_decode_combine_kernel(const float* part_o, const float* part_m,
                                                const float* part_l, DecodeGeometry g, T* out) {
  const int h = blockIdx.x, b = blockIdx.y;
  float mx = -INFINITY;
  for (int c = 0; c < g.chunks; ++c)
    mx = fmaxf(mx, part_m[(int64_t(b) * g.chunks + c) * g.heads + h]);
  for (int d = threadIdx.x; d < g.dim; d += blockDim.x) {
    float total = 0.0f, acc = 0.0f;
    if (mx > -INFINITY) {
      for (int c = 0; c < g.chunks; ++c) {
        const int64_t s = (int64_t(b) * g.chunks + c) * g.heads + h;
        if (part_l[s] == 0.0f) continue;
        const float w = expf(part_m[s] - mx);
        total += w * part_l[s];
        acc += w * part_o[s * g.dim + d];
      }
    }
    out[(int64_t(b) * g.heads + h) * g.dim + d] = from_float<T>(total > 0.0f ? acc / total : 0.0f);
  }
}

// ---- moe_grouped_gemm_nt ---------------------------------------------------------------------
struct ExpertWeights {
  const void* w[kMaxGroupedExperts];
};

// Grid (column blocks, E); a warp per output column j of expert e, all `capacity` rows at once
// (kRows >= capacity registers). Experts with no kept row only write zeros. kSwiglu: two weight
// tables (gate, up) and y = silu(x Wg^T) * (x Wu^T) from the f32 sums (the SwiGLU of the
// experts' first two products in one pass over x).
template <typename T, int kRows, int kWidth, bool kSwiglu>
__global__ void grouped_gemm_nt_kernel(const T* x, ExpertWeights weights, ExpertWeights up,
                                       const int32_t* kept, int capacity, int64_t n, int64_t k,
                                       T* y) {
  const int e = blockIdx.y;
  const int64_t j = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (j >= n) return;
  const int rows = min(max(kept[e + 1] - kept[e], 0), capacity);
  T* ye = y + int64_t(e) * capacity * n;
  if (rows == 0) {
    if (lane == 0) {
      for (int i = 0; i < capacity; ++i) ye[i * n + j] = from_float<T>(0.0f);
    }
    return;
  }
  const T* xe = x + int64_t(e) * capacity * k;
  const T* wj = static_cast<const T*>(weights.w[e]) + j * k;
  const T* uj = kSwiglu ? static_cast<const T*>(up.w[e]) + j * k : nullptr;
  float acc[kRows], acc_up[kSwiglu ? kRows : 1];
#pragma unroll
  for (int i = 0; i < kRows; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < (kSwiglu ? kRows : 1); ++i) acc_up[i] = 0.0f;
    // Unrolled so each lane keeps several weight loads in flight: these products are bound by
    // memory latency x bytes in flight, not by arithmetic (same per-lane order: same sums).
#pragma unroll 4
  for (int64_t p = int64_t(lane) * kWidth; p < k; p += 32 * kWidth) {
    float w[kWidth], u[kWidth];
    load_floats<kWidth>(wj + p, w);
    if constexpr (kSwiglu) load_floats<kWidth>(uj + p, u);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      if (i < rows) {
        float xv[kWidth];
        load_floats<kWidth>(xe + i * k + p, xv);
#pragma unroll
        for (int c = 0; c < kWidth; ++c) {
          acc[i] += xv[c] * w[c];
          if constexpr (kSwiglu) acc_up[i] += xv[c] * u[c];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    float sum = warp_sum(acc[i]);
    if constexpr (kSwiglu) {
      const float g = sum, u = warp_sum(acc_up[i]);
      sum = g * (1.0f / (1.0f + expf(-g))) * u;  // swiglu_forward's formula, in f32
    }
    if (lane == 0 && i < capacity) ye[i * n + j] = from_float<T>(i < rows ? sum : 0.0f);
  }
  if (lane == 0) {
    for (int i = kRows; i < capacity; ++i) ye[i * n + j] = from_float<T>(0.0f);
  }
}

template <typename T, int kRows, int kWidth, bool kSwiglu>
void launch_grouped(const T* x, const ExpertWeights& w, const ExpertWeights& up,
                    const int32_t* kept, int capacity, int64_t n, int64_t k, T* y, int experts,
                    cudaStream_t stream) {
  constexpr int kWarps = kThreads / 32;
  const dim3 grid(static_cast<unsigned>((n + kWarps - 1) / kWarps), static_cast<unsigned>(experts));
  grouped_gemm_nt_kernel<T, kRows, kWidth, kSwiglu>
      <<<grid, kThreads, 0, stream>>>(x, w, up, kept, capacity, n, k, y);
  NNKIT_CUDA_CHECK_LAUNCH(grouped_gemm_nt_kernel);
}

template <typename T, int kWidth, bool kSwiglu>
void grouped_by_rows(const T* x, const ExpertWeights& w, const ExpertWeights& up,
                     const int32_t* kept, int capacity, int64_t n, int64_t k, T* y, int experts,
                     cudaStream_t stream) {
  if (capacity <= 1) {
    launch_grouped<T, 1, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, stream);
  } else if (capacity <= 2) {
    launch_grouped<T, 2, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, stream);
  } else if (capacity <= 4) {
    launch_grouped<T, 4, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, stream);
  } else if (capacity <= 8) {
    launch_grouped<T, 8, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, stream);
  } else {
    launch_grouped<T, 16, kWidth, kSwiglu>(x, w, up, kept, capacity, n, k, y, experts, stream);
  }
}

}  // namespace

void CudaBackend::kv_cache_append(const Tensor& cache, const Tensor& rows, int64_t batch,
                                  int64_t capacity, const Tensor& cache_len_device) {
  OpScope op_scope(profiler_.get(), "kv_cache_append");
  const char* op = "kv_cache_append";
  const backend_common::RowShape c = kChecks.float_rows(op, "cache", cache, kFloatDTypes);
  const backend_common::RowShape r = kChecks.rows(op, "rows", rows, cache.dtype());
  kChecks.tensor(op, "cache_len", cache_len_device, DType::kI32, {1});
  if (batch < 1 || capacity < 1 || c.rows != batch * capacity || r.cols != c.cols ||
      r.rows % batch != 0) {
    kChecks.fail(op, "cache is " + describe(cache) + " and rows " + describe(rows) +
                         "; expected (B * capacity, W) and (B * T, W) with B = " +
                         std::to_string(batch) + ", capacity = " + std::to_string(capacity));
  }
  if (r.rows == 0) return;
  dispatch_float(cache.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    kv_append_kernel<T><<<grid_for(r.rows * r.cols), kThreads, 0, stream_>>>(
        ptr<T>(cache), ptr<T>(rows), batch, r.rows / batch, r.cols, capacity,
        ptr<int32_t>(cache_len_device), fault_);
    NNKIT_CUDA_CHECK_LAUNCH(kv_append_kernel);
  });
}

void CudaBackend::attention_decode(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& kv_start, const Tensor& kv_len_device,
                                   const Tensor& out, const AttentionShape& s) {
  OpScope op_scope(profiler_.get(), "attention_decode");
  const char* op = "attention_decode";
  if (s.batch < 1 || s.q_len != 1 || s.n_heads < 1 || s.n_kv_heads < 1 || s.head_dim < 1 ||
      s.head_dim > kMaxHeadDim || s.n_heads % s.n_kv_heads != 0 || s.kv_capacity < 1 ||
      s.kv_capacity > INT32_MAX - kChunk) {
    kChecks.fail(op, "needs batch >= 1, q_len = 1, head_dim <= " + std::to_string(kMaxHeadDim) +
                         ", n_heads a multiple of n_kv_heads and a cache; got batch " +
                         std::to_string(s.batch) + ", q_len " + std::to_string(s.q_len) +
                         ", head_dim " + std::to_string(s.head_dim) + ", heads " +
                         std::to_string(s.n_heads) + "/" + std::to_string(s.n_kv_heads));
  }
  const int64_t H = s.n_heads, Hkv = s.n_kv_heads, D = s.head_dim, B = s.batch;
  kChecks.float_tensor(op, "q", q, kFloatDTypes, {B, H * D});
  kChecks.dtype_as(op, "out", out, "q", q);
  kChecks.dtype_as(op, "k", k, "q", q);
  kChecks.dtype_as(op, "v", v, "q", q);
  kChecks.tensor(op, "out", out, q.dtype(), {B, H * D});
  kChecks.tensor(op, "k", k, q.dtype(), {B * s.kv_capacity, Hkv * D});
  kChecks.tensor(op, "v", v, q.dtype(), {B * s.kv_capacity, Hkv * D});
  kChecks.tensor(op, "kv_len", kv_len_device, DType::kI32, {1});
  if (kv_start.defined()) kChecks.tensor(op, "kv_start", kv_start, DType::kI32, {B});
  const DecodeGeometry g{static_cast<int>(B),
                         static_cast<int>(H),
                         static_cast<int>(Hkv),
                         static_cast<int>(D),
                         static_cast<int>(s.kv_capacity),
                         static_cast<int>((s.kv_capacity + kChunk - 1) / kChunk),
                         s.scale};
  Tensor part_o = empty({B * g.chunks * H * D});
  Tensor part_m = empty({B * g.chunks * H});
  Tensor part_l = empty({B * g.chunks * H});
  const dim3 grid(static_cast<unsigned>(g.chunks), static_cast<unsigned>(B),
                  static_cast<unsigned>((H + kHeadsPerBlock - 1) / kHeadsPerBlock));
  dispatch_float(q.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    attention_decode_partial_kernel<T><<<grid, kDecodeThreads, 0, stream_>>>(
        ptr<T>(q), ptr<T>(k), ptr<T>(v), kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr,
        ptr<int32_t>(kv_len_device), g, ptr<float>(part_o), ptr<float>(part_m), ptr<float>(part_l));
    NNKIT_CUDA_CHECK_LAUNCH(attention_decode_partial_kernel);
    const int threads = static_cast<int>(std::min<int64_t>(256, ((D + 31) / 32) * 32));
    attention_decode_combine_kernel<T>
        <<<dim3(static_cast<unsigned>(H), static_cast<unsigned>(B)), threads, 0, stream_>>>(
            ptr<float>(part_o), ptr<float>(part_m), ptr<float>(part_l), g, ptr<T>(out));
    NNKIT_CUDA_CHECK_LAUNCH(attention_decode_combine_kernel);
  });
}

namespace {

// The checks of both grouped ops; fills the weight tables and says whether 16-byte packs fit.
struct GroupedArgs {
  ExpertWeights gate{}, up{};
  int64_t n = 0, k = 0;
  bool packed = false;
};

GroupedArgs check_grouped(const char* op, const Tensor& x, const std::vector<Tensor>& weights,
                          const std::vector<Tensor>* up_weights, const Tensor& kept_offsets,
                          int64_t capacity, const Tensor& y) {
  const auto E = static_cast<int64_t>(weights.size());
  if (E < 1 || E > kMaxGroupedExperts || capacity < 1 || capacity > 16 ||
      (up_weights != nullptr && static_cast<int64_t>(up_weights->size()) != E)) {
    kChecks.fail(op, std::to_string(E) + " experts, capacity " + std::to_string(capacity) +
                         "; this backend groups 1 to " + std::to_string(kMaxGroupedExperts) +
                         " experts of 1 to 16 rows (and as many up as gate weights)");
  }
  const backend_common::RowShape xs = kChecks.float_rows(op, "x", x, kFloatDTypes);
  GroupedArgs a;
  a.k = xs.cols;
  a.n = weights[0].rank() == 2 ? weights[0].dim(0) : -1;
  a.packed = x.dtype() != DType::kF32 && a.k % 8 == 0 && aligned16(x.raw());
  for (int64_t e = 0; e < E; ++e) {
    const Tensor& w = weights[static_cast<size_t>(e)];
    kChecks.tensor(op, ("weights[" + std::to_string(e) + "]").c_str(), w, x.dtype(), {a.n, a.k});
    a.gate.w[e] = w.raw();
    a.packed = a.packed && aligned16(w.raw());
    if (up_weights != nullptr) {
      const Tensor& u = (*up_weights)[static_cast<size_t>(e)];
      kChecks.tensor(op, ("up_weights[" + std::to_string(e) + "]").c_str(), u, x.dtype(),
                     {a.n, a.k});
      a.up.w[e] = u.raw();
      a.packed = a.packed && aligned16(u.raw());
    }
  }
  kChecks.tensor(op, "x", x, x.dtype(), {E * capacity, a.k});
  kChecks.tensor(op, "y", y, x.dtype(), {E * capacity, a.n});
  kChecks.tensor(op, "kept_offsets", kept_offsets, DType::kI32, {E + 1});
  return a;
}

template <bool kSwiglu>
void run_grouped(const GroupedArgs& a, const Tensor& x, const Tensor& kept_offsets,
                 int64_t capacity, const Tensor& y, int experts, cudaStream_t stream) {
  if (a.n == 0) return;
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(a.packed, [&](auto width) {
      grouped_by_rows<T, decltype(width)::value, kSwiglu>(
          ptr<T>(x), a.gate, a.up, ptr<int32_t>(kept_offsets), static_cast<int>(capacity), a.n, a.k,
          ptr<T>(y), experts, stream);
    });
  });
}

}  // namespace

void CudaBackend::moe_grouped_gemm_nt(const Tensor& x, const std::vector<Tensor>& weights,
                                      const Tensor& kept_offsets, int64_t capacity,
                                      const Tensor& y) {
  OpScope op_scope(profiler_.get(), "moe_grouped_gemm_nt");
  const GroupedArgs a =
      check_grouped("moe_grouped_gemm_nt", x, weights, nullptr, kept_offsets, capacity, y);
  run_grouped<false>(a, x, kept_offsets, capacity, y, static_cast<int>(weights.size()), stream_);
}

void CudaBackend::moe_grouped_swiglu_nt(const Tensor& x, const std::vector<Tensor>& gate_weights,
                                        const std::vector<Tensor>& up_weights,
                                        const Tensor& kept_offsets, int64_t capacity,
                                        const Tensor& y) {
  OpScope op_scope(profiler_.get(), "moe_grouped_swiglu_nt");
  const GroupedArgs a = check_grouped("moe_grouped_swiglu_nt", x, gate_weights, &up_weights,
                                      kept_offsets, capacity, y);
  run_grouped<true>(a, x, kept_offsets, capacity, y, static_cast<int>(gate_weights.size()),
                    stream_);
}

}  // namespace nnkit::cuda
