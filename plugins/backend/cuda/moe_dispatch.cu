// Purpose: backend/cuda MoE dispatch (moe_sort_by_expert): a stable counting sort of the N*k
// routed slots by expert on the device, with the optional capacity, the per-expert offsets and
// the load statistics; the output equals the CPU backend's bit for bit. Owned by backend/cuda.
// How: the slots are cut into tiles of kTile. A tile's slots are ranked in rounds of one slot
// per thread: __match_any_sync groups the lanes of a warp that chose the same expert (rank in
// the warp = earlier peers), per-warp counts in shared memory give the rank across the warps,
// and a per-expert running count carries the rank across rounds. Everything is integer
// arithmetic in a fixed order, so the result is deterministic and no host read is needed.
//   * small inputs (decoding: N*k <= kSmallSlots): one block does count, scan and placement in
//     one launch;
//   * larger ones: (1) per-tile histograms (E, tiles), (2) one block scans them into each tile's
//     per-expert rank base, the capped totals into offsets, and writes load, (3) each tile ranks
//     its slots again and places them at offsets[e] + base[e, tile] + rank. Three launches and
//     (E * tiles) ints of scratch, whatever N*k is.
// An index outside [-1, E) is recorded in the device fault word (FaultOp::kMoeSort, thrown by
// the next synchronize) and the slot is treated as already dropped.
// The static layout (moe_sort_by_expert_padded, for CUDA Graphs) sorts compactly into scratch
// and then moves each expert's rows to its fixed block of `capacity` rows in one more launch:
// the same ranks and drops by construction, and nothing the host must read. At decoding sizes
// the one-block kernel places the rows into their blocks directly (one launch).
#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kTileThreads = 256;                  // the multi-tile kernels: 8 warps
constexpr int kTileRounds = 4;                     // slots per thread per tile
constexpr int kTile = kTileThreads * kTileRounds;  // 1024 slots per tile
constexpr int kSmallThreads = 1024;                // the one-block kernel: 32 warps
constexpr int kSmallRounds = 4;
constexpr int kSmallSlots = kSmallThreads * kSmallRounds;  // 4096 slots at most
constexpr int kSmallMaxExperts = 256;  // its (32, E) warp counts stay within 32 KB of shared
constexpr int kMaxExperts = 1024;      // the scan kernel holds one expert per thread

// The expert a slot is routed to, or -1 (already dropped, or out of range: a fault).
__device__ __forceinline__ int routed_expert(int32_t e, int n_experts) {
  return e >= 0 && e < n_experts ? e : -1;
}

// Exclusive prefix sum over the block (blockDim.x a multiple of 32, at most 1024); `total`
// receives the block's sum. `shared` holds 32 ints.
__device__ int block_exclusive_scan(int v, int* shared, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int inclusive = v;
  for (int d = 1; d < 32; d <<= 1) {
    const int up = __shfl_up_sync(kFullMask, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 31) shared[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? shared[lane] : 0;
    for (int d = 1; d < 32; d <<= 1) {
      const int up = __shfl_up_sync(kFullMask, w, d);
      if (lane >= d) w += up;
    }
    shared[lane] = w;  // inclusive prefix of the warp totals
  }
  __syncthreads();
  *total = shared[warps - 1];
  return (warp > 0 ? shared[warp - 1] : 0) + inclusive - v;
}

// Per-call constants of the placement.
struct SortArgs {
  int32_t* expert_index;  // (S) in; dropped slots rewritten to -1
  float* gate;            // (S) or null; zeroed at dropped slots
  int32_t* token;         // (S)
  int32_t* slot;          // (S)
  int slots;              // S = N * k
  int n_experts;          // E
  int top_k;              // k
  int capacity;           // < 0: dropless; else clamped to S
  int block_rows;         // > 0: the padded layout, expert e's rows start at e * block_rows
};

// Ranks and places kRounds * blockDim.x consecutive slots starting at `begin`, one per thread
// per round (experts[r] = the routed expert of slot begin + r * blockDim.x + threadIdx.x).
// running[e] (shared, E) enters as the expert-e rank of the tile's first slot and leaves past
// its last; row_base[e] (shared, E) = offsets[e]; warp_counts (shared, warps * E) is all zero on
// entry and on exit. Slot order inside a round is warp-major then lane order, which is slot
// order, so ranks count earlier slots exactly as the CPU's sequential pass does.
template <int kRounds>
__device__ void place_tile(const SortArgs& a, const int (&experts)[kRounds], int64_t begin,
                           int* running, const int* row_base, int* warp_counts) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int E = a.n_experts;
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const int e = experts[r];
    // Lanes with e = -1 form their own group and are ignored below.
    const unsigned peers = __match_any_sync(kFullMask, e);
    if (e >= 0 && (peers & lanes_below) == 0) warp_counts[warp * E + e] = __popc(peers);
    __syncthreads();
    if (e >= 0) {
      int rank = running[e] + __popc(peers & lanes_below);
      for (int w = 0; w < warp; ++w) rank += warp_counts[w * E + e];
      const int64_t s = begin + int64_t(r) * blockDim.x + threadIdx.x;
      if (a.capacity >= 0 && rank >= a.capacity) {
        a.expert_index[s] = -1;
        if (a.gate != nullptr) a.gate[s] = 0.0f;
      } else {
        const int row = a.block_rows > 0 ? e * a.block_rows + rank : row_base[e] + rank;
        a.token[row] = static_cast<int32_t>(s / a.top_k);
        a.slot[row] = static_cast<int32_t>(s);
      }
    }
    __syncthreads();
    for (int x = threadIdx.x; x < E; x += blockDim.x) {
      int round_total = 0;
      for (int w = 0; w < warps; ++w) {
        round_total += warp_counts[w * E + x];
        warp_counts[w * E + x] = 0;
      }
      running[x] += round_total;
    }
    __syncthreads();
  }
}

