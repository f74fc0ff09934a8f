// Purpose: backend/cuda fused causal attention (MHA/GQA/MQA, KV cache offsets, per-batch kv_start)
// forward and backward, with the CPU backend's semantics. Owned by backend/cuda.
// Strategy: fp32 on CUDA cores, flash-attention style, so nothing of size T^2 ever reaches global
// memory. The query heads that share a KV head are folded into one row space per (batch, KV head):
// row r is position r / group of head r % group, so every K/V tile staged in shared memory serves
// the whole group (MQA decoding reads each key once for all heads, not once per head). A block of
// 256 threads is a 16 x 16 grid; each thread owns a few rows and a strided set of columns of
// every small product, reading float4s from shared tiles padded by 4 floats per row so the
// strided reads hit distinct banks. Tile sizes are picked per head_dim bucket (32/64/128/256;
// smaller dims are zero-padded) to fit two blocks per SM in shared memory where possible.
// Forward: online softmax over key tiles, fp32 accumulators in registers. When a call has too few
// blocks to fill the GPU (decoding, small batches) the keys are split into chunks whose partial
// (max, sum, unnormalised output) are merged by a second kernel in split order. Backward
// recomputes P from lse and D = rowsum(dout * out); one kernel owns dq per query tile (looping
// over keys), another owns dk/dv per key tile (looping over the query rows of every head of the
// group in a fixed order). Every output element is written by one thread with a fixed summation
// order and no atomics, so results repeat bit for bit.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_backend.h"
#include "cuda_check.h"

