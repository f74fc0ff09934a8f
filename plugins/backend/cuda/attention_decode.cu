// Purpose: backend/cuda attention_decode: one new query position per sequence against the KV
// cache, with the cache length read from device memory (one recorded CUDA Graph serves every
// token). Owned by backend/cuda.
//
// Split-K ("flash decoding"). The cache is cut into `chunks` spans sized so that the grid fills
// the GPU about twice; one block per (span, sequence, KV head, tile of <= 16 query heads; 4 when
// the cache is too short for its spans to fill the GPU) walks
// its span in tiles of keys: the tile's K and V rows are staged in shared memory once for all of
// the block's heads (with MQA every head shares them), scores and an online softmax run per head,
// and the block leaves an unnormalised partial output with its max and sum of exponentials.
// The last block of a (sequence, KV head, head tile) to finish (an arrival counter, reset by that
// block, so replays need no memset) combines the spans in span order and writes the output:
// one launch per call. A cache of at most kSingleSpanKeys keys (decoding a short context) is one
// span: its blocks normalise the output themselves, with no partials and no combine round trips.
// Every block loads its next tile while it works on the current one. Spans past the device
// length exit at once, so the grid depends only on the capacity. Statistics and partials are f32,
// the output is rounded once, and every sum runs in a fixed order: results repeat bit for bit.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../common/composed_ops.h"
#include "attention_common.cuh"
#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "kernel_utils.cuh"
#include "mma_m16n8k16.cuh"
#include "rope_frequency.h"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kHeadsPerBlock = 16;    // query heads of one KV head per block, at most
constexpr int kFewHeadsPerBlock = 4;  // when the cache is too short to fill the GPU with spans
constexpr int kThreadsPerBlock = 256;
constexpr int64_t kSingleSpanKeys = 256;  // caches up to this long run as one span per block

// Keys per shared-memory tile: K and V tiles of kTile x kD floats stay near 16 KB each.
constexpr int tile_keys(int head_dim) {
  return head_dim <= 64 ? 64 : (head_dim <= 128 ? 32 : 8);
}
// Spans per sequence at most: the combine keeps a weight per (head, span) in the K tile's memory.
constexpr int max_spans(int head_dim) {
  return tile_keys(head_dim) * (head_dim + 1) / kHeadsPerBlock;
}

struct DecodeGeometry {
  int batch, heads, kv_heads, dim, capacity;
  int chunks, chunk_keys;  // spans per sequence and keys per span (a multiple of the tile)
  int head_tiles;          // tiles of heads_per_block query heads per KV head
  int heads_per_block;     // kHeadsPerBlock, or kFewHeadsPerBlock for short caches
  float scale;
};

