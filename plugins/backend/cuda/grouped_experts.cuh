// Purpose: the grouped expert products of decoding, shared by decode_ops.cu (the products as
// ops) and moe_experts_decode.cu (the whole expert block): the table of expert weight pointers
// passed by value, the weight load that bypasses L1, the ordering of the chosen experts, and the
// tensor-core grouped product kernel.
// Owned by backend/cuda.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "dependent_launch.cuh"
#include "kernel_utils.cuh"
#include "mma_m16n8k16.cuh"

namespace nnkit::cuda {

namespace {

constexpr int kMaxGroupedExperts = 64;
constexpr int kMaxGroupedRows = 16;  // rows per expert (capacity) the grouped products take

// One pointer per expert, passed by value as a kernel argument.
struct ExpertWeights {
  const void* w[kMaxGroupedExperts];
};

// The MoE combine folded into a down product (out null: none): out[t, :] = sum over the padded
// rows r with token[r] = t, in ascending r, of gate[slot[r]] * y[r, :] (rows without a source
// are zeros), which is moe_combine_rows bit for bit. The last block to finish a column group
// (an arrival counter per group, reset by that block) combines that group's columns for every
// token, so the combine costs no launch of its own.
struct CombineArgs {
  const int32_t* token = nullptr;  // (padded_rows)
  const int32_t* slot = nullptr;   // (padded_rows)
  const float* gate = nullptr;     // (tokens * top_k)
  void* out = nullptr;             // (tokens, n) in T
  int32_t* arrivals = nullptr;     // one zeroed counter per column group
  int tokens = 0, padded_rows = 0;
};

__device__ __forceinline__ uint4 load_weights_once(const void* p) {
  // Each weight byte is read once per step: keep it out of L1 (x rows are what L1 should hold).
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// The chosen experts (those with kept rows) first, in expert order, then the idle ones: one warp
// ballots 32 experts at a time (a serial walk would put a chain of shared-memory steps in front
// of every block). Returns the chosen count; counts[] holds every expert's kept rows.
__device__ __forceinline__ int order_experts_chosen_first(const int32_t* kept, int experts,
                                                          int* counts, int* order,
                                                          int* chosen_count) {
  if (threadIdx.x < experts) counts[threadIdx.x] = kept[threadIdx.x + 1] - kept[threadIdx.x];
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int chosen_before = 0, total_chosen = 0;
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      total_chosen += __popc(__ballot_sync(0xffffffffu, e < experts && counts[e] > 0));
    }
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      const bool chosen = e < experts && counts[e] > 0;
      const unsigned chosen_mask = __ballot_sync(0xffffffffu, chosen);
      const unsigned idle_mask = __ballot_sync(0xffffffffu, e < experts && !chosen);
      const unsigned below = (1u << lane) - 1u;
      if (chosen) {
        order[chosen_before + __popc(chosen_mask & below)] = e;
      } else if (e < experts) {
        order[total_chosen + (base - chosen_before) + __popc(idle_mask & below)] = e;
      }
      chosen_before += __popc(chosen_mask);
    }
    if (lane == 0) *chosen_count = total_chosen;
  }
  __syncthreads();
  return *chosen_count;
}

// ---- the tensor-core grouped product (16-bit weights) ----------------------------------------
// At 1-16 rows per expert these products read each weight once and do almost no arithmetic, so
// what matters is bytes in flight and a short per-column tail. A warp owns an 8-column tile of
// one expert and walks k 32 at a time: each lane reads 16 contiguous bytes of one weight row
// (lane / 4 is the column, lane % 4 the 8-element slice) and 16 bytes of one or two x rows, and two
// m16n8k16 steps consume them. The product's k order is permuted so that these plain 16-byte loads
// are already the fragments: in step 0 fragment index 2 c + {0,1} is element 8 c + {0,1} and
// 2 c + 8 + {0,1} is 8 c + 2 + {0,1} (step 1: + 4), in both operands alike, which leaves the sum
// over k unchanged. x rows are the A operand (16 token rows, zero past the expert's kept rows),
// weight rows the B operand (8 columns); the f32 C fragment is 16 rows x 8 columns. kSplit warps
// share a tile's k steps round robin and add their partial sums in shared memory in a fixed order.
constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaStages = 4;  // k steps of loads in flight per warp