// Loads the routed experts of a tile's slots (all loads issued before any is used), recording
// out-of-range indices as faults.
template <int kRounds>
__device__ void load_tile(const SortArgs& a, int64_t begin, int (&experts)[kRounds],
                          DeviceFault* fault) {
  int32_t raw[kRounds];
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    const int64_t s = begin + int64_t(r) * blockDim.x + threadIdx.x;
    raw[r] = s < a.slots ? a.expert_index[s] : -1;
  }
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    experts[r] = routed_expert(raw[r], a.n_experts);
    if (raw[r] != experts[r] && fault != nullptr) {
      report_fault(fault, FaultOp::kMoeSort, raw[r], a.n_experts,
                   begin + int64_t(r) * blockDim.x + threadIdx.x);
    }
  }
}

// Rows past the routed ones: token 0, slot -1 (threads of the whole grid stride over them).
__device__ void fill_tail(const SortArgs& a, int routed) {
  for (int64_t row = routed + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < a.slots;
       row += int64_t(gridDim.x) * blockDim.x) {
    a.token[row] = 0;
    a.slot[row] = -1;
  }
}

// The kept count of an expert chosen `chosen` times.
__device__ __forceinline__ int kept_count(int chosen, int capacity) {
  return capacity >= 0 ? min(chosen, capacity) : chosen;
}

// ---- small inputs: everything in one block of kSmallThreads --------------------------------
// Dynamic shared memory: chosen (E) | row_base (E) | running (E) | warp_counts (32, E).
__global__ void __launch_bounds__(kSmallThreads)
    moe_sort_small_kernel(const SortArgs a, int32_t* offsets, float* load, DeviceFault* fault) {
  extern __shared__ int smem[];
  __shared__ int scan_shared[32];
  const int E = a.n_experts;
  int* chosen = smem;
  int* row_base = chosen + E;
  int* running = row_base + E;
  int* warp_counts = running + E;
  for (int x = threadIdx.x; x < E * (3 + 32); x += blockDim.x) smem[x] = 0;
  // The padded layout in this one block: every row starts as padding, placement overwrites the
  // kept ones after the barriers below (no separate padding launch).
  for (int64_t r = threadIdx.x; a.block_rows > 0 && r < int64_t(E) * a.block_rows;
       r += blockDim.x) {
    a.token[r] = -1;
    a.slot[r] = -1;
  }
  __syncthreads();
  int experts[kSmallRounds];
  load_tile(a, 0, experts, fault);
#pragma unroll
  for (int r = 0; r < kSmallRounds; ++r) {
    if (experts[r] >= 0) atomicAdd(&chosen[experts[r]], 1);  // integer: order-free
  }
  __syncthreads();
  const int e = threadIdx.x;  // E <= kSmallMaxExperts < blockDim.x
  const int c = e < E ? chosen[e] : 0;
  int routed = 0;
  const int base =
      block_exclusive_scan(e < E ? kept_count(c, a.capacity) : 0, scan_shared, &routed);
  if (e < E) {
    row_base[e] = base;
    offsets[e] = base;
    load[e] = a.slots > 0 ? float(c) / float(a.slots) : 0.0f;
  }
  if (e == 0) offsets[E] = routed;
  __syncthreads();
  place_tile(a, experts, 0, running, row_base, warp_counts);
  if (a.block_rows == 0) fill_tail(a, routed);
}