namespace nnkit::cuda {

namespace {

constexpr int kAttentionThreads = 256;  // 16 x 16 threads per block
constexpr int kGridSide = 16;
constexpr int kAttentionWarps = kAttentionThreads / 32;
constexpr int kMaxHeadDim = 256;
constexpr int kDecodeRows = 16;  // query rows per block when a (batch, KV head) has this few
constexpr int kMaxKeySplits = 256;

// Everything a kernel needs, validated on the host (every count fits in int; element offsets into
// the tensors are formed in int64).
struct AttentionArgs {
  int batch, q_len, kv_len, kv_capacity, heads, kv_heads, dim, group;
  int rows;   // q_len * group: folded query rows per (batch, KV head)
  int q_ld;   // heads * dim: row stride of q, out, dout, dq
  int kv_ld;  // kv_heads * dim: row stride of k, v, dk, dv
  int64_t q_offset;
  float scale;
  const int32_t* kv_start;  // (batch) or null
  const float* q;
  const float* k;
  const float* v;
  const float* dout;
  float* out;
  float* lse;
  float* delta;  // (batch * q_len, heads): rowsum(dout * out)
  float* dq;
  float* dk;
  float* dv;
  // Forward key split: `splits` chunks of `chunk` keys; with splits > 1 the partial results go to
  // partial_ml (max, sum) and partial_out (unnormalised rows of dim floats), [split][row].
  int splits;
  int chunk;
  int64_t total_rows;  // batch * kv_heads * rows
  float2* partial_ml;
  float* partial_out;
};

// ---- geometry helpers -------------------------------------------------------------------------

// First key batch b may see (negative kv_start clamps to 0; past kv_len means none).
__device__ __forceinline__ int first_key(const AttentionArgs& a, int b) {
  return a.kv_start != nullptr ? min(max(0, a.kv_start[b]), a.kv_len) : 0;
}

// One past the last key query position t may see.
__device__ __forceinline__ int key_end(const AttentionArgs& a, int t) {
  return static_cast<int>(min(static_cast<int64_t>(a.kv_len), a.q_offset + t + 1));
}

// Element offset of folded row r's head slice in q / out / dout / dq.
__device__ __forceinline__ int64_t query_offset(const AttentionArgs& a, int b, int kvh, int r) {
  const int t = r / a.group, h = kvh * a.group + r % a.group;
  return (static_cast<int64_t>(b) * a.q_len + t) * a.q_ld + static_cast<int64_t>(h) * a.dim;
}

// Index of folded row r in lse / delta.
__device__ __forceinline__ int64_t head_row_index(const AttentionArgs& a, int b, int kvh, int r) {
  const int t = r / a.group, h = kvh * a.group + r % a.group;
  return (static_cast<int64_t>(b) * a.q_len + t) * a.heads + h;
}

// Element offset of key j's head slice in k / v / dk / dv.
__device__ __forceinline__ int64_t key_offset(const AttentionArgs& a, int b, int kvh, int j) {
  return (static_cast<int64_t>(b) * a.kv_capacity + j) * a.kv_ld +
         static_cast<int64_t>(kvh) * a.dim;
}

// ---- tile helpers -----------------------------------------------------------------------------

// Shared tiles hold rows of kD floats with a row stride of kD + 4: float4-aligned, and the 16
// different rows read at one column by a half-warp start in different banks.
template <int kD>
constexpr int tile_ld() {
  return kD + 4;
}

// Output columns of thread column tx: groups of kVec adjacent columns (one float4 or float2
// read), the 16 threads of a row covering 16 * kVec adjacent columns per group.
template <int kD>
struct ColumnMap {
  static constexpr int kPerThread = kD / kGridSide;
  static constexpr int kVec = kPerThread < 4 ? kPerThread : 4;
  static constexpr int kGroups = kPerThread / kVec;
  __device__ static int column(int tx, int group) { return group * kGridSide * kVec + tx * kVec; }
};

template <int kVec>
__device__ __forceinline__ void load_vector(const float* src, float* dst) {
  if constexpr (kVec == 4) {
    const float4 value = *reinterpret_cast<const float4*>(src);
    dst[0] = value.x;
    dst[1] = value.y;
    dst[2] = value.z;
    dst[3] = value.w;
  } else {
    static_assert(kVec == 2, "column vectors are float2 or float4");
    const float2 value = *reinterpret_cast<const float2*>(src);
    dst[0] = value.x;
    dst[1] = value.y;
  }
}

// Copies kRows rows into a shared tile, zero-padded to kD columns; row i comes from
// src + offset(i), or is zeros where offset(i) < 0. One warp per row, lanes along the row, so each
// global read is a contiguous run.
template <int kD, int kRows, typename RowOffset>
__device__ __forceinline__ void stage_rows(float* tile, const float* __restrict__ src, int dim,
                                           RowOffset offset) {
  static_assert(kRows % kAttentionWarps == 0, "tiles have a multiple of 8 rows");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int step = 0; step < kRows / kAttentionWarps; ++step) {
    const int i = warp + step * kAttentionWarps;
    const int64_t base = offset(i);
    float* dst = tile + i * tile_ld<kD>();
#pragma unroll
    for (int c = lane; c < kD; c += 32) dst[c] = (base >= 0 && c < dim) ? src[base + c] : 0.0f;
  }
}

// acc[i][j] += a_row(a0 + 16 i) . b_row(b0 + 16 j) over kD columns (two shared tiles).
template <int kD, int kA, int kB>
__device__ __forceinline__ void accumulate_row_dots(const float* a_tile, int a0,
                                                    const float* b_tile, int b0,
                                                    float (&acc)[kA][kB]) {
  constexpr int kLd = tile_ld<kD>();
  // Not unrolled: the body is already kA x kB x 4 FMAs, and unrolling made the backward kernels
  // spill at their 128-register budget.
#pragma unroll 1
  for (int c = 0; c < kD; c += 4) {
    float4 a[kA], b[kB];
#pragma unroll
    for (int i = 0; i < kA; ++i) {
      a[i] = *reinterpret_cast<const float4*>(a_tile + (a0 + kGridSide * i) * kLd + c);
    }
#pragma unroll
    for (int j = 0; j < kB; ++j) {
      b[j] = *reinterpret_cast<const float4*>(b_tile + (b0 + kGridSide * j) * kLd + c);
    }
#pragma unroll
    for (int i = 0; i < kA; ++i) {
#pragma unroll
      for (int j = 0; j < kB; ++j) {
        acc[i][j] = fmaf(a[i].x, b[j].x, acc[i][j]);
        acc[i][j] = fmaf(a[i].y, b[j].y, acc[i][j]);
        acc[i][j] = fmaf(a[i].z, b[j].z, acc[i][j]);
        acc[i][j] = fmaf(a[i].w, b[j].w, acc[i][j]);
      }
    }
  }
}

// acc[i][n] += sum over k < kK of weights[w0 + 16 i][k] * values[k][column n of tx]: a (rows x kK)
// weight tile (row stride kK + 4) times a (kK x kD) value tile, into this thread's columns.
template <int kD, int kRows, int kK>
__device__ __forceinline__ void accumulate_weighted_rows(const float* weights, int w0,
                                                         const float* values, int tx,
                                                         float (&acc)[kRows][kD / kGridSide]) {
  using Cols = ColumnMap<kD>;
  constexpr int kLd = tile_ld<kD>();
  constexpr int kWeightLd = kK + 4;
#pragma unroll 2
  for (int k = 0; k < kK; k += 4) {
    float4 w[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      w[i] = *reinterpret_cast<const float4*>(weights + (w0 + kGridSide * i) * kWeightLd + k);
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      float value[Cols::kPerThread];
#pragma unroll
      for (int g = 0; g < Cols::kGroups; ++g) {
        load_vector<Cols::kVec>(values + (k + kk) * kLd + Cols::column(tx, g),
                                value + g * Cols::kVec);
      }
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const float wi = kk == 0 ? w[i].x : kk == 1 ? w[i].y : kk == 2 ? w[i].z : w[i].w;
#pragma unroll
        for (int n = 0; n < Cols::kPerThread; ++n) acc[i][n] = fmaf(wi, value[n], acc[i][n]);
      }
    }
  }
}

