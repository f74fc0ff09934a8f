// Purpose: backend/cuda moe_swiglu_experts_padded: a decode step's whole SwiGLU expert block
// (gather, gate/up products and SwiGLU, down product, combine) in two launches, for 16-bit
// weights. Owned by backend/cuda.
//
// Why one pass: decoding reads each chosen expert's three weight matrices once, and at batch 1
// that read is ~60% of the token. Run as four launches (gather, SwiGLU product, down product,
// combine), every boundary costs a ramp and a tail, the down product's few long tiles do not
// spread evenly over the GPU, and the activations make a round trip through memory.
//
// The work is cut along the ffn dimension instead: a unit is 32 ffn columns of one chosen
// expert (its 32 gate and up rows and the matching 32 columns of its down matrix), and a grid
// sized to what stays resident gives each block one contiguous share of the chosen experts'
// units. A block stages its expert's kept rows of x in shared memory (the gather), and for each
// 64 (or 32) columns of its share computes silu(x Wg^T) * (x Wu^T) with tensor-core steps,
// rounds it to the dtype (moe_grouped_swiglu_nt's value), and multiplies it straight into the
// block's f32 partial of the down product for every output column, held in registers across
// the share. The partial is written once per expert the share touches (a share of at most one
// expert's units touches at most two: slots 2 b and 2 b + 1).
//
// The second launch combines: y[t] = sum over token t's padded rows n (ascending) and over the
// blocks that hold a partial of row n's expert (ascending) of gate[slot[n]] * partial, each
// thread group summing a fixed subset and the groups added in order. Every sum runs in a fixed
// order, so results repeat bit for bit; they differ from the four-op composition only by the
// down product not being rounded to the dtype before the combine.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../common/composed_ops.h"
#include "cuda_check.h"
#include "dependent_launch.cuh"
#include "grouped_experts.cuh"
#include "kernel_utils.cuh"
#include "mma_m16n8k16.cuh"