// Grid (chunks, batch, kv_heads * head_tiles). Partials: o (B, chunks, H, D), m and l (B, chunks,
// H). arrivals: one zeroed counter per (sequence, grid.z), or null when a separate combine runs.
// Two blocks a multiprocessor as the launch bound up to head dim 128 (left free, ptxas took
// 160-170 registers: one block of eight warps a multiprocessor, too few to stream a long cache).
template <typename T, int kD>
__global__ void __launch_bounds__(kThreadsPerBlock, kD <= 128 ? 2 : 1)
    attention_decode_kernel(const T* q, const T* k, const T* v, const int32_t* kv_start,
                            const int32_t* kv_len_device, DecodeGeometry g, float* part_o,
                            float* part_m, float* part_l, int32_t* arrivals, T* out) {
  constexpr int kTile = tile_keys(kD);
  constexpr int kLoadsPerThread = kTile * kD / kThreadsPerBlock;
  constexpr int kOutputsPerThread = kHeadsPerBlock * kD / kThreadsPerBlock;
  constexpr int kScoreHeads = kHeadsPerBlock * kTile / kThreadsPerBlock;  // scores a thread
  static_assert(kThreadsPerBlock % kTile == 0 && kThreadsPerBlock % kD == 0 && kTile % 4 == 0 &&
                kHeadsPerBlock % (kScoreHeads > 0 ? kScoreHeads : 1) == 0);
  // +4: a warp reading 16-byte pieces of many keys' rows touches every bank once per phase.
  __shared__ __align__(16) float k_tile[kTile][kD + 4];
  __shared__ float v_tile[kTile][kD];
  __shared__ __align__(16) float q_shared[kHeadsPerBlock][kD];
  __shared__ __align__(16) float p_shared[kHeadsPerBlock][kTile];
  __shared__ float m_run[kHeadsPerBlock], l_run[kHeadsPerBlock], rescale[kHeadsPerBlock];
  __shared__ bool combine_here;
  wait_for_preceding_grid();
  allow_dependent_launch();

  const int chunk = blockIdx.x, b = blockIdx.y;
  const int kvh = blockIdx.z / g.head_tiles;
  const int group = g.heads / g.kv_heads;
  const int tile_in_group = blockIdx.z % g.head_tiles;
  const int h0 = kvh * group + tile_in_group * g.heads_per_block;
  const int hn = min(g.heads_per_block, group - tile_in_group * g.heads_per_block);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int dim = g.dim;
  const int kv_len = min(*kv_len_device, g.capacity);
  const int first = kv_start != nullptr ? max(0, kv_start[b]) : 0;
  const int begin = max(first, chunk * g.chunk_keys);
  const int end = min(kv_len, (chunk + 1) * g.chunk_keys);
  const int64_t stat = (int64_t(b) * g.chunks + chunk) * g.heads + h0;
  const int64_t kv_ld = int64_t(g.kv_heads) * dim;
  const T* k_rows = k + int64_t(b) * g.capacity * kv_ld + int64_t(kvh) * dim;
  const T* v_rows = v + int64_t(b) * g.capacity * kv_ld + int64_t(kvh) * dim;

  for (int i = tid; i < kHeadsPerBlock * kD; i += kThreadsPerBlock) {
    const int h = i / kD, d = i % kD;
    q_shared[h][d] =
        h < hn && d < dim ? to_float(q[(int64_t(b) * g.heads + h0 + h) * dim + d]) : 0.0f;
  }
  if (tid < kHeadsPerBlock) {
    m_run[tid] = -INFINITY;
    l_run[tid] = 0.0f;
  }
  float acc[kOutputsPerThread];
#pragma unroll
  for (int r = 0; r < kOutputsPerThread; ++r) acc[r] = 0.0f;
  // No barrier here: the first tile's staging does not read q_shared, so its loads go out
  // together with q's, and the barrier after the staging publishes both (m_run and l_run are
  // read only after it too). An empty span reads nothing shared but its own thread's stats.

  // The tile's K and V elements this thread stages, loaded one tile ahead: the next tile's loads
  // are in flight while this one's scores, softmax and products run (keys outside [begin, end)
  // as zeros: a zero weight times a stale row of the cache could still be NaN).
  float k_next[kLoadsPerThread], v_next[kLoadsPerThread];
  auto load_tile = [&](int j0) {
#pragma unroll
    for (int r = 0; r < kLoadsPerThread; ++r) {
      const int i = tid + r * kThreadsPerBlock;
      const int key = i / kD, d = i % kD;
      const int j = j0 + key;
      const bool live = j < end && d < dim;
      k_next[r] = live ? to_float(k_rows[int64_t(j) * kv_ld + d]) : 0.0f;
      v_next[r] = live ? to_float(v_rows[int64_t(j) * kv_ld + d]) : 0.0f;
    }
  };
  if (begin < end) load_tile(begin);
  for (int j0 = begin; j0 < end; j0 += kTile) {
#pragma unroll
    for (int r = 0; r < kLoadsPerThread; ++r) {
      const int i = tid + r * kThreadsPerBlock;
      k_tile[i / kD][i % kD] = k_next[r];
      v_tile[i / kD][i % kD] = v_next[r];
    }
    if (j0 + kTile < end) load_tile(j0 + kTile);
    __syncthreads();
    // Scores: a thread per key and group of kScoreHeads heads reads its key's row once (16 bytes
    // at a time) for all of them and the heads' queries as broadcasts: ~0.3 shared-memory reads
    // a multiply-add where one score a thread took two (the tile walk was bound by them). Each
    // dot still sums d in order. (Head dim 256's 8-key tiles have fewer scores than threads: a
    // thread a score there.)
    if constexpr (kScoreHeads == 0) {
      for (int i = tid; i < hn * kTile; i += kThreadsPerBlock) {
        const int h = i / kTile, key = i % kTile;
        float dot = 0.0f;
        for (int d = 0; d < kD; ++d) dot += q_shared[h][d] * k_tile[key][d];
        p_shared[h][key] = j0 + key < end ? dot * g.scale : -INFINITY;
      }
    } else {
      const int key = tid % kTile, first_head = (tid / kTile) * kScoreHeads;
      float dot[kScoreHeads];
#pragma unroll
      for (int j = 0; j < kScoreHeads; ++j) dot[j] = 0.0f;
#pragma unroll 4
      for (int d = 0; d < kD; d += 4) {
        const float4 kv = *reinterpret_cast<const float4*>(&k_tile[key][d]);
#pragma unroll
        for (int j = 0; j < kScoreHeads; ++j) {
          const float4 qv = *reinterpret_cast<const float4*>(&q_shared[first_head + j][d]);
          dot[j] += qv.x * kv.x;
          dot[j] += qv.y * kv.y;
          dot[j] += qv.z * kv.z;
          dot[j] += qv.w * kv.w;
        }
      }
#pragma unroll
      for (int j = 0; j < kScoreHeads; ++j) {
        if (first_head + j < hn) {
          p_shared[first_head + j][key] = j0 + key < end ? dot[j] * g.scale : -INFINITY;
        }
      }
    }
    __syncthreads();
    // Online softmax, a warp per head: p <- exp(s - running max), rescale = exp(old - new max).
    for (int h = warp; h < hn; h += kThreadsPerBlock / 32) {
      float tile_max = -INFINITY;
      for (int key = lane; key < kTile; key += 32) tile_max = fmaxf(tile_max, p_shared[h][key]);
      tile_max = warp_max(tile_max);
      const float old_max = m_run[h];
      const float new_max = fmaxf(old_max, tile_max);
      float sum = 0.0f;
      for (int key = lane; key < kTile; key += 32) {
        const float p = new_max == -INFINITY ? 0.0f : expf(p_shared[h][key] - new_max);
        p_shared[h][key] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float factor = old_max == -INFINITY ? 0.0f : expf(old_max - new_max);
        rescale[h] = factor;
        l_run[h] = l_run[h] * factor + sum;
        m_run[h] = new_max;
      }
    }
    __syncthreads();
    // Values: each value element is read once for the thread's kOutputsPerThread heads, and
    // their weights four keys at a time (broadcasts); each output still sums the keys in order.
    {
      const int d = tid % kD, first_head = tid / kD;
      constexpr int kHeadStride = kThreadsPerBlock / kD;
      float sum[kOutputsPerThread];
#pragma unroll
      for (int r = 0; r < kOutputsPerThread; ++r) sum[r] = 0.0f;
#pragma unroll 2
      for (int key = 0; key < kTile; key += 4) {
        const float v0 = v_tile[key][d], v1 = v_tile[key + 1][d], v2 = v_tile[key + 2][d],
                    v3 = v_tile[key + 3][d];
#pragma unroll
        for (int r = 0; r < kOutputsPerThread; ++r) {
          const float4 p =
              *reinterpret_cast<const float4*>(&p_shared[first_head + r * kHeadStride][key]);
          sum[r] += p.x * v0;
          sum[r] += p.y * v1;
          sum[r] += p.z * v2;
          sum[r] += p.w * v3;
        }
      }
#pragma unroll
      for (int r = 0; r < kOutputsPerThread; ++r) {
        const int h = first_head + r * kHeadStride;
        if (h < hn) acc[r] = acc[r] * rescale[h] + sum[r];
      }
    }
    __syncthreads();  // the next tile overwrites k_tile, v_tile and p_shared
  }

  if (g.chunks == 1) {
    // An empty span never passed the loop's barriers: this one publishes its statistics.
    __syncthreads();
    // One span holds every key: its statistics are final, so the block writes the normalised
    // output itself (no partials, no combine).
#pragma unroll
    for (int r = 0; r < kOutputsPerThread; ++r) {
      const int i = tid + r * kThreadsPerBlock;
      const int h = i / kD, d = i % kD;
      if (h < hn && d < dim) {
        const float l = l_run[h];
        out[(int64_t(b) * g.heads + h0 + h) * dim + d] =
            from_float<T>(l > 0.0f ? acc[r] / l : 0.0f);
      }
    }
    return;
  }
  // This span's partial (an empty span: m = -inf, l = 0, o = 0).
#pragma unroll
  for (int r = 0; r < kOutputsPerThread; ++r) {
    const int i = tid + r * kThreadsPerBlock;
    const int h = i / kD, d = i % kD;
    if (h < hn && d < dim) part_o[(stat + h) * dim + d] = acc[r];
  }
  if (tid < hn) {
    part_m[stat + tid] = m_run[tid];
    part_l[stat + tid] = l_run[tid];
  }
  if (arrivals == nullptr) return;

  // The last block of this (sequence, heads) to arrive combines every span.
  __threadfence();
  __syncthreads();
  int32_t* counter = arrivals + int64_t(b) * gridDim.z + blockIdx.z;
  if (tid == 0) combine_here = atomicAdd(counter, 1) == g.chunks - 1;
  __syncthreads();
  if (!combine_here) return;
  __threadfence();
  // Each span's weight exp(m_c - max) / total per head (a warp per head) into the K tile's
  // memory, then every output element sums its spans' partials in span order.
  float* weights = &k_tile[0][0];  // (hn, chunks): max_spans() keeps it inside the tile
  // A lane's spans' statistics are loaded at once (one round trip where a loop over them took
  // one per 32 spans and pass).
  constexpr int kSpansPerLane = (max_spans(kD) + 31) / 32;
  for (int h = warp; h < hn; h += kThreadsPerBlock / 32) {
    const int64_t head_stat = int64_t(b) * g.chunks * g.heads + h0 + h;
    float m_span[kSpansPerLane], l_span[kSpansPerLane];
#pragma unroll
    for (int i = 0; i < kSpansPerLane; ++i) {
      const int c = lane + 32 * i;
      const int64_t s = head_stat + int64_t(c) * g.heads;
      m_span[i] = c < g.chunks ? __ldcg(part_m + s) : -INFINITY;
      l_span[i] = c < g.chunks ? __ldcg(part_l + s) : 0.0f;
    }
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kSpansPerLane; ++i) mx = fmaxf(mx, m_span[i]);
    mx = warp_max(mx);
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < kSpansPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < g.chunks) {
        const float l = l_span[i];
        const float w = l == 0.0f || mx == -INFINITY ? 0.0f : expf(m_span[i] - mx);
        weights[h * g.chunks + c] = w;
        total += w * l;
      }
    }
    total = warp_sum(total);
    const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
    for (int c = lane; c < g.chunks; c += 32) weights[h * g.chunks + c] *= inverse;
  }
  __syncthreads();
  const int64_t o_ld = int64_t(g.heads) * dim;  // floats between one span's partials
  if (dim % 4 == 0) {  // four elements per thread: a quarter of the dependent loads
    const int quads = dim / 4;
    for (int i = tid; i < hn * quads; i += kThreadsPerBlock) {
      const int h = i / quads, d = (i % quads) * 4;
      const float* o = part_o + (int64_t(b) * g.chunks * g.heads + h0 + h) * dim + d;
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 16
      for (int c = 0; c < g.chunks; ++c) {
        const float w = weights[h * g.chunks + c];
        const float4 part = __ldcg(reinterpret_cast<const float4*>(o + c * o_ld));
        sum.x += w * part.x;
        sum.y += w * part.y;
        sum.z += w * part.z;
        sum.w += w * part.w;
      }
      T* dst = out + (int64_t(b) * g.heads + h0 + h) * dim + d;
      dst[0] = from_float<T>(sum.x);
      dst[1] = from_float<T>(sum.y);
      dst[2] = from_float<T>(sum.z);
      dst[3] = from_float<T>(sum.w);
    }
  } else {
    for (int i = tid; i < hn * dim; i += kThreadsPerBlock) {
      const int h = i / dim, d = i % dim;
      const float* o = part_o + (int64_t(b) * g.chunks * g.heads + h0 + h) * dim + d;
      float sum = 0.0f;
#pragma unroll 8
      for (int c = 0; c < g.chunks; ++c) sum += weights[h * g.chunks + c] * __ldcg(o + c * o_ld);
      out[(int64_t(b) * g.heads + h0 + h) * dim + d] = from_float<T>(sum);
    }
  }
  if (tid == 0) *counter = 0;  // ready for the next call (or replay)
}