// Max / sum over the 16 threads of a grid row (a half-warp). The butterfly gives every thread
// the same bits (each step adds the same two operands on both partners).
__device__ __forceinline__ float row_max(float v) {
#pragma unroll
  for (int offset = kGridSide / 2; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
  for (int offset = kGridSide / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// ---- tile shapes ------------------------------------------------------------------------------

// Forward: kBQ query rows x kBK keys per step; Q, K, V tiles plus the P tile.
template <int kD, int kBQ, int kBK>
struct ForwardTiles {
  static constexpr size_t kSharedBytes =
      sizeof(float) * (size_t(kBQ + 2 * kBK) * tile_ld<kD>() + size_t(kBQ) * (kBK + 4));
};

// dq: kBQ query rows x kBK keys; Q, dO, K, V tiles plus the dS tile.
template <int kD, int kBQ, int kBK>
struct DqTiles {
  static constexpr size_t kSharedBytes =
      sizeof(float) * (size_t(2 * kBQ + 2 * kBK) * tile_ld<kD>() + size_t(kBQ) * (kBK + 4));
};

// dk/dv: kBK keys x kBQ query rows; K, V, Q, dO tiles, one P / dS tile (used in turn) and the
// query rows' lse, delta and key limit.
template <int kD, int kBK, int kBQ>
struct KeyGradTiles {
  static constexpr size_t kSharedBytes =
      sizeof(float) * (size_t(2 * kBK + 2 * kBQ) * tile_ld<kD>() + size_t(kBK) * (kBQ + 4)) +
      size_t(kBQ) * (2 * sizeof(float) + sizeof(int));
};

// Blocks per SM the register budget is sized for: two wherever two fit in shared memory (228 KB
// per SM on sm_90, 1 KB of it reserved per block), so registers never halve the occupancy.
constexpr int blocks_per_sm(size_t shared_bytes) {
  return shared_bytes <= 113 * 1024 ? 2 : 1;
}

// Tile sizes per head_dim bucket: 32 and 64 use 64 x 64; 128 halves one side and 256 both, which
// keeps two blocks per SM (about 110 KB of shared memory each) except dq and dk/dv at 256.
constexpr int forward_query_tile(int d) {
  return d <= 128 ? 64 : 32;
}
constexpr int forward_key_tile(int d) {
  return d <= 64 ? 64 : 32;
}
constexpr int decode_key_tile(int d) {
  return d <= 128 ? 64 : 32;
}
constexpr int dq_query_tile(int d) {
  return d <= 128 ? 64 : 32;
}
constexpr int dq_key_tile(int d) {
  return d <= 64 ? 64 : 32;
}
constexpr int key_grad_key_tile(int d) {
  return d <= 128 ? 64 : 32;
}
constexpr int key_grad_query_tile(int d) {
  return d <= 64 ? 64 : 32;
}

// ---- kernels ----------------------------------------------------------------------------------

// One block per (batch, KV head, tile of kBQ folded query rows, key split). The tile is the
// outermost part of the block index, latest tiles (the most keys under the causal mask) first, so
// the heavy blocks start early and the light ones fill in behind them.
template <int kD, int kBQ, int kBK>
__global__ void __launch_bounds__(kAttentionThreads,
                                  blocks_per_sm(ForwardTiles<kD, kBQ, kBK>::kSharedBytes))
    attention_forward_kernel(const AttentionArgs a) {
  constexpr int kLd = tile_ld<kD>();
  constexpr int kRowsPer = kBQ / kGridSide;  // query rows per thread
  constexpr int kKeysPer = kBK / kGridSide;  // keys per thread per tile
  constexpr int kPLd = kBK + 4;
  using Cols = ColumnMap<kD>;
  extern __shared__ float4 shared_words[];
  float* q_tile = reinterpret_cast<float*>(shared_words);
  float* k_tile = q_tile + kBQ * kLd;
  float* v_tile = k_tile + kBK * kLd;
  float* p_tile = v_tile + kBK * kLd;

  const int tx = threadIdx.x % kGridSide, ty = threadIdx.x / kGridSide;
  const int row_tiles = (a.rows + kBQ - 1) / kBQ;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int64_t rest = blockIdx.x / heads_total;
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int split = static_cast<int>(rest % a.splits);
  const int tile = row_tiles - 1 - static_cast<int>(rest / a.splits);
  const int r0 = tile * kBQ, r1 = min(r0 + kBQ, a.rows);

  // This block's keys: the split's chunk of [first_key, keys the last row may see).
  const int lo = first_key(a, b) + split * a.chunk;
  const int hi = static_cast<int>(min(static_cast<int64_t>(key_end(a, (r1 - 1) / a.group)),
                                      static_cast<int64_t>(lo) + a.chunk));

  stage_rows<kD, kBQ>(q_tile, a.q, a.dim, [&](int i) {
    return r0 + i < r1 ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
  });

  int limit[kRowsPer];  // one past the last key each of this thread's rows may use
  float row_max_so_far[kRowsPer], row_sum_part[kRowsPer];
  float acc[kRowsPer][Cols::kPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    limit[i] = r < r1 ? min(key_end(a, r / a.group), hi) : lo;
    row_max_so_far[i] = -INFINITY;
    row_sum_part[i] = 0.0f;
#pragma unroll
    for (int n = 0; n < Cols::kPerThread; ++n) acc[i][n] = 0.0f;
  }

  for (int k0 = lo; k0 < hi; k0 += kBK) {
    __syncthreads();  // the previous step's readers of k/v/p tiles are done (and q is staged)
    auto key_row = [&](int i) { return k0 + i < hi ? key_offset(a, b, kvh, k0 + i) : int64_t{-1}; };
    stage_rows<kD, kBK>(k_tile, a.k, a.dim, key_row);
    stage_rows<kD, kBK>(v_tile, a.v, a.dim, key_row);
    __syncthreads();

    float s[kRowsPer][kKeysPer];
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) s[i][j] = 0.0f;
    }
    accumulate_row_dots<kD>(q_tile, ty, k_tile, tx, s);

#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) {
        const int key = k0 + tx + kGridSide * j;
        s[i][j] = key < limit[i] ? s[i][j] * a.scale : -INFINITY;
        tile_max = fmaxf(tile_max, s[i][j]);
      }
      const float new_max = fmaxf(row_max_so_far[i], row_max(tile_max));
      // A row that has seen no key yet keeps max -inf; exponentiate against 0 so it stays 0.
      const float reference = new_max == -INFINITY ? 0.0f : new_max;
      const float rescale = expf(row_max_so_far[i] - reference);
      row_max_so_far[i] = new_max;
      row_sum_part[i] *= rescale;
#pragma unroll
      for (int n = 0; n < Cols::kPerThread; ++n) acc[i][n] *= rescale;
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) {
        const float p = expf(s[i][j] - reference);
        row_sum_part[i] += p;
        p_tile[(ty + kGridSide * i) * kPLd + tx + kGridSide * j] = p;
      }
    }
    __syncthreads();
    accumulate_weighted_rows<kD, kRowsPer, kBK>(p_tile, ty, v_tile, tx, acc);
  }