namespace nnkit::cuda {

namespace {

using backend_common::kFloatDTypes;

constexpr int kExpertWarps = 8;
constexpr int kExpertThreads = kExpertWarps * 32;
constexpr int kUnitColumns = 32;   // ffn columns per unit of work
constexpr int kChunkColumns = 64;  // ffn columns of one pass of a block
constexpr int kGateStages = 4;     // k steps of gate/up loads in flight per warp
constexpr int kDownGroup = 4;      // output tiles of down-matrix loads in flight per warp
constexpr int kMaxCapacity = 16;   // one m16 tile of rows per expert
// Shared row strides (elements) of 64 bytes past a multiple of 128: a quarter warp's 16-byte
// fragment loads (two rows, 64 bytes each) hit distinct banks.
constexpr int kActStride = kChunkColumns + 32;
constexpr int kCombineGroups = 32;  // thread groups of the combine, 32 lanes x 2 columns each
constexpr int kCombineThreads = kCombineGroups * 32;
constexpr int kCombineColumns = 64;
constexpr int kCombineBatch = 4;   // partial loads in flight per lane
constexpr int kMaxTokenRows = 32;  // padded rows of one token (its top-k slots) the combine takes

struct ExpertBlockGeometry {
  int experts, capacity, hidden, ffn;
  int units_per_expert;  // ffn / kUnitColumns
  int x_stride;          // hidden + 32
};

// Block b's share of `units` is [share_start(b), share_start(b + 1)).
__device__ __forceinline__ int64_t share_start(int64_t block, int64_t units, int64_t blocks) {
  return block * units / blocks;
}
// The block whose share holds unit u (the largest b with share_start(b) <= u).
__device__ __forceinline__ int64_t block_of_unit(int64_t u, int64_t units, int64_t blocks) {
  return ((u + 1) * blocks - 1) / units;
}

__device__ __forceinline__ uint4 load_shared16(const void* p) {
  return *reinterpret_cast<const uint4*>(p);
}

// One pass over kW ffn columns [f0, f0 + kW) of one expert: the SwiGLU of its gate/up rows
// against the staged x rows, rounded into act_s, then act_s times the down matrix's kW columns
// added to y_acc (this warp's kOutTiles tiles of 8 output columns).
template <typename T, int kW, int kOutTiles, bool kTwoRowTiles>
__device__ __forceinline__ void swiglu_down_pass(const T* gate_e, const T* up_e, const T* down_e,
                                                 int64_t f0, int rows, const ExpertBlockGeometry& g,
                                                 const T* x_s, T* act_s, float* exchange,
                                                 float (&y_acc)[kOutTiles][4]) {
  constexpr int kTiles = kW / 8;                 // 8-column tiles of gate/up per pass
  constexpr int kSplit = kExpertWarps / kTiles;  // warps sharing one tile's k steps
  constexpr int kKSteps = kW / 32;               // down product k steps of 32
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  const int tile = warp / kSplit, part = warp % kSplit;
  const int64_t hidden = g.hidden, ffn = g.ffn;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const bool has_lo = quad_row < rows, has_hi = kTwoRowTiles && quad_row + 8 < rows;

  // Gate and up: warp (tile, part) takes k steps part, part + kSplit, ... of its tile.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc_up[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  {
    const int64_t w_offset = (f0 + tile * 8 + quad_row) * hidden + 8 * quad_col;
    const T* w_row = gate_e + w_offset;
    const T* u_row = up_e + w_offset;
    const T* x_lo = x_s + quad_row * g.x_stride + 8 * quad_col;
    const T* x_hi = x_lo + 8 * g.x_stride;
    const int steps = g.hidden / 32;
    for (int s0 = part; s0 < steps; s0 += kSplit * kGateStages) {
      uint4 w[kGateStages], u[kGateStages];
#pragma unroll
      for (int i = 0; i < kGateStages; ++i) {
        const int s = s0 + i * kSplit;
        w[i] = s < steps ? load_weights_once(w_row + int64_t(s) * 32) : zero;
        u[i] = s < steps ? load_weights_once(u_row + int64_t(s) * 32) : zero;
      }
#pragma unroll
      for (int i = 0; i < kGateStages; ++i) {
        const int s = s0 + i * kSplit;
        const bool live = s < steps;
        const uint4 lo = live && has_lo ? load_shared16(x_lo + s * 32) : zero;
        const uint4 hi = live && has_hi ? load_shared16(x_hi + s * 32) : zero;
        const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
        const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
        mma_16x8x16<T>(acc, a0, w[i].x, w[i].y);
        mma_16x8x16<T>(acc, a1, w[i].z, w[i].w);
        mma_16x8x16<T>(acc_up, a0, u[i].x, u[i].y);
        mma_16x8x16<T>(acc_up, a1, u[i].z, u[i].w);
      }
    }
  }

  // The down matrix's first group of loads goes out before the block waits for the SwiGLU
  // values (its addresses need none of them).
  const T* d_base = down_e + (int64_t(warp) * kOutTiles * 8 + quad_row) * ffn + f0 + 8 * quad_col;
  uint4 d[kDownGroup][kKSteps];
#pragma unroll
  for (int j = 0; j < kDownGroup; ++j) {
#pragma unroll
    for (int s = 0; s < kKSteps; ++s) d[j][s] = load_weights_once(d_base + j * 8 * ffn + s * 32);
  }

  if constexpr (kSplit > 1) {
    // kSplit is 2 here: part 1 hands its sums to part 0 (a fixed order).
    static_assert(kSplit == 2, "a pass splits a tile's k steps over at most two warps");
    float* mine = exchange + (tile * 8) * 32 + lane;
    if (part == 1) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        mine[j * 32] = acc[j];
        mine[(4 + j) * 32] = acc_up[j];
      }
    }
    __syncthreads();
    if (part == 0) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc[j] += mine[j * 32];
        acc_up[j] += mine[(4 + j) * 32];
      }
    }
  }
  if (part == 0) {
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = acc[j] * (1.0f / (1.0f + expf(-acc[j]))) * acc_up[j];
    const int col = tile * 8 + 2 * quad_col;
    if (quad_row < rows) {
      *reinterpret_cast<uint32_t*>(act_s + quad_row * kActStride + col) = pack_pair<T>(v[0], v[1]);
    }
    if (kTwoRowTiles && quad_row + 8 < rows) {
      *reinterpret_cast<uint32_t*>(act_s + (quad_row + 8) * kActStride + col) =
          pack_pair<T>(v[2], v[3]);
    }
  }
  __syncthreads();

  // Down: this warp's output tiles, A = the rounded SwiGLU rows (same permuted k order as the
  // weights' 16-byte loads), B = the down matrix's rows of those output columns.
  uint32_t a[kKSteps][2][4];