// A grid sized to what stays resident walks (chosen expert, column group) items, consecutive
// blocks on consecutive columns of one expert; experts nobody chose cost no block of their own.
//   - row_token null: x holds the gathered rows (E * capacity, k), and y's padding rows and the
//     idle experts' rows are zeroed (by the whole grid at the end);
//   - else x is the step's (N, k) tokens, expert e's row r is x[row_token[e * capacity + r]]
//     (the gather, done here), and only the kept rows of y are written.
template <typename T, int kSplit, bool kSwiglu, bool kTwoRowTiles, int kStages = kMmaStages,
          bool kCombine = false>
__global__ void __launch_bounds__(kMmaThreads, 2)
    grouped_mma_kernel(const T* x, const int32_t* row_token, ExpertWeights weights,
                       ExpertWeights up, const int32_t* kept, int capacity, int64_t n, int64_t k,
                       T* y, int experts, int groups_per_expert, CombineArgs combine) {
  constexpr int kTiles = kMmaWarps / kSplit;  // 8-column tiles per block
  constexpr int kValues = kSwiglu ? 8 : 4;    // C fragment floats per lane (gate, up)
  __shared__ int counts[kMaxGroupedExperts], order[kMaxGroupedExperts], chosen_count;
  __shared__ float partial[kSplit > 1 ? kMmaWarps : 1][kValues][32];
  // The token index in shared memory: read per item from global memory, each item's x loads
  // (and, issued in order, the weight loads after them) waited for one more round trip.
  __shared__ int32_t token_s[kMaxGroupedExperts * kMaxGroupedRows];
  __shared__ int32_t slot_s[kCombine ? kMaxGroupedExperts * kMaxGroupedRows : 1];
  __shared__ bool combine_here;
  wait_for_preceding_grid();
  allow_dependent_launch();
  if (row_token != nullptr) {  // published by order_experts_chosen_first's barriers
    for (int i = threadIdx.x; i < experts * capacity; i += kMmaThreads) token_s[i] = row_token[i];
  }
  // kCombine (the down product, gathered rows): combine.out is set.
  static_assert(!kCombine || !kSwiglu);
  if constexpr (kCombine) {
    {  // the combine's index, published by the same barriers
      for (int i = threadIdx.x; i < combine.padded_rows; i += kMmaThreads) {
        token_s[i] = combine.token[i];
        slot_s[i] = combine.slot[i];
      }
    }
  }
  const int chosen = order_experts_chosen_first(kept, experts, counts, order, &chosen_count);
  const int64_t steps = k / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int split = warp % kSplit;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int64_t items = int64_t(chosen) * groups_per_expert;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int e = order[item / groups_per_expert];
    const int rows = min(counts[e], capacity);
    const int64_t col0 = (item % groups_per_expert) * kTiles * 8 + (warp / kSplit) * 8;
    const bool active = col0 < n;  // n is a multiple of 8
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc_up[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const bool has_lo = quad_row < rows, has_hi = kTwoRowTiles && quad_row + 8 < rows;
    if (active) {
      const int64_t w_offset = (col0 + quad_row) * k + 8 * quad_col;
      const T* w_row = static_cast<const T*>(weights.w[e]) + w_offset;
      const T* u_row = kSwiglu ? static_cast<const T*>(up.w[e]) + w_offset : nullptr;
      int64_t row_lo = int64_t(e) * capacity + quad_row, row_hi = row_lo + 8;
      if (row_token != nullptr) {
        row_lo = has_lo ? token_s[row_lo] : 0;
        row_hi = has_hi ? token_s[row_hi] : 0;
      }
      const T* x_lo = x + row_lo * k + 8 * quad_col;
      const T* x_hi = x + row_hi * k + 8 * quad_col;
      for (int64_t s0 = split; s0 < steps; s0 += int64_t(kSplit) * kStages) {
        uint4 w[kStages], u[kStages], lo[kStages], hi[kStages];
#pragma unroll
        for (int i = 0; i < kStages; ++i) {
          const int64_t s = s0 + int64_t(i) * kSplit;
          const bool live = s < steps;
          w[i] = live ? load_weights_once(w_row + s * 32) : zero;
          u[i] = kSwiglu && live ? load_weights_once(u_row + s * 32) : zero;
          lo[i] = live && has_lo ? __ldg(reinterpret_cast<const uint4*>(x_lo + s * 32)) : zero;
          hi[i] = live && has_hi ? __ldg(reinterpret_cast<const uint4*>(x_hi + s * 32)) : zero;
        }
#pragma unroll
        for (int i = 0; i < kStages; ++i) {
          const uint32_t a0[4] = {lo[i].x, hi[i].x, lo[i].y, hi[i].y};
          const uint32_t a1[4] = {lo[i].z, hi[i].z, lo[i].w, hi[i].w};
          mma_16x8x16<T>(acc, a0, w[i].x, w[i].y);
          mma_16x8x16<T>(acc, a1, w[i].z, w[i].w);
          if constexpr (kSwiglu) {
            mma_16x8x16<T>(acc_up, a0, u[i].x, u[i].y);
            mma_16x8x16<T>(acc_up, a1, u[i].z, u[i].w);
          }
        }
      }
    }
    if constexpr (kSplit > 1) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        partial[warp][j][lane] = acc[j];
        if constexpr (kSwiglu) partial[warp][4 + j][lane] = acc_up[j];
      }
      __syncthreads();
      if (split == 0) {
        for (int s = 1; s < kSplit; ++s) {  // split 0's sum, then 1, 2, ...: a fixed order
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            acc[j] += partial[warp + s][j][lane];
            if constexpr (kSwiglu) acc_up[j] += partial[warp + s][4 + j][lane];
          }
        }
      }
      __syncthreads();  // partial is rewritten by the next item
    }
    if (active && split == 0) {
      const int64_t col = col0 + 2 * quad_col;
      const int r_lo = quad_row, r_hi = quad_row + 8;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        // swiglu_forward's formula, in f32.
        v[j] = kSwiglu ? acc[j] * (1.0f / (1.0f + expf(-acc[j]))) * acc_up[j] : acc[j];
      }
      T* ye = y + int64_t(e) * capacity * n;
      const bool pad = row_token == nullptr;  // the padding rows' zeros are part of y
      if (r_lo < capacity && (has_lo || pad)) {
        *reinterpret_cast<uint32_t*>(ye + r_lo * n + col) =
            r_lo < rows ? pack_pair<T>(v[0], v[1]) : 0u;
      }
      if (r_hi < capacity && (has_hi || pad)) {
        *reinterpret_cast<uint32_t*>(ye + r_hi * n + col) =
            r_hi < rows ? pack_pair<T>(v[2], v[3]) : 0u;
      }
    }
    if constexpr (kCombine) {
      {
        // This item's rows are visible before its arrival; the last of the chosen experts'
        // items for this column group combines the group's columns.
        const int group = static_cast<int>(item % groups_per_expert);
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) combine_here = atomicAdd(combine.arrivals + group, 1) == chosen - 1;
        __syncthreads();
        if (combine_here) {
          __threadfence();
          const int64_t c0 = int64_t(group) * kTiles * 8;
          const int packs = static_cast<int>(min(int64_t(kTiles) * 8, n - c0) / 8);
          T* out = static_cast<T*>(combine.out);
          for (int i = threadIdx.x; i < combine.tokens * packs; i += kMmaThreads) {
            const int t = i / packs;
            const int64_t c = c0 + int64_t(i % packs) * 8;
            float acc[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[j] = 0.0f;
            for (int r = 0; r < combine.padded_rows; ++r) {
              if (token_s[r] != t) continue;
              const float w = combine.gate[slot_s[r]];
              const uint4 packed = __ldcg(reinterpret_cast<const uint4*>(y + int64_t(r) * n + c));
              const T* v = reinterpret_cast<const T*>(&packed);
#pragma unroll
              for (int j = 0; j < 8; ++j) acc[j] += w * to_float(v[j]);
            }
            store_floats<8>(out + int64_t(t) * n + c, acc);
          }
          if (threadIdx.x == 0) combine.arrivals[group] = 0;  // ready for the next call
        }
      }
    }
  }
  if (row_token != nullptr) return;
  // The idle experts' blocks of y: zeros, 16 bytes at a time (n is a multiple of 8).
  const int64_t block_packs = int64_t(capacity) * n / 8;
  const int64_t zero_packs = int64_t(experts - chosen) * block_packs;
  for (int64_t i = blockIdx.x * int64_t(kMmaThreads) + threadIdx.x; i < zero_packs;
       i += int64_t(gridDim.x) * kMmaThreads) {
    const int e = order[chosen + i / block_packs];
    reinterpret_cast<uint4*>(y + int64_t(e) * capacity * n)[i % block_packs] = zero;
  }
}

template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel) {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kMmaThreads, 0) !=
      cudaSuccess) {
    (void)cudaGetLastError();
    return 1;
  }
  return std::max(blocks, 1);
}

}  // namespace

}  // namespace nnkit::cuda