#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    const float sum = row_sum(row_sum_part[i]);  // every thread of the row takes part
    if (r >= r1) continue;
    if (a.splits == 1) {
      const bool seen = sum > 0.0f;  // false: the row sees no key (output 0, lse -inf)
      const float inv = seen ? 1.0f / sum : 0.0f;
      float* out = a.out + query_offset(a, b, kvh, r);
#pragma unroll
      for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
        for (int e = 0; e < Cols::kVec; ++e) {
          const int c = Cols::column(tx, g) + e;
          if (c < a.dim) out[c] = acc[i][g * Cols::kVec + e] * inv;
        }
      }
      if (tx == 0) {
        a.lse[head_row_index(a, b, kvh, r)] = seen ? row_max_so_far[i] + logf(sum) : -INFINITY;
      }
    } else {
      const int64_t slot =
          split * a.total_rows + (static_cast<int64_t>(b) * a.kv_heads + kvh) * a.rows + r;
      float* out = a.partial_out + slot * a.dim;
#pragma unroll
      for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
        for (int e = 0; e < Cols::kVec; ++e) {
          const int c = Cols::column(tx, g) + e;
          if (c < a.dim) out[c] = acc[i][g * Cols::kVec + e];
        }
      }
      if (tx == 0) a.partial_ml[slot] = make_float2(row_max_so_far[i], sum);
    }
  }
}

// Merges the key splits of the forward: one warp per folded row, splits summed in order.
__global__ void attention_combine_splits_kernel(const AttentionArgs a) {
  const int64_t id = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (id >= a.total_rows) return;
  const int r = static_cast<int>(id % a.rows);
  const int kvh = static_cast<int>((id / a.rows) % a.kv_heads);
  const int b = static_cast<int>(id / (static_cast<int64_t>(a.rows) * a.kv_heads));
  float* out = a.out + query_offset(a, b, kvh, r);
  float overall_max = -INFINITY;
  for (int s = 0; s < a.splits; ++s) {
    overall_max = fmaxf(overall_max, a.partial_ml[s * a.total_rows + id].x);
  }
  if (overall_max == -INFINITY) {  // no split saw a key
    for (int c = lane; c < a.dim; c += 32) out[c] = 0.0f;
    if (lane == 0) a.lse[head_row_index(a, b, kvh, r)] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (int s = 0; s < a.splits; ++s) {
    const float2 ml = a.partial_ml[s * a.total_rows + id];
    sum += ml.y * expf(ml.x - overall_max);  // an empty split has max -inf: weight 0
  }
  const float inv = 1.0f / sum;
  for (int c = lane; c < a.dim; c += 32) {
    float value = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const int64_t slot = s * a.total_rows + id;
      value += a.partial_out[slot * a.dim + c] * expf(a.partial_ml[slot].x - overall_max);
    }
    out[c] = value * inv;
  }
  if (lane == 0) a.lse[head_row_index(a, b, kvh, r)] = overall_max + logf(sum);
}

// delta[row, head] = dout . out over the head's dim columns; one warp per (row, head).
__global__ void attention_delta_kernel(const AttentionArgs a, int64_t pairs) {
  const int64_t pair = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= pairs) return;
  const int64_t base = (pair / a.heads) * a.q_ld + (pair % a.heads) * a.dim;
  float sum = 0.0f;
  for (int c = lane; c < a.dim; c += 32) sum = fmaf(a.dout[base + c], a.out[base + c], sum);
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) a.delta[pair] = sum;
}