#pragma unroll
  for (int s = 0; s < kKSteps; ++s) {
    const T* lo_p = act_s + quad_row * kActStride + s * 32 + 8 * quad_col;
    const uint4 lo = has_lo ? load_shared16(lo_p) : zero;
    const uint4 hi = has_hi ? load_shared16(lo_p + 8 * kActStride) : zero;
    a[s][0][0] = lo.x, a[s][0][1] = hi.x, a[s][0][2] = lo.y, a[s][0][3] = hi.y;
    a[s][1][0] = lo.z, a[s][1][1] = hi.z, a[s][1][2] = lo.w, a[s][1][3] = hi.w;
  }
#pragma unroll
  for (int j0 = 0; j0 < kOutTiles; j0 += kDownGroup) {
    if (j0 > 0) {
#pragma unroll
      for (int j = 0; j < kDownGroup; ++j) {
#pragma unroll
        for (int s = 0; s < kKSteps; ++s) {
          d[j][s] = load_weights_once(d_base + (j0 + j) * 8 * ffn + s * 32);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kDownGroup; ++j) {
#pragma unroll
      for (int s = 0; s < kKSteps; ++s) {
        mma_16x8x16<T>(y_acc[j0 + j], a[s][0], d[j][s].x, d[j][s].y);
        mma_16x8x16<T>(y_acc[j0 + j], a[s][1], d[j][s].z, d[j][s].w);
      }
    }
  }
}

// Grid: what stays resident. Dynamic shared memory: capacity rows of x (x_stride) and of the
// SwiGLU values (kActStride), then the split exchange. partial: (2 * grid, capacity, hidden) f32.
template <typename T, int kOutTiles, bool kTwoRowTiles>
__global__ void __launch_bounds__(kExpertThreads, 2)
    moe_experts_block_kernel(const T* x, const int32_t* token, ExpertWeights gate_w,
                             ExpertWeights up_w, ExpertWeights down_w, const int32_t* kept,
                             ExpertBlockGeometry g, float* partial) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* x_s = reinterpret_cast<T*>(shared_bytes);
  T* act_s = x_s + g.capacity * g.x_stride;
  float* exchange = reinterpret_cast<float*>(act_s + g.capacity * kActStride);
  __shared__ int counts[kMaxGroupedExperts], order[kMaxGroupedExperts], chosen_count;
  wait_for_preceding_grid();
  allow_dependent_launch();
  const int chosen = order_experts_chosen_first(kept, g.experts, counts, order, &chosen_count);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int quad_row = lane >> 2, quad_col = lane & 3;
  const int64_t per_expert = g.units_per_expert;
  const int64_t units = int64_t(chosen) * per_expert;
  if (units == 0) return;
  const int64_t end = share_start(blockIdx.x + 1, units, gridDim.x);
  const int packs_per_row = g.hidden / 8;
  int run = 0;
  for (int64_t u = share_start(blockIdx.x, units, gridDim.x); u < end; ++run) {
    const int position = static_cast<int>(u / per_expert);
    const int e = order[position];
    const int rows = min(counts[e], g.capacity);
    const int64_t run_end = min(end, int64_t(position + 1) * per_expert);
    const T* gate_e = static_cast<const T*>(gate_w.w[e]);
    const T* up_e = static_cast<const T*>(up_w.w[e]);
    const T* down_e = static_cast<const T*>(down_w.w[e]);
    __syncthreads();  // the previous run's passes are done with x_s
    for (int i = threadIdx.x; i < rows * packs_per_row; i += kExpertThreads) {
      const int r = i / packs_per_row, pack = i % packs_per_row;
      const int32_t t = token[int64_t(e) * g.capacity + r];
      const uint4 v = t >= 0
                          ? __ldg(reinterpret_cast<const uint4*>(x + int64_t(t) * g.hidden) + pack)
                          : make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(x_s + r * g.x_stride + pack * 8) = v;
    }
    __syncthreads();
    float y_acc[kOutTiles][4];
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j)
      y_acc[j][0] = y_acc[j][1] = y_acc[j][2] = y_acc[j][3] = 0.0f;
    const int64_t col_end = (run_end - int64_t(position) * per_expert) * kUnitColumns;
    for (int64_t f0 = (u - int64_t(position) * per_expert) * kUnitColumns; f0 < col_end;) {
      if (col_end - f0 >= kChunkColumns) {
        swiglu_down_pass<T, kChunkColumns, kOutTiles, kTwoRowTiles>(gate_e, up_e, down_e, f0, rows,
                                                                    g, x_s, act_s, exchange, y_acc);
        f0 += kChunkColumns;
      } else {
        swiglu_down_pass<T, kUnitColumns, kOutTiles, kTwoRowTiles>(gate_e, up_e, down_e, f0, rows,
                                                                   g, x_s, act_s, exchange, y_acc);
        f0 += kUnitColumns;
      }
      __syncthreads();  // act_s and exchange are rewritten by the next pass
    }
    // This share's partial of expert e's rows.
    float* out = partial + (int64_t(2) * blockIdx.x + run) * g.capacity * g.hidden;
#pragma unroll
    for (int j = 0; j < kOutTiles; ++j) {
      const int col = (warp * kOutTiles + j) * 8 + 2 * quad_col;
      if (quad_row < rows) {
        *reinterpret_cast<float2*>(out + int64_t(quad_row) * g.hidden + col) =
            make_float2(y_acc[j][0], y_acc[j][1]);
      }
      if (kTwoRowTiles && quad_row + 8 < rows) {
        *reinterpret_cast<float2*>(out + int64_t(quad_row + 8) * g.hidden + col) =
            make_float2(y_acc[j][2], y_acc[j][3]);
      }
    }
    u = run_end;
  }
}