// ---- larger inputs: histogram, scan, place ---------------------------------------------------
// counts: (E, tiles) = how many slots of each tile chose each expert.
__global__ void __launch_bounds__(kTileThreads)
    moe_count_kernel(const SortArgs a, int32_t* counts, DeviceFault* fault) {
  extern __shared__ int histogram[];  // (E)
  const int E = a.n_experts;
  for (int x = threadIdx.x; x < E; x += blockDim.x) histogram[x] = 0;
  __syncthreads();
  int experts[kTileRounds];
  load_tile(a, int64_t(blockIdx.x) * kTile, experts, fault);
#pragma unroll
  for (int r = 0; r < kTileRounds; ++r) {
    if (experts[r] >= 0) atomicAdd(&histogram[experts[r]], 1);
  }
  __syncthreads();
  for (int x = threadIdx.x; x < E; x += blockDim.x)
    counts[int64_t(x) * gridDim.x + blockIdx.x] = histogram[x];
}

// One block of kMaxExperts threads. counts (E, tiles) becomes each tile's per-expert rank base
// (exclusive prefix over the tiles); offsets (E + 1) and load (E) are written.
__global__ void __launch_bounds__(kMaxExperts)
    moe_scan_kernel(int32_t* counts, int tiles, int slots, int n_experts, int capacity,
                    int32_t* offsets, float* load) {
  __shared__ int chosen[kMaxExperts];
  __shared__ int scan_shared[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int e = warp; e < n_experts; e += warps) {  // a warp scans one expert's row of tiles
    int32_t* row = counts + int64_t(e) * tiles;
    int carry = 0;
    for (int t0 = 0; t0 < tiles; t0 += 32) {
      const int t = t0 + lane;
      const int x = t < tiles ? row[t] : 0;
      int inclusive = x;
      for (int d = 1; d < 32; d <<= 1) {
        const int up = __shfl_up_sync(kFullMask, inclusive, d);
        if (lane >= d) inclusive += up;
      }
      if (t < tiles) row[t] = carry + inclusive - x;
      carry += __shfl_sync(kFullMask, inclusive, 31);
    }
    if (lane == 0) chosen[e] = carry;
  }
  __syncthreads();
  const int e = threadIdx.x;
  const int c = e < n_experts ? chosen[e] : 0;
  int routed = 0;
  const int base =
      block_exclusive_scan(e < n_experts ? kept_count(c, capacity) : 0, scan_shared, &routed);
  if (e < n_experts) {
    offsets[e] = base;
    load[e] = slots > 0 ? float(c) / float(slots) : 0.0f;
  }
  if (e == 0) offsets[n_experts] = routed;
}

// Dynamic shared memory: row_base (E) | running (E) | warp_counts (8, E).
__global__ void __launch_bounds__(kTileThreads)
    moe_place_kernel(const SortArgs a, const int32_t* rank_base, const int32_t* offsets) {
  extern __shared__ int smem[];
  const int E = a.n_experts;
  int* row_base = smem;
  int* running = row_base + E;
  int* warp_counts = running + E;
  for (int x = threadIdx.x; x < E; x += blockDim.x) {
    row_base[x] = offsets[x];
    running[x] = rank_base[int64_t(x) * gridDim.x + blockIdx.x];
  }
  for (int x = threadIdx.x; x < E * (kTileThreads / 32); x += blockDim.x) warp_counts[x] = 0;
  __syncthreads();
  int experts[kTileRounds];
  load_tile(a, int64_t(blockIdx.x) * kTile, experts, nullptr);  // counted (and reported) before
  place_tile(a, experts, int64_t(blockIdx.x) * kTile, running, row_base, warp_counts);
  fill_tail(a, offsets[E]);
}