// dq for one (batch, KV head, tile of kBQ folded query rows): over the keys the tile may see,
// dS = P (dO V^T - delta) and dq = scale dS K. Latest row tiles first, as in the forward.
template <int kD, int kBQ, int kBK>
__global__ void __launch_bounds__(kAttentionThreads,
                                  blocks_per_sm(DqTiles<kD, kBQ, kBK>::kSharedBytes))
    attention_dq_kernel(const AttentionArgs a) {
  constexpr int kLd = tile_ld<kD>();
  constexpr int kRowsPer = kBQ / kGridSide;
  constexpr int kKeysPer = kBK / kGridSide;
  constexpr int kSLd = kBK + 4;
  using Cols = ColumnMap<kD>;
  extern __shared__ float4 shared_words[];
  float* q_tile = reinterpret_cast<float*>(shared_words);
  float* do_tile = q_tile + kBQ * kLd;
  float* k_tile = do_tile + kBQ * kLd;
  float* v_tile = k_tile + kBK * kLd;
  float* ds_tile = v_tile + kBK * kLd;

  const int tx = threadIdx.x % kGridSide, ty = threadIdx.x / kGridSide;
  const int row_tiles = (a.rows + kBQ - 1) / kBQ;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int tile = row_tiles - 1 - static_cast<int>(blockIdx.x / heads_total);
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int r0 = tile * kBQ, r1 = min(r0 + kBQ, a.rows);
  const int lo = first_key(a, b);
  const int hi = key_end(a, (r1 - 1) / a.group);

  auto query_row = [&](int i) {
    return r0 + i < r1 ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
  };
  stage_rows<kD, kBQ>(q_tile, a.q, a.dim, query_row);
  stage_rows<kD, kBQ>(do_tile, a.dout, a.dim, query_row);

  int limit[kRowsPer];
  float row_lse[kRowsPer], row_delta[kRowsPer];
  float acc[kRowsPer][Cols::kPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    limit[i] = 0;  // no key
    row_lse[i] = 0.0f;
    row_delta[i] = 0.0f;
    if (r < r1) {
      const int64_t index = head_row_index(a, b, kvh, r);
      row_lse[i] = a.lse[index];
      row_delta[i] = a.delta[index];
      // An infinite lse marks a row that saw no key in the forward (the CPU's rule too).
      if (!isinf(row_lse[i])) limit[i] = key_end(a, r / a.group);
    }
#pragma unroll
    for (int n = 0; n < Cols::kPerThread; ++n) acc[i][n] = 0.0f;
  }

  for (int k0 = lo; k0 < hi; k0 += kBK) {
    __syncthreads();
    auto key_row = [&](int i) { return k0 + i < hi ? key_offset(a, b, kvh, k0 + i) : int64_t{-1}; };
    stage_rows<kD, kBK>(k_tile, a.k, a.dim, key_row);
    stage_rows<kD, kBK>(v_tile, a.v, a.dim, key_row);
    __syncthreads();

    float s[kRowsPer][kKeysPer], dp[kRowsPer][kKeysPer];
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) s[i][j] = dp[i][j] = 0.0f;
    }
    accumulate_row_dots<kD>(q_tile, ty, k_tile, tx, s);
    accumulate_row_dots<kD>(do_tile, ty, v_tile, tx, dp);
#pragma unroll
    for (int i = 0; i < kRowsPer; ++i) {
#pragma unroll
      for (int j = 0; j < kKeysPer; ++j) {
        const int key = k0 + tx + kGridSide * j;
        const float p = key < limit[i] ? expf(s[i][j] * a.scale - row_lse[i]) : 0.0f;
        ds_tile[(ty + kGridSide * i) * kSLd + tx + kGridSide * j] = p * (dp[i][j] - row_delta[i]);
      }
    }
    __syncthreads();
    accumulate_weighted_rows<kD, kRowsPer, kBK>(ds_tile, ty, k_tile, tx, acc);
  }

#pragma unroll
  for (int i = 0; i < kRowsPer; ++i) {
    const int r = r0 + ty + kGridSide * i;
    if (r >= r1) continue;
    float* dq = a.dq + query_offset(a, b, kvh, r);
#pragma unroll
    for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
      for (int e = 0; e < Cols::kVec; ++e) {
        const int c = Cols::column(tx, g) + e;
        if (c < a.dim) dq[c] = acc[i][g * Cols::kVec + e] * a.scale;
      }
    }
  }
}