// Grid (tokens, hidden / 64). Every output row is written (0 for a token without rows).
template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
    moe_experts_combine_kernel(const float* partial, const int32_t* token, const int32_t* slot,
                               const float* gate, const int32_t* kept, ExpertBlockGeometry g,
                               int block_grid, T* y) {
  constexpr int kMaxRows = kMaxTokenRows;
  __shared__ int counts[kMaxGroupedExperts], order[kMaxGroupedExperts], chosen_count;
  __shared__ int position[kMaxGroupedExperts];
  __shared__ int row_n[kMaxRows], row_first_block[kMaxRows], row_task_start[kMaxRows + 1];
  __shared__ float row_gate[kMaxRows];
  __shared__ int row_count;
  __shared__ float2 group_sum[kCombineGroups][32];
  wait_for_preceding_grid();
  allow_dependent_launch();
  const int chosen = order_experts_chosen_first(kept, g.experts, counts, order, &chosen_count);
  const int t = blockIdx.x;
  const int group = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t per_expert = g.units_per_expert;
  const int64_t units = int64_t(chosen) * per_expert;
  if (threadIdx.x < chosen) position[order[threadIdx.x]] = threadIdx.x;
  __syncthreads();
  if (group == 0) {
    // Token t's padded rows in ascending order, and the span of blocks holding each one's partial.
    const int padded = g.experts * g.capacity;
    int found = 0;
    for (int base = 0; base < padded; base += 32) {
      const int n = base + lane;
      const bool mine = n < padded && token[n] == t;
      const unsigned mask = __ballot_sync(0xffffffffu, mine);
      const int index = found + __popc(mask & ((1u << lane) - 1u));
      if (mine && index < kMaxRows) row_n[index] = n;
      found += __popc(mask);
    }
    found = min(found, kMaxRows);
    if (lane == 0) {
      row_count = found;
      int tasks = 0;
      for (int i = 0; i < found; ++i) {
        const int n = row_n[i];
        const int64_t first_unit = int64_t(position[n / g.capacity]) * per_expert;
        const int64_t first = block_of_unit(first_unit, units, block_grid);
        const int64_t last = block_of_unit(first_unit + per_expert - 1, units, block_grid);
        row_first_block[i] = static_cast<int>(first);
        row_task_start[i] = tasks;
        row_gate[i] = gate[slot[n]];
        tasks += static_cast<int>(last - first + 1);
      }
      row_task_start[found] = tasks;
    }
  }
  __syncthreads();
  const int64_t col = int64_t(blockIdx.y) * kCombineColumns + 2 * lane;
  const bool live = col < g.hidden;
  const int tasks = row_task_start[row_count];
  float2 sum = make_float2(0.0f, 0.0f);
  // Task i = (row, block): group q sums tasks q, q + 32, ... in order, kCombineBatch at a time.
  for (int task0 = group; task0 < tasks; task0 += kCombineGroups * kCombineBatch) {
    float2 v[kCombineBatch];
    float w[kCombineBatch];
#pragma unroll
    for (int b = 0; b < kCombineBatch; ++b) {
      const int task = task0 + b * kCombineGroups;
      v[b] = make_float2(0.0f, 0.0f);
      w[b] = 0.0f;
      if (task >= tasks || !live) continue;
      int i = 0;
      while (row_task_start[i + 1] <= task) ++i;
      const int64_t block = row_first_block[i] + (task - row_task_start[i]);
      const int64_t start = share_start(block, units, block_grid);
      if (start == share_start(block + 1, units, block_grid)) continue;  // an empty share
      const int n = row_n[i];
      const int64_t first_unit = int64_t(position[n / g.capacity]) * per_expert;
      const int run = start >= first_unit ? 0 : 1;
      const float* p =
          partial + ((2 * block + run) * g.capacity + n % g.capacity) * int64_t(g.hidden) + col;
      v[b] = __ldcg(reinterpret_cast<const float2*>(p));
      w[b] = row_gate[i];
    }
#pragma unroll
    for (int b = 0; b < kCombineBatch; ++b) {
      sum.x += w[b] * v[b].x;
      sum.y += w[b] * v[b].y;
    }
  }
  group_sum[group][lane] = sum;
  __syncthreads();
  if (group == 0 && live) {
    float2 total = group_sum[0][lane];
    for (int q = 1; q < kCombineGroups; ++q) {
      total.x += group_sum[q][lane].x;
      total.y += group_sum[q][lane].y;
    }
    *reinterpret_cast<uint32_t*>(y + int64_t(t) * g.hidden + col) = pack_pair<T>(total.x, total.y);
  }
}