// A short cache resident in shared memory (16-bit K and V, head_dim 64 or 128): one block per
// (sequence, tile of <= kResidentMaxHeads query heads) holds every key of its sequence, so the
// whole call is one round of loads and three barriers, where the tile walk above pays a load
// round trip and four barriers per 64 keys on a handful of blocks (a 145-key cache at batch 1
// took ~8 us on three blocks). Before its wait the block pulls its rows into L2 (nothing read
// there can be stale: the rows are loaded again after the wait); then every row goes into shared
// memory with cp.async at once. Scores: eight lanes per key, 16-byte reads of a row. Values: a
// lane per key slice, a warp per 8-element pack of the output, the rows padded by one pack so the
// slices' reads fall in distinct banks. Fixed orders throughout: the output repeats bit for bit.
constexpr int kResidentMaxHeads = 4;
constexpr int kResidentLanesPerKey = 8;
constexpr size_t kResidentMaxShared = 160 << 10;

template <int kD>
constexpr int resident_row() {
  return kD + 8;  // elements: one 16-byte pack of padding per row
}

size_t resident_shared_bytes(int64_t capacity, int64_t head_dim, int64_t heads) {
  return size_t(capacity) * size_t(head_dim + 8) * 2 * 2 +
         size_t(heads) * size_t(capacity) * sizeof(float);
}