// dk, dv for one (batch, KV head, tile of kBK keys of the capacity): over the folded query rows
// that may see the tile (every head of the group, in row order), dv += P^T dO and
// dk += scale dS^T Q. Keys nobody sees (before kv_start, at or past kv_len) get zeros.
template <int kD, int kBK, int kBQ>
__global__ void __launch_bounds__(kAttentionThreads,
                                  blocks_per_sm(KeyGradTiles<kD, kBK, kBQ>::kSharedBytes))
    attention_dkdv_kernel(const AttentionArgs a) {
  constexpr int kLd = tile_ld<kD>();
  constexpr int kKeysPer = kBK / kGridSide;  // key rows per thread
  constexpr int kRowsPer = kBQ / kGridSide;  // query rows per thread
  constexpr int kWLd = kBQ + 4;
  using Cols = ColumnMap<kD>;
  extern __shared__ float4 shared_words[];
  float* k_tile = reinterpret_cast<float*>(shared_words);
  float* v_tile = k_tile + kBK * kLd;
  float* q_tile = v_tile + kBK * kLd;
  float* do_tile = q_tile + kBQ * kLd;
  float* weight_tile = do_tile + kBQ * kLd;  // P^T, then dS^T
  float* tile_lse = weight_tile + kBK * kWLd;
  float* tile_delta = tile_lse + kBQ;
  int* tile_limit = reinterpret_cast<int*>(tile_delta + kBQ);

  const int tx = threadIdx.x % kGridSide, ty = threadIdx.x / kGridSide;
  const int64_t heads_total = static_cast<int64_t>(a.batch) * a.kv_heads;
  const int tile = static_cast<int>(blockIdx.x / heads_total);  // earliest keys (most rows) first
  const int b = static_cast<int>(blockIdx.x % heads_total / a.kv_heads);
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int j0 = tile * kBK;
  const int visible_lo = max(j0, first_key(a, b));
  const int visible_hi = min(j0 + kBK, a.kv_len);

  bool key_visible[kKeysPer];
  float dk_acc[kKeysPer][Cols::kPerThread], dv_acc[kKeysPer][Cols::kPerThread];
#pragma unroll
  for (int i = 0; i < kKeysPer; ++i) {
    const int j = j0 + ty + kGridSide * i;
    key_visible[i] = j >= visible_lo && j < visible_hi;
#pragma unroll
    for (int n = 0; n < Cols::kPerThread; ++n) dk_acc[i][n] = dv_acc[i][n] = 0.0f;
  }

  // The first query position that sees the tile's first visible key (earlier ones see none).
  const int64_t first_position = max(int64_t{0}, static_cast<int64_t>(visible_lo) - a.q_offset);
  if (visible_lo < visible_hi && first_position < a.q_len) {
    auto key_row = [&](int i) {
      const int j = j0 + i;
      return j >= visible_lo && j < visible_hi ? key_offset(a, b, kvh, j) : int64_t{-1};
    };
    stage_rows<kD, kBK>(k_tile, a.k, a.dim, key_row);
    stage_rows<kD, kBK>(v_tile, a.v, a.dim, key_row);

    for (int r0 = static_cast<int>(first_position) * a.group; r0 < a.rows; r0 += kBQ) {
      __syncthreads();  // the previous step's readers of q/dO/weight tiles are done
      auto query_row = [&](int i) {
        return r0 + i < a.rows ? query_offset(a, b, kvh, r0 + i) : int64_t{-1};
      };
      stage_rows<kD, kBQ>(q_tile, a.q, a.dim, query_row);
      stage_rows<kD, kBQ>(do_tile, a.dout, a.dim, query_row);
      if (threadIdx.x < kBQ) {
        const int r = r0 + threadIdx.x;
        float lse = 0.0f, delta = 0.0f;
        int limit = 0;  // no key
        if (r < a.rows) {
          const int64_t index = head_row_index(a, b, kvh, r);
          lse = a.lse[index];
          delta = a.delta[index];
          if (!isinf(lse)) limit = key_end(a, r / a.group);
        }
        tile_lse[threadIdx.x] = lse;
        tile_delta[threadIdx.x] = delta;
        tile_limit[threadIdx.x] = limit;
      }
      __syncthreads();

      float s[kKeysPer][kRowsPer], dp[kKeysPer][kRowsPer];
#pragma unroll
      for (int i = 0; i < kKeysPer; ++i) {
#pragma unroll
        for (int j = 0; j < kRowsPer; ++j) s[i][j] = dp[i][j] = 0.0f;
      }
      accumulate_row_dots<kD>(k_tile, ty, q_tile, tx, s);
      accumulate_row_dots<kD>(v_tile, ty, do_tile, tx, dp);
      // s becomes P^T (into the shared tile), dp becomes dS^T (kept until P^T has been used).
#pragma unroll
      for (int i = 0; i < kKeysPer; ++i) {
        const int key = j0 + ty + kGridSide * i;
#pragma unroll
        for (int j = 0; j < kRowsPer; ++j) {
          const int row = tx + kGridSide * j;
          const float p = key_visible[i] && key < tile_limit[row]
                              ? expf(s[i][j] * a.scale - tile_lse[row])
                              : 0.0f;
          weight_tile[(ty + kGridSide * i) * kWLd + row] = p;
          dp[i][j] = p * (dp[i][j] - tile_delta[row]);
        }
      }
      __syncthreads();
      accumulate_weighted_rows<kD, kKeysPer, kBQ>(weight_tile, ty, do_tile, tx, dv_acc);
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kKeysPer; ++i) {
#pragma unroll
        for (int j = 0; j < kRowsPer; ++j) {
          weight_tile[(ty + kGridSide * i) * kWLd + tx + kGridSide * j] = dp[i][j];
        }
      }
      __syncthreads();
      accumulate_weighted_rows<kD, kKeysPer, kBQ>(weight_tile, ty, q_tile, tx, dk_acc);
    }
  }

#pragma unroll
  for (int i = 0; i < kKeysPer; ++i) {
    const int j = j0 + ty + kGridSide * i;
    if (j >= a.kv_capacity) continue;
    const int64_t base = key_offset(a, b, kvh, j);
#pragma unroll
    for (int g = 0; g < Cols::kGroups; ++g) {
#pragma unroll
      for (int e = 0; e < Cols::kVec; ++e) {
        const int c = Cols::column(tx, g) + e;
        if (c < a.dim) {
          a.dk[base + c] = dk_acc[i][g * Cols::kVec + e] * a.scale;
          a.dv[base + c] = dv_acc[i][g * Cols::kVec + e];
        }
      }
    }
  }
}

// ---- launchers --------------------------------------------------------------------------------

struct DeviceLimits {
  int sms;
  int shared_bytes;  // dynamic shared memory one block may opt into
};

DeviceLimits device_limits(int device) {
  DeviceLimits limits{};
  NNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&limits.sms, cudaDevAttrMultiProcessorCount, device));
  NNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&limits.shared_bytes,
                                          cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return limits;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

