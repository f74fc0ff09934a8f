// Purpose: device helpers of backend/cuda's tensor-core attention (attention_lowp_forward.cu,
// attention_lowp_backward.cu): the m16n8k16 bf16/f16 product with f32 accumulators, ldmatrix
// fragment loads, cp.async tile staging and the fragment bookkeeping of the flash-attention
// kernels. Owned by backend/cuda.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 for 16-bit inputs), lane = 4 * quad_row + quad_col:
//   A (16 x 16, row-major): a0 = (quad_row, 2 quad_col + {0,1}), a1 = rows + 8, a2 = columns + 8,
//                           a3 = both + 8; each register holds two adjacent columns.
//   B (16 x 8, "col"):      b0 = (k = 2 quad_col + {0,1}, n = quad_row), b1 = k + 8.
//   C (16 x 8, f32):        c0, c1 = (quad_row, 2 quad_col + {0,1}), c2, c3 = row + 8.
// So the C fragments of two adjacent 8-column tiles, rounded to 16 bits, are exactly the A
// fragment of the 16-column slice they cover: P (or dS) feeds the next product from registers.
// Shared tiles hold rows of kD 16-bit elements with a row stride of kD + 8 (16 bytes of padding):
// the 8 rows one ldmatrix phase reads start in 8 different 16-byte bank groups.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attention_common.cuh"
#include "mma_m16n8k16.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kLowpThreads = 128;  // 4 warps
constexpr int kLowpWarps = kLowpThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int kD>
constexpr int lowp_ld() {
  return kD + 8;
}

// Four 8 x 8 matrices; lanes 8 i .. 8 i + 7 give the row addresses of matrix i, register i gets
// its fragment (lane holds row lane / 4, columns 2 (lane % 4) + {0,1}).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

// As ldmatrix_x4, each matrix transposed (lane holds column lane / 4, rows 2 (lane % 4) + {0,1}).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

// A fragment of the 16 x 16 block at (row0, col0) of a row-major shared tile.
template <int kLd, typename T>
__device__ __forceinline__ void load_a_fragment(uint32_t (&a)[4], const T* tile, int row0, int col0,
                                                int lane) {
  ldmatrix_x4(a, tile + (row0 + lane % 8 + (lane / 8) % 2 * 8) * kLd + col0 + lane / 16 * 8);
}

// B fragments of two adjacent 8-column tiles (n0 .. n0 + 15) at k0 .. k0 + 15, for a product
// against the transpose of a row-major tile whose rows are the n index (S = Q K^T reads K so):
// b[0], b[1] for columns n0 .. n0 + 7, b[2], b[3] for n0 + 8 .. n0 + 15.
template <int kLd, typename T>
__device__ __forceinline__ void load_b_fragments_of_rows(uint32_t (&b)[4], const T* tile, int n0,
                                                         int k0, int lane) {
  ldmatrix_x4(b, tile + (n0 + lane % 8 + lane / 16 * 8) * kLd + k0 + (lane / 8) % 2 * 8);
}

// The same two B fragments for a product against a row-major tile whose rows are the k index
// (O = P V reads V so): rows k0 .. k0 + 15, columns n0 .. n0 + 15, transposed while loading.
template <int kLd, typename T>
__device__ __forceinline__ void load_b_fragments_of_columns(uint32_t (&b)[4], const T* tile, int k0,
                                                            int n0, int lane) {
  ldmatrix_x4_trans(b, tile + (k0 + lane % 8 + (lane / 8) % 2 * 8) * kLd + n0 + lane / 16 * 8);
}

// The A fragment of the 16-column slice covered by C fragments c[j] and c[j + 1] (see above).
template <typename T>
__device__ __forceinline__ void a_fragment_from_c(uint32_t (&a)[4], const float (&c0)[4],
                                                  const float (&c1)[4]) {
  a[0] = pack_pair<T>(c0[0], c0[1]);
  a[1] = pack_pair<T>(c0[2], c0[3]);
  a[2] = pack_pair<T>(c1[0], c1[1]);
  a[3] = pack_pair<T>(c1[2], c1[3]);
}

// 2^x on the special-function unit (2^-inf = 0; relative error ~2^-22).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Starts copying kRows rows of a tile (row stride lowp_ld<kD>()), zero-padded to kD columns; row
// i comes from src + offset(i), or is zeros where offset(i) < 0 (rows out of range must read as
// zeros, never as whatever the cache's spare rows hold: 0 * NaN would poison a product). Threads
// walk 16-byte pieces in row order, so neighbouring threads read neighbouring global bytes.
template <int kD, int kRows, typename T, typename RowOffset>
__device__ __forceinline__ void stage_tile_async(T* tile, const T* __restrict__ src, int dim,
                                                 RowOffset offset) {
  constexpr int kPieces = kD / 8;  // 16-byte pieces per row
  constexpr int kLd = lowp_ld<kD>();
  static_assert(kRows * kPieces % kLowpThreads == 0, "every thread copies the same count");
#pragma unroll
  for (int step = 0; step < kRows * kPieces / kLowpThreads; ++step) {
    const int index = threadIdx.x + step * kLowpThreads;
    const int i = index / kPieces, c = index % kPieces * 8;
    const int64_t base = offset(i);
    T* dst = tile + i * kLd + c;
    if (base >= 0 && c < dim) {
      cp_async_16(dst, src + base + c);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// Min / max over the warp (warp-uniform decisions: every lane takes part in mma.sync).
__device__ __forceinline__ int warp_min_int(int v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = min(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

__device__ __forceinline__ int warp_max_int(int v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Max / sum over the 4 lanes of a quad (the lanes sharing a fragment row); the butterfly gives
// all four the same bits.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Stores two adjacent elements (4 bytes, aligned: dim and the column are even).
template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(dst) = pack_pair<T>(lo, hi);
}

}  // namespace

}  // namespace nnkit::cuda
