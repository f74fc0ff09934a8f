// Purpose: the shared part of backend/cuda's fused causal attention (attention_forward.cu,
// attention_backward.cu): kernel arguments, geometry and tile helpers, tile shapes per head_dim
// bucket, argument validation and the launch helper. Owned by backend/cuda.
//
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
// Element types: the kernels here are templated on the element type T of q, k, v, out and the
// gradients (float, __nv_bfloat16, __half); staging widens to f32 in shared memory and stores
// round once, so the f32 instantiations are the original f32 kernels. bf16/f16 calls run on the
// tensor-core kernels (attention_lowp.cuh) wherever those take the shape, and on the 16-bit
// instantiations here otherwise (decoding, head dims that are not a multiple of 8 or above 128).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_backend.h"
#include "cuda_check.h"

namespace nnkit::cuda {

constexpr int kAttentionThreads = 256;  // 16 x 16 threads per block
constexpr int kGridSide = 16;
constexpr int kAttentionWarps = kAttentionThreads / 32;
constexpr int kMaxHeadDim = 256;
constexpr int kDecodeRows = 16;  // query rows per block when a (batch, KV head) has this few
constexpr int kMaxKeySplits = 256;

// Everything a kernel needs, validated on the host (every count fits in int; element offsets into
// the tensors are formed in int64). The geometry is shared by every element type; the tensors'
// pointers come with the type (AttentionArgsOf). Outside the anonymous namespace: the tensor-core
// kernels of attention_lowp_*.cu receive the same structs across translation units.
struct AttentionGeometry {
  int batch, q_len, kv_len, kv_capacity, heads, kv_heads, dim, group;
  int rows;   // q_len * group: folded query rows per (batch, KV head)
  int q_ld;   // heads * dim: row stride of q, out, dout, dq
  int kv_ld;  // kv_heads * dim: row stride of k, v, dk, dv
  int64_t q_offset;
  float scale;
  const int32_t* kv_start;  // (batch) or null
  // Forward key split: `splits` chunks of `chunk` keys; with splits > 1 the partial results go to
  // partial_ml (max, sum) and partial_out (unnormalised rows of dim floats), [split][row].
  int splits;
  int chunk;
  int64_t total_rows;  // batch * kv_heads * rows
};

// T: the element type of q, k, v, out, dout, dq, dk, dv (float, __nv_bfloat16 or __half); lse,
// delta and the split partials are f32 whatever T is.
template <typename T>
struct AttentionArgsOf : AttentionGeometry {
  const T* q;
  const T* k;
  const T* v;
  const T* dout;
  T* out;
  float* lse;
  float* delta;  // (batch * q_len, heads): rowsum(dout * out)
  T* dq;
  T* dk;
  T* dv;
  float2* partial_ml;
  float* partial_out;
};

using AttentionArgs = AttentionArgsOf<float>;

// Element conversions of the kernels: loads widen to f32, stores round once (nearest even).
__device__ __forceinline__ float widen_to_f32(float x) {
  return x;
}
__device__ __forceinline__ float widen_to_f32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float widen_to_f32(__half x) {
  return __half2float(x);
}
template <typename T>
__device__ __forceinline__ T round_from_f32(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    static_assert(std::is_same_v<T, __half>, "attention elements are f32, bf16 or f16");
    return __float2half_rn(x);
  }
}