template <typename Kernel, typename... Args>
void launch(const char* op, Kernel kernel, int64_t blocks, size_t shared_bytes,
            const DeviceLimits& limits, cudaStream_t stream, const Args&... args) {
  if (shared_bytes > static_cast<size_t>(limits.shared_bytes)) {
    kChecks.fail(op, "this head_dim needs " + std::to_string(shared_bytes) +
                         " bytes of shared memory per block; the GPU allows " +
                         std::to_string(limits.shared_bytes));
  }
  if (blocks > INT_MAX) {
    kChecks.fail(op, std::to_string(blocks) + " thread blocks exceed the CUDA grid limit");
  }
  if (shared_bytes > 48 * 1024) {
    NNKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    NNKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          cudaSharedmemCarveoutMaxShared));
  }
  kernel<<<static_cast<unsigned>(blocks), kAttentionThreads, shared_bytes, stream>>>(args...);
  NNKIT_CUDA_CHECK_LAUNCH(kernel);
}

// Calls fn with std::integral_constant<int, bucket>: the smallest of 32/64/128/256 >= dim.
template <typename Fn>
void with_head_dim_bucket(int dim, Fn&& fn) {
  if (dim <= 32) {
    fn(std::integral_constant<int, 32>{});
  } else if (dim <= 64) {
    fn(std::integral_constant<int, 64>{});
  } else if (dim <= 128) {
    fn(std::integral_constant<int, 128>{});
  } else {
    fn(std::integral_constant<int, 256>{});
  }
}

// The CPU's check_geometry plus this backend's limits; returns the kernel arguments (pointers
// unset).
AttentionArgs check_geometry(const char* op, const AttentionShape& s, const Tensor& q,
                             const Tensor& k, const Tensor& v, const Tensor& kv_start,
                             const Tensor& lse) {
  if (s.batch < 0 || s.q_len < 0 || s.kv_len < 0 || s.kv_capacity < s.kv_len || s.n_heads <= 0 ||
      s.n_kv_heads <= 0 || s.n_heads % s.n_kv_heads != 0 || s.head_dim <= 0 || s.q_offset < 0) {
    kChecks.fail(op, "bad AttentionShape: batch " + std::to_string(s.batch) + ", q_len " +
                         std::to_string(s.q_len) + ", kv_len " + std::to_string(s.kv_len) +
                         ", kv_capacity " + std::to_string(s.kv_capacity) + ", n_heads " +
                         std::to_string(s.n_heads) + ", n_kv_heads " +
                         std::to_string(s.n_kv_heads) + ", head_dim " + std::to_string(s.head_dim) +
                         ", q_offset " + std::to_string(s.q_offset) +
                         " (need kv_len <= kv_capacity and n_heads divisible by n_kv_heads)");
  }
  if (s.head_dim > kMaxHeadDim) {
    kChecks.fail(op, "head_dim " + std::to_string(s.head_dim) +
                         " is not supported; the CUDA attention kernels handle head_dim up to " +
                         std::to_string(kMaxHeadDim));
  }
  constexpr int64_t kIndexLimit = INT_MAX / 2;  // headroom for tile ends past the last row
  if (s.batch > kIndexLimit || s.q_len > kIndexLimit / s.n_heads || s.kv_capacity > kIndexLimit ||
      s.n_heads > kIndexLimit / s.head_dim) {
    kChecks.fail(op,
                 "shape too large for the CUDA attention kernels' 32-bit indices (batch, "
                 "q_len * n_heads, kv_capacity and n_heads * head_dim must each be below 2^30)");
  }
  kChecks.tensor(op, "q", q, DType::kF32, {s.batch * s.q_len, s.n_heads * s.head_dim});
  kChecks.tensor(op, "k", k, DType::kF32, {s.batch * s.kv_capacity, s.n_kv_heads * s.head_dim});
  kChecks.tensor(op, "v", v, DType::kF32, {s.batch * s.kv_capacity, s.n_kv_heads * s.head_dim});
  kChecks.tensor(op, "lse", lse, DType::kF32, {s.batch * s.q_len, s.n_heads});
  if (kv_start.defined()) kChecks.tensor(op, "kv_start", kv_start, DType::kI32, {s.batch});

  AttentionArgs a{};
  a.batch = static_cast<int>(s.batch);
  a.q_len = static_cast<int>(s.q_len);
  a.kv_len = static_cast<int>(s.kv_len);
  a.kv_capacity = static_cast<int>(s.kv_capacity);
  a.heads = static_cast<int>(s.n_heads);
  a.kv_heads = static_cast<int>(s.n_kv_heads);
  a.dim = static_cast<int>(s.head_dim);
  a.group = a.heads / a.kv_heads;
  a.rows = a.q_len * a.group;
  a.q_ld = a.heads * a.dim;
  a.kv_ld = a.kv_heads * a.dim;
  // Positions at or past kv_len all see keys up to kv_len - 1, so clamping changes nothing.
  a.q_offset = std::min(s.q_offset, s.kv_len);
  a.scale = s.scale;
  a.kv_start = kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr;
  a.splits = 1;
  a.chunk = a.kv_len;
  a.total_rows = static_cast<int64_t>(a.batch) * a.kv_heads * a.rows;
  return a;
}