// attention_decode_rope's inputs (kRope): the step's qkv rows, their positions and the rotation's
// frequencies (computed on the host as rope.cu computes them), the append row and the caches to
// write (k and v of the kernel, writable).
constexpr int kResidentMaxHalf = 64;  // head_dim 128
template <typename T>
struct RopeAppendArgs {
  const T* qkv = nullptr;  // (B, (H + 2 Hkv) * D)
  const int32_t* positions = nullptr;
  const int32_t* cache_len = nullptr;
  T* k_cache = nullptr;
  T* v_cache = nullptr;
  DeviceFault* fault = nullptr;
  double freq[kResidentMaxHalf] = {};
};

// kRope (attention_decode_rope): the block rotates its heads' queries and the step's key itself
// (rope_kv_append's arithmetic, so the same bits), puts the new key and value into its staged
// rows, and the first block of each (sequence, KV head) appends them to the caches: no
// rope_kv_append launch, and no block reads a row another block is writing.
template <typename T, int kD, bool kRope = false>
__global__ void __launch_bounds__(kThreadsPerBlock)
    attention_decode_resident_kernel(const T* q, const T* k, const T* v, const int32_t* kv_start,
                                     const int32_t* kv_len_device, DecodeGeometry g, T* out,
                                     RopeAppendArgs<T> rope) {
  static_assert(sizeof(T) == 2 && (kD == 64 || kD == 128));
  constexpr int kRow = resident_row<kD>();
  constexpr int kPacksPerRow = kD / 8;
  constexpr int kPacksPerLane = kPacksPerRow / kResidentLanesPerKey;  // scores: 1 or 2
  constexpr int kKeyGroups = kThreadsPerBlock / kResidentLanesPerKey;
  constexpr int kWarps = kThreadsPerBlock / 32;
  constexpr int kPacksPerWarp = kPacksPerRow / kWarps;  // values: 1 or 2
  extern __shared__ uint4 resident_shared[];
  T* k_s = reinterpret_cast<T*>(resident_shared);
  T* v_s = k_s + int64_t(g.capacity) * kRow;
  float* p_s = reinterpret_cast<float*>(v_s + int64_t(g.capacity) * kRow);  // (hn, capacity)
  __shared__ float l_s[kResidentMaxHeads];

  const int b = blockIdx.y;
  const int kvh = blockIdx.z / g.head_tiles;
  const int group = g.heads / g.kv_heads;
  const int tile_in_group = blockIdx.z % g.head_tiles;
  const int h0 = kvh * group + tile_in_group * g.heads_per_block;
  const int hn = min(g.heads_per_block, group - tile_in_group * g.heads_per_block);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t kv_ld = int64_t(g.kv_heads) * kD;
  const T* k_seq = k + int64_t(b) * g.capacity * kv_ld + int64_t(kvh) * kD;
  const T* v_seq = v + int64_t(b) * g.capacity * kv_ld + int64_t(kvh) * kD;
  // Into L2 before the wait. The lengths read here only choose what to prefetch (a predecessor
  // could still be writing them: the call reads them again after the wait).
  constexpr int kLinesPerRow = kD * 2 / 128;
  {
    const int len = min(*kv_len_device, g.capacity);
    const int start = kv_start != nullptr ? min(max(0, kv_start[b]), len) : 0;
    for (int i = tid; i < (len - start) * kLinesPerRow; i += kThreadsPerBlock) {
      const int64_t offset = int64_t(start + i / kLinesPerRow) * kv_ld + (i % kLinesPerRow) * 64;
      prefetch_to_l2(k_seq + offset);
      prefetch_to_l2(v_seq + offset);
    }
  }
  wait_for_preceding_grid();
  allow_dependent_launch();

  const int kv_len = min(*kv_len_device, g.capacity);
  const int first = kv_start != nullptr ? min(max(0, kv_start[b]), kv_len) : 0;
  const int keys = kv_len - first;
  const T* k_rows = k_seq + int64_t(first) * kv_ld;
  const T* v_rows = v_seq + int64_t(first) * kv_ld;
  // kRope: the appended row (as rope_kv_append: at *cache_len when it fits, else a fault and no
  // append) and its place among the staged rows (-1: not staged).
  int append = 0, new_row = -1;
  bool fits = false;
  if constexpr (kRope) {
    append = *rope.cache_len;
    fits = append >= 0 && append + 1 <= g.capacity;
    if (fits && append >= first && append < kv_len) new_row = append - first;
    if (!fits && b == 0 && blockIdx.z == 0 && tid == 0) {
      report_fault(rope.fault, FaultOp::kKvCacheAppend, append + 1, g.capacity + 1, 0);
    }
  }
  for (int i = tid; i < keys * kPacksPerRow; i += kThreadsPerBlock) {
    const int row = i / kPacksPerRow, pack = i % kPacksPerRow;
    if (kRope && row == new_row) continue;  // written below from this block's own rotation
    cp_async_16(k_s + row * kRow + pack * 8, k_rows + int64_t(row) * kv_ld + pack * 8);
    cp_async_16(v_s + row * kRow + pack * 8, v_rows + int64_t(row) * kv_ld + pack * 8);
  }
  cp_async_commit();
  __shared__ T q_rotated[kRope ? kResidentMaxHeads * kD : 1];
  if constexpr (kRope) {
    // rope_kv_append's work for this block: its heads' query pairs, the key's pairs, the value.
    constexpr int kHalf = kD / 2;
    const T* qkv_row = rope.qkv + int64_t(b) * (g.heads + 2 * g.kv_heads) * kD;
    const double position = double(rope.positions[b]);
    const bool writer = tile_in_group == 0;
    T* k_append = rope.k_cache + (int64_t(b) * g.capacity + append) * kv_ld + int64_t(kvh) * kD;
    T* v_append = rope.v_cache + (int64_t(b) * g.capacity + append) * kv_ld + int64_t(kvh) * kD;
    for (int t = tid; t < (hn + 1) * kHalf + kD; t += kThreadsPerBlock) {
      if (t < (hn + 1) * kHalf) {
        const int i = t % kHalf, head = t / kHalf;  // head < hn: query h0 + head; hn: the key
        double s_angle, c_angle;
        sincos(position * rope.freq[i], &s_angle, &c_angle);
        const float c = static_cast<float>(c_angle), s = static_cast<float>(s_angle);
        const T* x1 = qkv_row + (head < hn ? h0 + head : g.heads + kvh) * kD;
        const float a = to_float(x1[i]), b2 = to_float(x1[i + kHalf]);
        const T first_half = from_float<T>(a * c - b2 * s);
        const T second_half = from_float<T>(b2 * c + a * s);
        if (head < hn) {
          q_rotated[head * kD + i] = first_half;
          q_rotated[head * kD + i + kHalf] = second_half;
        } else if (fits) {
          if (new_row >= 0) {
            k_s[new_row * kRow + i] = first_half;
            k_s[new_row * kRow + i + kHalf] = second_half;
          }
          if (writer) {
            k_append[i] = first_half;
            k_append[i + kHalf] = second_half;
          }
        }
      } else if (fits) {
        const int d = t - (hn + 1) * kHalf;
        const T value = qkv_row[(g.heads + g.kv_heads + kvh) * kD + d];
        if (new_row >= 0) v_s[new_row * kRow + d] = value;
        if (writer) v_append[d] = value;
      }
    }
    __syncthreads();  // q_rotated
  }
  // This lane's slice of each head's query for the scores (while the rows land).
  const int key_lane = tid % kResidentLanesPerKey, key_group = tid / kResidentLanesPerKey;
  float q_r[kResidentMaxHeads][kPacksPerLane][8];
#pragma unroll
  for (int h = 0; h < kResidentMaxHeads; ++h) {
#pragma unroll
    for (int p = 0; p < kPacksPerLane; ++p) {
      if (h < hn) {
        if constexpr (kRope) {
          load_floats<8>(q_rotated + h * kD + (p * kResidentLanesPerKey + key_lane) * 8, q_r[h][p]);
        } else {
          load_floats<8>(
              q + (int64_t(b) * g.heads + h0 + h) * kD + (p * kResidentLanesPerKey + key_lane) * 8,
              q_r[h][p]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Scores: key j's eight lanes each dot their packs, then sum across the eight (every warp runs
  // the same trips: the shuffles need all its lanes).
  for (int j0 = 0; j0 < keys; j0 += kKeyGroups) {
    const int j = j0 + key_group;
    const bool live = j < keys;
    float dot[kResidentMaxHeads];
#pragma unroll
    for (int h = 0; h < kResidentMaxHeads; ++h) dot[h] = 0.0f;
#pragma unroll
    for (int p = 0; p < kPacksPerLane; ++p) {
      float kf[8];
      load_floats<8>(k_s + (live ? j : 0) * kRow + (p * kResidentLanesPerKey + key_lane) * 8, kf);
#pragma unroll
      for (int h = 0; h < kResidentMaxHeads; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e) dot[h] += q_r[h][p][e] * kf[e];
      }
    }
#pragma unroll
    for (int h = 0; h < kResidentMaxHeads; ++h) {
#pragma unroll
      for (int offset = kResidentLanesPerKey / 2; offset > 0; offset >>= 1) {
        dot[h] += __shfl_xor_sync(0xffffffffu, dot[h], offset);
      }
      if (live && key_lane == 0 && h < hn) p_s[h * g.capacity + j] = dot[h] * g.scale;
    }
  }
  __syncthreads();
  // Softmax, a warp per head: p <- exp(s - max), l = sum p.
  if (warp < hn) {
    float* row = p_s + warp * g.capacity;
    float mx = -INFINITY;
    for (int j = lane; j < keys; j += 32) mx = fmaxf(mx, row[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < keys; j += 32) {
      const float p = expf(row[j] - mx);
      row[j] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) l_s[warp] = sum;
  }
  __syncthreads();
  // Values: lane = key slice, warp = output pack(s); the 32 slices are summed by shuffles.
#pragma unroll
  for (int wp = 0; wp < kPacksPerWarp; ++wp) {
    const int pack = wp * kWarps + warp;
    float acc[kResidentMaxHeads][8];
#pragma unroll
    for (int h = 0; h < kResidentMaxHeads; ++h) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
    }
    for (int j = lane; j < keys; j += 32) {
      float vf[8];
      load_floats<8>(v_s + j * kRow + pack * 8, vf);
#pragma unroll
      for (int h = 0; h < kResidentMaxHeads; ++h) {
        if (h < hn) {
          const float p = p_s[h * g.capacity + j];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h][e] += p * vf[e];
        }
      }
    }
#pragma unroll
    for (int h = 0; h < kResidentMaxHeads; ++h) {
      if (h >= hn) continue;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[h][e] = warp_sum(acc[h][e]);
      if (lane < 8) {
        float value = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) value = lane == e ? acc[h][e] : value;
        const float l = l_s[h];
        out[(int64_t(b) * g.heads + h0 + h) * kD + pack * 8 + lane] =
            from_float<T>(keys > 0 && l > 0.0f ? value / l : 0.0f);
      }
    }
  }
}

bool allow_resident_shared_memory(const void* kernel) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              int(kResidentMaxShared)) == cudaSuccess;
}