// The one-pass kernels are the default for the shapes they take; NNKIT_FUSED_EXPERTS=0 runs
// the four-op composition instead (to compare the two on one machine).
bool fused_experts_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_FUSED_EXPERTS");
    return flag == nullptr || std::strcmp(flag, "0") != 0;
  }();
  return enabled;
}

size_t block_shared_bytes(int capacity, int x_stride) {
  return size_t(capacity) * size_t(x_stride + kActStride) * 2 +
         size_t(kExpertWarps) * 8 * 32 * sizeof(float);
}

template <typename T, int kOutTiles, bool kTwoRowTiles>
void launch_expert_block(const T* x, const Tensor& token, const Tensor& slot, const Tensor& gate,
                         const ExpertWeights& gw, const ExpertWeights& uw, const ExpertWeights& dw,
                         const Tensor& kept, ExpertBlockGeometry g, int64_t tokens, int sms,
                         CudaBackend& backend, T* y) {
  auto kernel = moe_experts_block_kernel<T, kOutTiles, kTwoRowTiles>;
  // Residency at the largest shared memory this kernel is launched with: one grid size for
  // every capacity, so the combine's block arithmetic matches.
  static const int per_sm = [&] {
    int blocks = 0;
    const size_t bytes = block_shared_bytes(kTwoRowTiles ? kMaxCapacity : 8, g.x_stride);
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kExpertThreads, bytes) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      return 1;
    }
    return std::max(blocks, 1);
  }();
  const int64_t max_units = int64_t(g.experts) * g.units_per_expert;
  const int grid = static_cast<int>(std::max<int64_t>(
      std::min<int64_t>(int64_t(per_sm) * std::max(sms, 1), max_units), g.experts));
  Tensor partial =
      backend.empty({int64_t(2) * grid * g.capacity * g.hidden});  // f32, fully written where read
  const cudaStream_t stream = backend.stream();
  launch_dependent(kernel, static_cast<unsigned>(grid), kExpertThreads,
                   block_shared_bytes(g.capacity, g.x_stride), stream, x, ptr<int32_t>(token), gw,
                   uw, dw, ptr<int32_t>(kept), g, ptr<float>(partial));
  NNKIT_CUDA_CHECK_LAUNCH(moe_experts_block_kernel);
  const dim3 combine_grid(
      static_cast<unsigned>(tokens),
      static_cast<unsigned>((g.hidden + kCombineColumns - 1) / kCombineColumns));
  launch_dependent(moe_experts_combine_kernel<T>, combine_grid, kCombineThreads, 0, stream,
                   ptr<float>(partial), ptr<int32_t>(token), ptr<int32_t>(slot), ptr<float>(gate),
                   ptr<int32_t>(kept), g, grid, y);
  NNKIT_CUDA_CHECK_LAUNCH(moe_experts_combine_kernel);
}