// Internal to the attention translation units (each gets its own copy).
namespace {

// ---- geometry helpers -------------------------------------------------------------------------

// First key batch b may see (negative kv_start clamps to 0; past kv_len means none).
__device__ __forceinline__ int first_key(const AttentionGeometry& a, int b) {
  return a.kv_start != nullptr ? min(max(0, a.kv_start[b]), a.kv_len) : 0;
}

// One past the last key query position t may see.
__device__ __forceinline__ int key_end(const AttentionGeometry& a, int t) {
  return static_cast<int>(min(static_cast<int64_t>(a.kv_len), a.q_offset + t + 1));
}

// Element offset of folded row r's head slice in q / out / dout / dq.
__device__ __forceinline__ int64_t query_offset(const AttentionGeometry& a, int b, int kvh, int r) {
  const int t = r / a.group, h = kvh * a.group + r % a.group;
  return (static_cast<int64_t>(b) * a.q_len + t) * a.q_ld + static_cast<int64_t>(h) * a.dim;
}

// Index of folded row r in lse / delta.
__device__ __forceinline__ int64_t head_row_index(const AttentionGeometry& a, int b, int kvh,
                                                  int r) {
  const int t = r / a.group, h = kvh * a.group + r % a.group;
  return (static_cast<int64_t>(b) * a.q_len + t) * a.heads + h;
}

// Element offset of key j's head slice in k / v / dk / dv.
__device__ __forceinline__ int64_t key_offset(const AttentionGeometry& a, int b, int kvh, int j) {
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
// global read is a contiguous run. Elements of type T are widened to f32 here.
template <int kD, int kRows, typename T, typename RowOffset>
__device__ __forceinline__ void stage_rows(float* tile, const T* __restrict__ src, int dim,
                                           RowOffset offset) {
  static_assert(kRows % kAttentionWarps == 0, "tiles have a multiple of 8 rows");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int step = 0; step < kRows / kAttentionWarps; ++step) {
    const int i = warp + step * kAttentionWarps;
    const int64_t base = offset(i);
    float* dst = tile + i * tile_ld<kD>();
#pragma unroll
    for (int c = lane; c < kD; c += 32) {
      dst[c] = (base >= 0 && c < dim) ? widen_to_f32(src[base + c]) : 0.0f;
    }
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

// ---- launchers --------------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Launches `kernel` on `blocks` blocks of `threads` threads after checking the grid and the
// shared memory against the device, opting into large shared memory once per kernel.
template <typename Kernel, typename... Args>
void launch_blocks(const char* op, Kernel kernel, int64_t blocks, int threads, size_t shared_bytes,
                   CudaBackend& backend, const Args&... args) {
  const DeviceLimits& limits = backend.limits();
  if (shared_bytes > static_cast<size_t>(limits.shared_optin_bytes)) {
    kChecks.fail(op, "this head_dim needs " + std::to_string(shared_bytes) +
                         " bytes of shared memory per block; the GPU allows " +
                         std::to_string(limits.shared_optin_bytes));
  }
  if (blocks > INT_MAX) {
    kChecks.fail(op, std::to_string(blocks) + " thread blocks exceed the CUDA grid limit");
  }
  if (shared_bytes > 48 * 1024 && backend.first_launch_of(reinterpret_cast<const void*>(kernel))) {
    NNKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    NNKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          cudaSharedmemCarveoutMaxShared));
  }
  kernel<<<static_cast<unsigned>(blocks), threads, shared_bytes, backend.stream()>>>(args...);
  NNKIT_CUDA_CHECK_LAUNCH(kernel);
}

template <typename Kernel, typename... Args>
void launch(const char* op, Kernel kernel, int64_t blocks, size_t shared_bytes,
            CudaBackend& backend, const Args&... args) {
  launch_blocks(op, kernel, blocks, kAttentionThreads, shared_bytes, backend, args...);
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

// The element type attention runs in: q's dtype, which must be a float dtype (f32, bf16, f16).
inline DType attention_dtype(const char* op, const Tensor& q) {
  if (!q.defined()) return DType::kF32;  // the tensor check below reports it
  const DType dtype = q.dtype();
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    kChecks.fail(op, std::string("q has dtype ") + dtype_name(dtype) +
                         "; attention takes f32, bf16 or f16 (q, k, v, out, dout, dq, dk, dv "
                         "share it; lse is f32)");
  }
  return dtype;
}

// The CPU's check_geometry plus this backend's limits; returns the geometry of the kernel
// arguments. q, k and v share `dtype`; lse is f32.
inline AttentionGeometry check_geometry(const char* op, const AttentionShape& s, const Tensor& q,
                                        const Tensor& k, const Tensor& v, const Tensor& kv_start,
                                        const Tensor& lse, DType dtype) {
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
  kChecks.tensor(op, "q", q, dtype, {s.batch * s.q_len, s.n_heads * s.head_dim});
  kChecks.tensor(op, "k", k, dtype, {s.batch * s.kv_capacity, s.n_kv_heads * s.head_dim});
  kChecks.tensor(op, "v", v, dtype, {s.batch * s.kv_capacity, s.n_kv_heads * s.head_dim});
  kChecks.tensor(op, "lse", lse, DType::kF32, {s.batch * s.q_len, s.n_heads});
  if (kv_start.defined()) kChecks.tensor(op, "kv_start", kv_start, DType::kI32, {s.batch});

  AttentionGeometry a{};
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

}  // namespace

}  // namespace nnkit::cuda