// The combine as its own launch, for grids with more (sequence, heads) pairs than counters.
// One block per (head, sequence), a thread per element of the head.
template <typename T>
__global__ void attention_decode_combine_kernel(const float* part_o, const float* part_m,
                                                const float* part_l, DecodeGeometry g, T* out) {
  const int h = blockIdx.x, b = blockIdx.y;
  const int64_t head_stat = int64_t(b) * g.chunks * g.heads + h;
  float mx = -INFINITY;
  for (int c = 0; c < g.chunks; ++c) mx = fmaxf(mx, part_m[head_stat + int64_t(c) * g.heads]);
  for (int d = threadIdx.x; d < g.dim; d += blockDim.x) {
    float total = 0.0f, sum = 0.0f;
    if (mx > -INFINITY) {
      for (int c = 0; c < g.chunks; ++c) {
        const int64_t s = head_stat + int64_t(c) * g.heads;
        if (part_l[s] == 0.0f) continue;
        const float w = expf(part_m[s] - mx);
        total += w * part_l[s];
        sum += w * part_o[s * g.dim + d];
      }
    }
    out[(int64_t(b) * g.heads + h) * g.dim + d] = from_float<T>(total > 0.0f ? sum / total : 0.0f);
  }
}

// Caches of at most this many keys run as one span per block (4 query heads each): one launch
// with no partials and no combine, the block walking the cache a tile at a time with the next
// tile's loads in flight. NNKIT_ATTN_SPAN_KEYS=N moves the limit (0: always split), to compare
// on one machine.
int64_t single_span_max_keys() {
  static const int64_t keys = [] {
    const char* flag = std::getenv("NNKIT_ATTN_SPAN_KEYS");
    if (flag == nullptr || *flag == '\0') return kSingleSpanKeys;
    return static_cast<int64_t>(std::max(0LL, std::atoll(flag)));
  }();
  return keys;
}