// Row r of expert e's block (e = row / capacity) takes the expert's r-th kept slot, or padding.
__global__ void moe_pad_kernel(const int32_t* compact_token, const int32_t* compact_slot,
                               const int32_t* offsets, int capacity, int64_t rows, int32_t* token,
                               int32_t* slot) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    const int e = static_cast<int>(row / capacity), r = static_cast<int>(row % capacity);
    const int begin = offsets[e], kept = offsets[e + 1] - begin;
    token[row] = r < kept ? compact_token[begin + r] : -1;
    slot[row] = r < kept ? compact_slot[begin + r] : -1;
  }
}

// `t` holds `numel` elements of `dtype` on this backend's device (read flat, any shape).
void expect_flat(const Backend& backend, const char* op, const char* name, const Tensor& t,
                 DType dtype, int64_t numel) {
  kChecks.dtype(op, name, t, dtype);
  if (t.device() != backend.device() || t.numel() != numel) {
    kChecks.fail(op, std::string(name) + " is " + describe(t) + "; expected " +
                         std::to_string(numel) + " elements on " + to_string(backend.device()));
  }
}

}  // namespace

void CudaBackend::moe_sort_by_expert(const Tensor& expert_index, int64_t n_experts, int64_t top_k,
                                     int64_t capacity, const Tensor& gate, const Tensor& token,
                                     const Tensor& slot, const Tensor& offsets,
                                     const Tensor& load) {
  OpScope op_scope(profiler_.get(), "moe_sort_by_expert");
  const char* op = "moe_sort_by_expert";
  kChecks.dtype(op, "expert_index", expert_index, DType::kI32);
  const int64_t slots = expert_index.numel();  // N * k
  if (n_experts < 1 || n_experts > kMaxExperts) {
    kChecks.fail(op, "n_experts = " + std::to_string(n_experts) + "; this backend sorts 1 to " +
                         std::to_string(kMaxExperts) + " experts");
  }
  if (top_k < 1 || slots % top_k != 0) {
    kChecks.fail(op, "top_k = " + std::to_string(top_k) + " does not divide the " +
                         std::to_string(slots) + " slots of expert_index " +
                         describe(expert_index));
  }
  if (slots > INT32_MAX - kTile) {
    kChecks.fail(op, std::to_string(slots) + " slots do not fit the i32 outputs");
  }
  if (capacity >= 0 && !gate.defined()) {
    kChecks.fail(op, "capacity = " + std::to_string(capacity) +
                         " drops slots, so gate (N*k) f32 must be given to zero them");
  }
  expect_flat(*this, op, "expert_index", expert_index, DType::kI32, slots);
  if (gate.defined()) expect_flat(*this, op, "gate", gate, DType::kF32, slots);
  expect_flat(*this, op, "token", token, DType::kI32, slots);
  expect_flat(*this, op, "slot", slot, DType::kI32, slots);
  expect_flat(*this, op, "offsets", offsets, DType::kI32, n_experts + 1);
  expect_flat(*this, op, "load", load, DType::kF32, n_experts);

  const SortArgs a{ptr<int32_t>(expert_index),
                   gate.defined() ? ptr<float>(gate) : nullptr,
                   ptr<int32_t>(token),
                   ptr<int32_t>(slot),
                   static_cast<int>(slots),
                   static_cast<int>(n_experts),
                   static_cast<int>(top_k),
                   capacity < 0 ? -1 : static_cast<int>(std::min(capacity, slots)),
                   0};
  const int E = a.n_experts;
  if (slots <= kSmallSlots && E <= kSmallMaxExperts) {
    const size_t shared = size_t(E) * (3 + kSmallThreads / 32) * sizeof(int);
    moe_sort_small_kernel<<<1, kSmallThreads, shared, stream_>>>(a, ptr<int32_t>(offsets),
                                                                 ptr<float>(load), fault_);
    NNKIT_CUDA_CHECK_LAUNCH(moe_sort_small_kernel);
    return;
  }
  // At least one tile, so that N*k = 0 still writes zero offsets and loads.
  const int tiles = std::max(1, static_cast<int>((slots + kTile - 1) / kTile));
  Tensor counts = scratch(size_t(E) * size_t(tiles) * sizeof(int32_t));  // (E, tiles)
  int32_t* pc = ptr<int32_t>(counts);
  moe_count_kernel<<<tiles, kTileThreads, size_t(E) * sizeof(int), stream_>>>(a, pc, fault_);
  NNKIT_CUDA_CHECK_LAUNCH(moe_count_kernel);
  moe_scan_kernel<<<1, kMaxExperts, 0, stream_>>>(pc, tiles, a.slots, E, a.capacity,
                                                  ptr<int32_t>(offsets), ptr<float>(load));
  NNKIT_CUDA_CHECK_LAUNCH(moe_scan_kernel);
  const size_t shared = size_t(E) * (2 + kTileThreads / 32) * sizeof(int);
  moe_place_kernel<<<tiles, kTileThreads, shared, stream_>>>(a, pc, ptr<int32_t>(offsets));
  NNKIT_CUDA_CHECK_LAUNCH(moe_place_kernel);
}