template <typename T, int kOutTiles>
void launch_by_capacity(const T* x, const Tensor& token, const Tensor& slot, const Tensor& gate,
                        const ExpertWeights& gw, const ExpertWeights& uw, const ExpertWeights& dw,
                        const Tensor& kept, ExpertBlockGeometry g, int64_t tokens, int sms,
                        CudaBackend& backend, T* y) {
  if (g.capacity > 8) {
    launch_expert_block<T, kOutTiles, true>(x, token, slot, gate, gw, uw, dw, kept, g, tokens, sms,
                                            backend, y);
  } else {
    launch_expert_block<T, kOutTiles, false>(x, token, slot, gate, gw, uw, dw, kept, g, tokens, sms,
                                             backend, y);
  }
}

}  // namespace

void CudaBackend::moe_swiglu_experts_padded(const Tensor& x, const Tensor& token,
                                            const Tensor& slot, const Tensor& gate,
                                            const std::vector<Tensor>& gate_w,
                                            const std::vector<Tensor>& up_w,
                                            const std::vector<Tensor>& down_w,
                                            const Tensor& kept_offsets, int64_t capacity,
                                            const Tensor& y) {
  OpScope op_scope(profiler_.get(), "moe_swiglu_experts_padded");
  const backend_common::ExpertsShape s = backend_common::check_swiglu_experts_padded(
      kChecks, kFloatDTypes, x, token, slot, gate, gate_w, up_w, down_w, kept_offsets, capacity, y);
  const int64_t tokens = x.dim(0);
  if (tokens == 0) return;
  // The one-pass kernels take 16-bit tensors of 16-byte-aligned rows, hidden 256, 512 or 768
  // (a warp's output tiles stay in registers), ffn a multiple of 32 and at most one m16 tile of
  // rows per expert; anything else runs the composition.
  bool fits = x.dtype() != DType::kF32 && fused_experts_enabled() && s.ffn % kUnitColumns == 0 &&
              s.ffn > 0 && capacity <= kMaxCapacity && s.experts <= kMaxGroupedExperts &&
              gate.numel() <= tokens * kMaxTokenRows && aligned16(x.raw()) && aligned16(y.raw()) &&
              (s.hidden == 256 || s.hidden == 512 || s.hidden == 768);
  ExpertWeights gw{}, uw{}, dw{};
  for (int64_t e = 0; e < s.experts && fits; ++e) {
    const auto i = static_cast<size_t>(e);
    gw.w[e] = gate_w[i].raw();
    uw.w[e] = up_w[i].raw();
    dw.w[e] = down_w[i].raw();
    fits = aligned16(gw.w[e]) && aligned16(uw.w[e]) && aligned16(dw.w[e]);
  }
  if (!fits) {
    backend_common::moe_swiglu_experts_padded_by_ops(*this, x, token, slot, gate, gate_w, up_w,
                                                     down_w, kept_offsets, capacity, y);
    return;
  }
  const ExpertBlockGeometry g{static_cast<int>(s.experts),
                              static_cast<int>(capacity),
                              static_cast<int>(s.hidden),
                              static_cast<int>(s.ffn),
                              static_cast<int>(s.ffn / kUnitColumns),
                              static_cast<int>(s.hidden + 32)};
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      const T* xp = ptr<T>(x);
      T* yp = ptr<T>(y);
      const int sms = limits_.sms;
      switch (s.hidden) {
        case 256:
          launch_by_capacity<T, 4>(xp, token, slot, gate, gw, uw, dw, kept_offsets, g, tokens, sms,
                                   *this, yp);
          break;
        case 512:
          launch_by_capacity<T, 8>(xp, token, slot, gate, gw, uw, dw, kept_offsets, g, tokens, sms,
                                   *this, yp);
          break;
        default:
          launch_by_capacity<T, 12>(xp, token, slot, gate, gw, uw, dw, kept_offsets, g, tokens, sms,
                                    *this, yp);
          break;
      }
    }
  });
}

}  // namespace nnkit::cuda