int64_t ceil_div64(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// NNKIT_ATTN_RESIDENT=0 sends short caches through the tile walk instead (to compare on one
// machine).
bool resident_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_ATTN_RESIDENT");
    return flag == nullptr || std::string(flag) != "0";
  }();
  return enabled;
}

// NNKIT_ATTN_FUSED_ROPE=0 runs attention_decode_rope as rope_kv_append and attention_decode (to
// compare on one machine).
bool fused_rope_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_ATTN_FUSED_ROPE");
    return flag == nullptr || std::string(flag) != "0";
  }();
  return enabled;
}

// Query heads per resident block: one while that leaves blocks at most twice the
// multiprocessors (each reads its sequence's rows from L2), else four.
int64_t resident_heads_per_block(int64_t batch, int64_t heads, int64_t kv_heads, int sms) {
  return batch * heads <= 2 * std::max(1, sms)
             ? 1
             : std::min<int64_t>(kResidentMaxHeads, heads / kv_heads);
}

DecodeGeometry resident_geometry(const AttentionShape& s, int64_t heads_per_block) {
  const int64_t head_tiles = ceil_div64(s.n_heads / s.n_kv_heads, heads_per_block);
  return DecodeGeometry{static_cast<int>(s.batch),         static_cast<int>(s.n_heads),
                        static_cast<int>(s.n_kv_heads),    static_cast<int>(s.head_dim),
                        static_cast<int>(s.kv_capacity),   1,
                        static_cast<int>(s.kv_capacity),   static_cast<int>(head_tiles),
                        static_cast<int>(heads_per_block), s.scale};
}

}  // namespace