template <int kD, int kBQ, int kBK>
void launch_forward(CudaBackend& backend, const char* op, AttentionArgs a,
                    const DeviceLimits& limits) {
  const int64_t row_tiles = ceil_div(a.rows, kBQ);
  const int64_t blocks = static_cast<int64_t>(a.batch) * a.kv_heads * row_tiles;
  // Keys a row tile may see at most (from key 0; kv_start only shortens the range).
  const int64_t span = std::min<int64_t>(a.kv_len, a.q_offset + a.q_len);
  // Too few blocks for two per SM: split the keys (never below one key tile per split).
  int64_t splits = 1;
  if (blocks < 2 * int64_t{limits.sms} && span > kBK) {
    splits = std::min(
        {ceil_div(2 * int64_t{limits.sms}, blocks), ceil_div(span, kBK), int64_t{kMaxKeySplits}});
  }
  Tensor partials;
  if (splits > 1) {
    const int64_t chunk = ceil_div(ceil_div(span, splits), kBK) * kBK;
    splits = ceil_div(span, chunk);
    a.chunk = static_cast<int>(chunk);
    a.splits = static_cast<int>(splits);
    const int64_t slots = splits * a.total_rows;
    partials =
        backend.scratch(static_cast<size_t>(slots) * (sizeof(float2) + sizeof(float) * a.dim));
    a.partial_ml = ptr<float2>(partials);
    a.partial_out = reinterpret_cast<float*>(a.partial_ml + slots);
  }
  launch(op, attention_forward_kernel<kD, kBQ, kBK>, blocks * a.splits,
         ForwardTiles<kD, kBQ, kBK>::kSharedBytes, limits, backend.stream(), a);
  if (a.splits > 1) {
    constexpr int kRowsPerBlock = kAttentionThreads / 32;
    launch(op, attention_combine_splits_kernel, ceil_div(a.total_rows, kRowsPerBlock), 0, limits,
           backend.stream(), a);
  }
}

}  // namespace

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& kv_start, const Tensor& out, const Tensor& lse,
                                    const AttentionShape& shape) {
  OpScope op_scope(profiler_.get(), "attention_forward");
  const char* op = "attention_forward";
  AttentionArgs a = check_geometry(op, shape, q, k, v, kv_start, lse);
  kChecks.tensor(op, "out", out, DType::kF32, q.shape());
  if (a.batch == 0 || a.q_len == 0) return;
  a.q = ptr<float>(q);
  a.k = ptr<float>(k);
  a.v = ptr<float>(v);
  a.out = ptr<float>(out);
  a.lse = ptr<float>(lse);
  const DeviceLimits limits = device_limits(device().index);
  with_head_dim_bucket(a.dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    if (a.rows <= kDecodeRows) {  // decoding: one query position per sequence (times the group)
      launch_forward<kD, kDecodeRows, decode_key_tile(kD)>(*this, op, a, limits);
    } else {
      launch_forward<kD, forward_query_tile(kD), forward_key_tile(kD)>(*this, op, a, limits);
    }
  });
}

void CudaBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& kv_start, const Tensor& out,
                                     const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                     const Tensor& dv, const AttentionShape& shape) {
  OpScope op_scope(profiler_.get(), "attention_backward");
  const char* op = "attention_backward";
  AttentionArgs a = check_geometry(op, shape, q, k, v, kv_start, lse);
  kChecks.tensor(op, "out", out, DType::kF32, q.shape());
  kChecks.tensor(op, "dout", dout, DType::kF32, q.shape());
  kChecks.tensor(op, "dq", dq, DType::kF32, q.shape());
  kChecks.tensor(op, "dk", dk, DType::kF32, k.shape());
  kChecks.tensor(op, "dv", dv, DType::kF32, v.shape());
  if (a.batch == 0) return;  // every tensor is empty
  if (a.q_len == 0) {        // no query sees anything: dk, dv are zeros
    if (dk.nbytes() > 0) {
      NNKIT_CUDA_CHECK(cudaMemsetAsync(dk.raw(), 0, dk.nbytes(), stream()));
      NNKIT_CUDA_CHECK(cudaMemsetAsync(dv.raw(), 0, dv.nbytes(), stream()));
    }
    return;
  }
  a.q = ptr<float>(q);
  a.k = ptr<float>(k);
  a.v = ptr<float>(v);
  a.dout = ptr<float>(dout);
  a.out = ptr<float>(out);
  a.lse = ptr<float>(lse);
  a.dq = ptr<float>(dq);
  a.dk = ptr<float>(dk);
  a.dv = ptr<float>(dv);
  const DeviceLimits limits = device_limits(device().index);

  const int64_t pairs = static_cast<int64_t>(a.batch) * a.q_len * a.heads;
  Tensor delta = scratch(static_cast<size_t>(pairs) * sizeof(float));
  a.delta = ptr<float>(delta);
  constexpr int kPairsPerBlock = kAttentionThreads / 32;
  launch(op, attention_delta_kernel, ceil_div(pairs, kPairsPerBlock), 0, limits, stream(), a,
         pairs);

  with_head_dim_bucket(a.dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    constexpr int kDqRows = dq_query_tile(kD), kDqKeys = dq_key_tile(kD);
    launch(op, attention_dq_kernel<kD, kDqRows, kDqKeys>,
           static_cast<int64_t>(a.batch) * a.kv_heads * ceil_div(a.rows, kDqRows),
           DqTiles<kD, kDqRows, kDqKeys>::kSharedBytes, limits, stream(), a);
    if (a.kv_capacity == 0) return;
    constexpr int kGradKeys = key_grad_key_tile(kD), kGradRows = key_grad_query_tile(kD);
    launch(op, attention_dkdv_kernel<kD, kGradKeys, kGradRows>,
           static_cast<int64_t>(a.batch) * a.kv_heads * ceil_div(a.kv_capacity, kGradKeys),
           KeyGradTiles<kD, kGradKeys, kGradRows>::kSharedBytes, limits, stream(), a);
  });
}

}  // namespace nnkit::cuda