void CudaBackend::moe_sort_by_expert_padded(const Tensor& expert_index, int64_t n_experts,
                                            int64_t top_k, int64_t capacity, const Tensor& gate,
                                            const Tensor& token, const Tensor& slot,
                                            const Tensor& offsets, const Tensor& load) {
  OpScope op_scope(profiler_.get(), "moe_sort_by_expert_padded");
  const char* op = "moe_sort_by_expert_padded";
  if (capacity < 1) {
    kChecks.fail(op, "capacity = " + std::to_string(capacity) +
                         "; the static layout needs capacity >= 1 rows per expert");
  }
  if (n_experts < 1 || capacity > INT32_MAX / n_experts) {
    kChecks.fail(op, std::to_string(n_experts) + " experts x capacity " + std::to_string(capacity) +
                         " rows do not fit the i32 outputs");
  }
  const int64_t rows = n_experts * capacity;
  expect_flat(*this, op, "token", token, DType::kI32, rows);
  expect_flat(*this, op, "slot", slot, DType::kI32, rows);
  const int64_t slots = expert_index.numel();
  if (slots <= kSmallSlots && n_experts <= kSmallMaxExperts && slots % top_k == 0 && top_k >= 1 &&
      gate.defined() && slots > 0) {
    // Decoding sizes: one block sorts straight into the padded rows (one launch).
    kChecks.dtype(op, "expert_index", expert_index, DType::kI32);
    expect_flat(*this, op, "gate", gate, DType::kF32, slots);
    expect_flat(*this, op, "offsets", offsets, DType::kI32, n_experts + 1);
    expect_flat(*this, op, "load", load, DType::kF32, n_experts);
    const SortArgs a{ptr<int32_t>(expert_index), ptr<float>(gate),
                     ptr<int32_t>(token),        ptr<int32_t>(slot),
                     static_cast<int>(slots),    static_cast<int>(n_experts),
                     static_cast<int>(top_k),    static_cast<int>(std::min(capacity, slots)),
                     static_cast<int>(capacity)};
    const size_t shared = size_t(n_experts) * (3 + kSmallThreads / 32) * sizeof(int);
    moe_sort_small_kernel<<<1, kSmallThreads, shared, stream_>>>(a, ptr<int32_t>(offsets),
                                                                 ptr<float>(load), fault_);
    NNKIT_CUDA_CHECK_LAUNCH(moe_sort_small_kernel);
    return;
  }
  Tensor compact_token = empty({slots}, DType::kI32);
  Tensor compact_slot = empty({slots}, DType::kI32);
  moe_sort_by_expert(expert_index, n_experts, top_k, capacity, gate, compact_token, compact_slot,
                     offsets, load);
  moe_pad_kernel<<<grid_for(rows), kThreads, 0, stream_>>>(
      ptr<int32_t>(compact_token), ptr<int32_t>(compact_slot), ptr<int32_t>(offsets),
      static_cast<int>(capacity), rows, ptr<int32_t>(token), ptr<int32_t>(slot));
  NNKIT_CUDA_CHECK_LAUNCH(moe_pad_kernel);
}

}  // namespace nnkit::cuda