void CudaBackend::attention_decode_rope(const Tensor& qkv, const Tensor& positions, float base,
                                        const Tensor& k_cache, const Tensor& v_cache,
                                        const Tensor& cache_len_device, const Tensor& kv_start,
                                        const Tensor& kv_len_device, const Tensor& out,
                                        const AttentionShape& s) {
  OpScope op_scope(profiler_.get(), "attention_decode_rope");
  const char* op = "attention_decode_rope";
  const int64_t H = s.n_heads, Hkv = s.n_kv_heads, D = s.head_dim, B = s.batch;
  // The fused kernel is the resident attention's (a short cache, 16-bit, head_dim 64 or 128);
  // everything else, and every malformed call (the two ops say what is wrong), runs the two ops.
  const bool shape_ok = B >= 1 && s.q_len == 1 && H >= 1 && Hkv >= 1 && H % Hkv == 0 &&
                        (D == 64 || D == 128) && s.kv_capacity >= 1 &&
                        s.kv_capacity <= single_span_max_keys();
  const int64_t heads_per_block = shape_ok ? resident_heads_per_block(B, H, Hkv, limits_.sms) : 1;
  const size_t shared = shape_ok ? resident_shared_bytes(s.kv_capacity, D, heads_per_block) : 0;
  const DType dtype = qkv.dtype();
  const auto same = [&](const Tensor& t, DType want, const Shape& shape) {
    return t.defined() && t.device() == device() && t.dtype() == want && t.shape() == shape;
  };
  const bool fused =
      fused_rope_enabled() && resident_enabled() && shape_ok && shared <= kResidentMaxShared &&
      (dtype == DType::kBF16 || dtype == DType::kF16) && same(qkv, dtype, {B, (H + 2 * Hkv) * D}) &&
      same(positions, DType::kI32, {B}) && same(k_cache, dtype, {B * s.kv_capacity, Hkv * D}) &&
      same(v_cache, dtype, {B * s.kv_capacity, Hkv * D}) &&
      same(cache_len_device, DType::kI32, {1}) && same(kv_len_device, DType::kI32, {1}) &&
      same(out, dtype, {B, H * D}) && (!kv_start.defined() || same(kv_start, DType::kI32, {B})) &&
      aligned16(qkv.raw()) && aligned16(k_cache.raw()) && aligned16(v_cache.raw()) &&
      aligned16(out.raw());
  if (!fused) {
    backend_common::attention_decode_rope_by_ops(*this, qkv, positions, base, k_cache, v_cache,
                                                 cache_len_device, kv_start, kv_len_device, out, s);
    return;
  }
  const DecodeGeometry g = resident_geometry(s, heads_per_block);
  const dim3 grid(1, static_cast<unsigned>(B), static_cast<unsigned>(Hkv * g.head_tiles));
  with_head_dim_bucket(static_cast<int>(D), [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    if constexpr (kD == 64 || kD == 128) {
      dispatch_float(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if constexpr (!std::is_same_v<T, float>) {
          RopeAppendArgs<T> rope;
          rope.qkv = ptr<T>(qkv);
          rope.positions = ptr<int32_t>(positions);
          rope.cache_len = ptr<int32_t>(cache_len_device);
          rope.k_cache = ptr<T>(k_cache);
          rope.v_cache = ptr<T>(v_cache);
          rope.fault = fault_;
          for (int64_t i = 0; i < D / 2; ++i) rope.freq[i] = rope_frequency(base, i, D);
          auto kernel = attention_decode_resident_kernel<T, kD, true>;
          static const bool allowed =
              allow_resident_shared_memory(reinterpret_cast<const void*>(kernel));
          if (!allowed && shared > size_t(48 << 10)) {
            kChecks.fail(op, "could not allow " + std::to_string(kResidentMaxShared) +
                                 " bytes of shared memory for the resident decode attention");
          }
          launch_dependent(kernel, grid, kThreadsPerBlock, shared, stream_,
                           static_cast<const T*>(nullptr), ptr<T>(k_cache), ptr<T>(v_cache),
                           kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr,
                           ptr<int32_t>(kv_len_device), g, ptr<T>(out), rope);
          NNKIT_CUDA_CHECK_LAUNCH(attention_decode_resident_kernel);
        }
      });
    }
  });
}

void CudaBackend::attention_decode(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& kv_start, const Tensor& kv_len_device,
                                   const Tensor& out, const AttentionShape& s) {
  OpScope op_scope(profiler_.get(), "attention_decode");
  const char* op = "attention_decode";
  if (s.batch < 1 || s.q_len != 1 || s.n_heads < 1 || s.n_kv_heads < 1 || s.head_dim < 1 ||
      s.head_dim > kMaxHeadDim || s.n_heads % s.n_kv_heads != 0 || s.kv_capacity < 1 ||
      s.kv_capacity > INT32_MAX / 2) {
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

  with_head_dim_bucket(static_cast<int>(D), [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    if constexpr (kD == 64 || kD == 128) {
      // One block per (sequence, head) while that leaves blocks at most twice the
      // multiprocessors (each reads its sequence's rows from L2), else four heads a block.
      const int64_t heads_per_block = resident_heads_per_block(B, H, Hkv, limits_.sms);
      const size_t shared = resident_shared_bytes(s.kv_capacity, D, heads_per_block);
      const bool resident = resident_enabled() && q.dtype() != DType::kF32 && D == kD &&
                            s.kv_capacity <= single_span_max_keys() &&
                            shared <= kResidentMaxShared && aligned16(q.raw()) &&
                            aligned16(k.raw()) && aligned16(v.raw()) && aligned16(out.raw());
      if (resident) {
        const DecodeGeometry g = resident_geometry(s, heads_per_block);
        const dim3 grid(1, static_cast<unsigned>(B), static_cast<unsigned>(Hkv * g.head_tiles));
        dispatch_float(q.dtype(), [&](auto tag) {
          using T = typename decltype(tag)::type;
          if constexpr (!std::is_same_v<T, float>) {
            auto kernel = attention_decode_resident_kernel<T, kD>;
            static const bool allowed =
                allow_resident_shared_memory(reinterpret_cast<const void*>(kernel));
            if (!allowed && shared > size_t(48 << 10)) {
              kChecks.fail(op, "could not allow " + std::to_string(kResidentMaxShared) +
                                   " bytes of shared memory for the resident decode attention");
            }
            launch_dependent(kernel, grid, kThreadsPerBlock, shared, stream_, ptr<T>(q), ptr<T>(k),
                             ptr<T>(v), kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr,
                             ptr<int32_t>(kv_len_device), g, ptr<T>(out), RopeAppendArgs<T>{});
            NNKIT_CUDA_CHECK_LAUNCH(attention_decode_resident_kernel);
          }
        });
        return;
      }
    }
    const int64_t tile = tile_keys(kD);
    const int64_t target_blocks = 2 * std::max(1, limits_.sms);
    // A cache too short for its spans of one tile to fill the GPU (decoding a short context):
    // fewer heads per block, so more blocks share the work of each span.
    const bool short_cache =
        B * Hkv * ceil_div64(H / Hkv, kHeadsPerBlock) * ceil_div64(s.kv_capacity, tile) <
        target_blocks;
    const bool one_span = s.kv_capacity <= single_span_max_keys();
    const int64_t heads_per_block = one_span || short_cache ? kFewHeadsPerBlock : kHeadsPerBlock;
    const int64_t head_tiles = ceil_div64(H / Hkv, heads_per_block);
    const int64_t pairs = B * Hkv * head_tiles;  // blocks per span
    // Enough spans for about two blocks per multiprocessor (bytes in flight to stream the cache
    // at full bandwidth), none shorter than one tile, and few enough for the combine; a short
    // cache is one span (its block normalises the output itself).
    int64_t chunks = one_span
                         ? 1
                         : std::clamp<int64_t>(
                               ceil_div64(target_blocks, pairs), 1,
                               std::min<int64_t>(ceil_div64(s.kv_capacity, tile), max_spans(kD)));
    const int64_t chunk_keys = ceil_div64(ceil_div64(s.kv_capacity, chunks), tile) * tile;
    chunks = ceil_div64(s.kv_capacity, chunk_keys);
    const DecodeGeometry g{static_cast<int>(B),
                           static_cast<int>(H),
                           static_cast<int>(Hkv),
                           static_cast<int>(D),
                           static_cast<int>(s.kv_capacity),
                           static_cast<int>(chunks),
                           static_cast<int>(chunk_keys),
                           static_cast<int>(head_tiles),
                           static_cast<int>(heads_per_block),
                           s.scale};
    // One span writes the output itself: no partials, no arrivals, no combine launch.
    const bool split = chunks > 1;
    Tensor part_o = split ? empty({B * chunks * H * D}) : Tensor();
    Tensor part_m = split ? empty({B * chunks * H}) : Tensor();
    Tensor part_l = split ? empty({B * chunks * H}) : Tensor();
    float* o_parts = split ? ptr<float>(part_o) : nullptr;
    float* m_parts = split ? ptr<float>(part_m) : nullptr;
    float* l_parts = split ? ptr<float>(part_l) : nullptr;
    int32_t* arrivals = split && pairs <= kDecodeArrivalCounters ? decode_arrivals_ : nullptr;
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(B),
                    static_cast<unsigned>(Hkv * head_tiles));
    dispatch_float(q.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      launch_dependent(
          attention_decode_kernel<T, kD>, grid, kThreadsPerBlock, 0, stream_, ptr<T>(q), ptr<T>(k),
          ptr<T>(v), kv_start.defined() ? ptr<int32_t>(kv_start) : nullptr,
          ptr<int32_t>(kv_len_device), g, o_parts, m_parts, l_parts, arrivals, ptr<T>(out));
      NNKIT_CUDA_CHECK_LAUNCH(attention_decode_kernel);
      if (split && arrivals == nullptr) {
        const int threads = static_cast<int>(std::min<int64_t>(256, ceil_div64(D, 32) * 32));
        attention_decode_combine_kernel<T>
            <<<dim3(static_cast<unsigned>(H), static_cast<unsigned>(B)), threads, 0, stream_>>>(
                o_parts, m_parts, l_parts, g, ptr<T>(out));
        NNKIT_CUDA_CHECK_LAUNCH(attention_decode_combine_kernel);
      }
    });
  });
}

void load_attention_decode_kernels() {
  load_kernel_now(attention_decode_resident_kernel<__nv_bfloat16, 64, true>);
  load_kernel_now(attention_decode_resident_kernel<__nv_bfloat16, 128, true>);
}

}  // namespace nnkit::cuda
