// Purpose: backend/cuda device-sampling ops (temperature_rows, top_k/top_p/min_p_filter_rows,
// repetition_penalty_rows, sample_rows, append_tokens): the sampler chain of issue 10 without a
// copy of the logits to the host. Owned by backend/cuda.
// Shape: one thread block per row (B <= 64 rows of up to 256k logits in decoding). top-k and
// top-p are a radix selection over the 32-bit ranking key, 4 bits per pass (at most 8 passes over
// the row; a row stops as soon as a digit isolates the cut): each pass histograms the tokens that
// match the digits chosen so far, and thread 0 picks the next digit; top-k by counts (integers:
// warp-aggregated shared atomics), top-p by softmax weight (double, per-lane bins summed by a fixed
// tree). The rare tie at the boundary is cut by index in one more pass. Parity: every decision that
// depends on a floating-point sum uses the arithmetic and layout of
// ../common/sampling_math.h (kLanes = blockDim.x lanes), which backend/cpu emulates, so both
// backends keep the same tokens and draw the same ids; the kernels never use float atomics.
#include "../common/sampling_math.h"
#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

using sampling::kBins;
using sampling::kLanes;
using sampling::rank_key;
using sampling::row_weight;

constexpr int kRowThreads = 256;  // blocks of the elementwise row ops

// The largest non-NaN logit of the row (fmaxf skips NaN); every thread gets it. A zero max is
// +0 whichever zero fmaxf kept (the CPU does the same).
__device__ float row_max(const float* x, int64_t cols, float* shared) {
  float mx = -INFINITY;
  constexpr int kInFlight = 8;  // loads in flight a thread (fmaxf is order-free)
  const int64_t stride = blockDim.x;
  for (int64_t c0 = threadIdx.x; c0 < cols; c0 += stride * kInFlight) {
    float v[kInFlight];
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      const int64_t c = c0 + r * stride;
      v[r] = c < cols ? x[c] : -INFINITY;
    }
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) mx = fmaxf(mx, v[r]);
  }
  mx = block_max(mx, shared);
  return mx == 0.0f ? 0.0f : mx;
}

// The first-ranked token of the row (larger key first, lower index on ties); every thread gets
// it. `keys` and `idxs` hold 32 values each.
__device__ int32_t row_argmax(const float* x, int64_t cols, uint32_t* keys, int32_t* idxs) {
  uint32_t best_key = 0;
  int32_t best = INT32_MAX;
  // Eight loads in flight a thread (one round trip, not eight), taken in increasing c.
  constexpr int kInFlight = 8;
  const int64_t stride = blockDim.x;
  for (int64_t c0 = threadIdx.x; c0 < cols; c0 += stride * kInFlight) {
    float v[kInFlight];
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      const int64_t c = c0 + r * stride;
      v[r] = c < cols ? x[c] : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < kInFlight; ++r) {
      const int64_t c = c0 + r * stride;
      const uint32_t key = rank_key(v[r]);
      if (c < cols && (best == INT32_MAX || key > best_key)) {  // an equal key never wins
        best_key = key;
        best = static_cast<int32_t>(c);
      }
    }
  }
  auto merge = [&](uint32_t ok, int32_t oi) {
    if (oi != INT32_MAX && (best == INT32_MAX || ok > best_key || (ok == best_key && oi < best))) {
      best_key = ok;
      best = oi;
    }
  };
  for (int offset = 16; offset > 0; offset >>= 1) {
    const uint32_t ok = __shfl_xor_sync(0xffffffffu, best_key, offset);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, best, offset);
    merge(ok, oi);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    keys[warp] = best_key;
    idxs[warp] = best;
  }
  __syncthreads();
  best_key = 0;
  best = INT32_MAX;
  const int warps = blockDim.x >> 5;
  for (int w = 0; w < warps; ++w) merge(keys[w], idxs[w]);
  return best;
}

// What thread 0 decided, for the whole block.
struct SelectState {
  uint32_t prefix;
  uint32_t mask;
  int64_t remaining;  // top-k: tokens still to keep at the current digit
  double above;       // top-p: weight ranked before the current group
  double target;
  int64_t keep_tied;
  int64_t cut;  // index of the last tied token kept (when not all_tied)
  int32_t done;
  int32_t all_tied;
  int32_t keep_all;  // nothing to filter
  int32_t cut_thread;
  int64_t cut_rank;
};

// Counts tokens per bin of the current digit into counts[kBins] (zeroed by the caller), one
// shared atomic per bin per warp. Calls on_match(c, bin) for every matching token.
template <typename OnMatch>
__device__ void digit_histogram(const float* x, int64_t cols, uint32_t prefix, uint32_t mask,
                                int shift, int32_t* counts, OnMatch&& on_match) {
  const int lane = threadIdx.x & 31;
  for (int64_t base = 0; base < cols; base += kLanes) {  // the whole warp iterates together
    const int64_t c = base + threadIdx.x;
    int bin = kBins;  // no bin
    if (c < cols) {
      const uint32_t key = rank_key(x[c]);
      if ((key & mask) == prefix) {
        bin = static_cast<int>((key >> shift) & (kBins - 1));
        on_match(c, bin);
      }
    }
    const unsigned peers = __match_any_sync(0xffffffffu, bin);
    if (bin < kBins && lane == __ffs(peers) - 1) atomicAdd(&counts[bin], __popc(peers));
  }
}

// After the selection: finds the index of the keep_tied-th token (in index order) whose key
// equals prefix (a full-key selection), then filters everything not kept.
__device__ void apply_selection(float* x, int64_t cols, SelectState& st, int32_t* chunk_count) {
  const uint32_t prefix = st.prefix, mask = st.mask;
  if (!st.all_tied) {
    // Contiguous chunks so that index order is chunk order; rare (ties across the cut).
    const int64_t chunk = (cols + kLanes - 1) / kLanes;
    const int64_t lo = threadIdx.x * chunk, hi = lo + chunk < cols ? lo + chunk : cols;
    int32_t tied = 0;
    for (int64_t c = lo; c < hi; ++c) tied += rank_key(x[c]) == prefix ? 1 : 0;
    chunk_count[threadIdx.x] = tied;
    __syncthreads();
    if (threadIdx.x == 0) {
      st.cut_thread = -1;
      st.cut = -1;
      int64_t run = 0;
      for (int t = 0; t < kLanes; ++t) {
        if (run + chunk_count[t] >= st.keep_tied) {
          st.cut_thread = t;
          st.cut_rank = st.keep_tied - run;
          break;
        }
        run += chunk_count[t];
      }
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) == st.cut_thread) {
      int64_t seen = 0;
      for (int64_t c = lo; c < hi; ++c) {
        if (rank_key(x[c]) == prefix && ++seen == st.cut_rank) {
          st.cut = c;
          break;
        }
      }
    }
    __syncthreads();
  }
  const bool all_tied = st.all_tied != 0;
  const int64_t cut = st.cut;
  for (int64_t c = threadIdx.x; c < cols; c += kLanes) {
    const uint32_t key = rank_key(x[c]) & mask;
    if (key > prefix || (key == prefix && (all_tied || c <= cut))) continue;
    x[c] = -INFINITY;
  }
}

__global__ void __launch_bounds__(kLanes) top_k_kernel(float* logits, int64_t cols, int64_t k) {
  __shared__ SelectState st;
  __shared__ int32_t counts[kBins];
  __shared__ int32_t chunk_count[kLanes];
  float* x = logits + blockIdx.x * cols;
  if (threadIdx.x == 0) {
    st.prefix = 0;
    st.mask = 0;
    st.remaining = k;
    st.done = 0;
    st.all_tied = 1;
  }
  for (int pass = 0; pass < sampling::kPasses; ++pass) {
    const int shift = 32 - sampling::kDigitBits * (pass + 1);
    if (threadIdx.x < kBins) counts[threadIdx.x] = 0;
    __syncthreads();
    digit_histogram(x, cols, st.prefix, st.mask, shift, counts, [](int64_t, int) {});
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t remaining = st.remaining;
      int bin = kBins - 1;
      for (; bin > 0; --bin) {
        if (counts[bin] >= remaining) break;
        remaining -= counts[bin];
      }
      st.prefix |= static_cast<uint32_t>(bin) << shift;
      st.mask |= static_cast<uint32_t>(kBins - 1) << shift;
      st.remaining = remaining;
      if (counts[bin] == remaining) {
        st.done = 1;
      } else if (pass == sampling::kPasses - 1) {
        st.keep_tied = remaining;
        st.all_tied = 0;
      }
    }
    __syncthreads();
    if (st.done) break;
  }
  apply_selection(x, cols, st, chunk_count);
}

// Dynamic shared memory: kBins * kLanes doubles, lanes[bin * kLanes + lane].
__global__ void __launch_bounds__(kLanes) top_p_kernel(float* logits, int64_t cols, double p) {
  extern __shared__ double lanes[];
  __shared__ SelectState st;
  __shared__ int32_t counts[kBins];
  __shared__ int32_t chunk_count[kLanes];
  __shared__ float shared_max[32];
  float* x = logits + blockIdx.x * cols;
  const float mx = row_max(x, cols, shared_max);
  if (threadIdx.x == 0) {
    st.prefix = 0;
    st.mask = 0;
    st.above = 0.0;
    st.done = 0;
    st.all_tied = 1;
    st.keep_all = 0;
  }
  const int tid = threadIdx.x;
  for (int pass = 0; pass < sampling::kPasses; ++pass) {
    const int shift = 32 - sampling::kDigitBits * (pass + 1);
    for (int b = 0; b < kBins; ++b) lanes[b * kLanes + tid] = 0.0;
    if (tid < kBins) counts[tid] = 0;
    __syncthreads();
    digit_histogram(x, cols, st.prefix, st.mask, shift, counts, [&](int64_t c, int bin) {
      double& lane = lanes[bin * kLanes + tid];
      lane = sampling::add_rn(lane, row_weight(x[c], mx));
    });
    __syncthreads();
    for (int stride = kLanes / 2; stride >= 1; stride >>= 1) {
      for (int i = tid; i < kBins * stride; i += kLanes) {
        const int b = i / stride, t = i - b * stride;
        double* l = lanes + b * kLanes;
        l[t] = sampling::add_rn(l[t], l[t + stride]);
      }
      __syncthreads();
    }
    if (tid == 0) {
      double weight[kBins];
      for (int b = 0; b < kBins; ++b) weight[b] = lanes[b * kLanes];
      bool stop = false;
      if (pass == 0) {
        double total = 0.0;
        for (int b = kBins - 1; b >= 0; --b) total = sampling::add_rn(total, weight[b]);
        if (!(total > 0.0)) {
          st.keep_all = 1;
          stop = true;
        }
        st.target = sampling::mul_rn(p - sampling::kTopPTolerance, total);
      }
      if (!stop) {
        double above = st.above;
        const int bin = sampling::choose_bin(weight, counts, st.target, above);
        st.above = above;
        st.prefix |= static_cast<uint32_t>(bin) << shift;
        st.mask |= static_cast<uint32_t>(kBins - 1) << shift;
        if (counts[bin] == 1) {
          stop = true;
        } else if (pass == sampling::kPasses - 1) {
          const double w = row_weight(sampling::key_float(st.prefix), mx);
          st.keep_tied = sampling::ties_needed(above, w, st.target, counts[bin]);
          st.all_tied = st.keep_tied == counts[bin] ? 1 : 0;
        }
      }
      st.done = stop ? 1 : 0;
    }
    __syncthreads();
    if (st.done) break;
  }
  if (st.keep_all) return;
  apply_selection(x, cols, st, chunk_count);
}

__global__ void temperature_kernel(float* logits, int64_t cols, double temperature) {
  __shared__ float shared_max[32];
  float* x = logits + blockIdx.x * cols;
  const double kFloatMax = 3.40282346638528859812e+38;  // FLT_MAX
  float mx = -INFINITY;
  int overflows = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    if (!sampling::is_finite(x[c])) continue;
    mx = fmaxf(mx, x[c]);
    overflows |= fabs(static_cast<double>(x[c]) / temperature) > kFloatMax ? 1 : 0;
  }
  mx = block_max(mx, shared_max);
  if (mx == 0.0f) mx = 0.0f;  // +0, as row_max
  overflows = __syncthreads_or(overflows);
  const double shift = overflows ? static_cast<double>(mx) : 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    if (!sampling::is_finite(x[c])) continue;
    const double scaled = (static_cast<double>(x[c]) - shift) / temperature;
    x[c] = scaled < -kFloatMax ? -INFINITY : __double2float_rn(scaled);
  }
}

__global__ void min_p_kernel(float* logits, int64_t cols, double p) {
  __shared__ float shared_max[32];
  float* x = logits + blockIdx.x * cols;
  const float mx = row_max(x, cols, shared_max);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    if (row_weight(x[c], mx) < p) x[c] = -INFINITY;
  }
}

// Dynamic shared memory: one bit per vocabulary id, so each distinct id is penalised once (the
// thread whose atomicOr sets the bit applies it).
__global__ void repetition_penalty_kernel(float* logits, int64_t cols, const int32_t* history,
                                          const int32_t* lengths, int64_t capacity, float penalty) {
  extern __shared__ uint32_t seen[];
  const int64_t row = blockIdx.x;
  float* x = logits + row * cols;
  const int64_t words = (cols + 31) / 32;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) seen[w] = 0u;
  __syncthreads();
  const int64_t stored = lengths[row];
  const int64_t len = stored < 0 ? 0 : (stored > capacity ? capacity : stored);
  const int32_t* h = history + row * capacity;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const int32_t id = h[i];
    if (id < 0 || id >= cols) continue;
    const uint32_t bit = 1u << (id & 31);
    if (atomicOr(&seen[id >> 5], bit) & bit) continue;
    const float v = x[id];
    x[id] = v > 0.0f ? v / penalty : v * penalty;
  }
}

__global__ void __launch_bounds__(kLanes)
    sample_rows_kernel(const float* logits, int64_t cols, uint64_t seed, int64_t step,
                       const int32_t* step_device, bool argmax, int32_t* ids) {
  __shared__ double lane_sum[kLanes];
  __shared__ double group_sum[sampling::kGroups];
  __shared__ float shared_max[32];
  __shared__ uint32_t keys[32];
  __shared__ int32_t idxs[32];
  __shared__ int32_t pick;
  const int64_t row = blockIdx.x;
  const float* x = logits + row * cols;
  if (argmax) {  // no draw: the row's maximum is not needed
    const int32_t best = row_argmax(x, cols, keys, idxs);
    if (threadIdx.x == 0) ids[row] = best;
    return;
  }
  const float mx = row_max(x, cols, shared_max);
  if (!sampling::is_finite(mx)) {
    const int32_t best = row_argmax(x, cols, keys, idxs);
    if (threadIdx.x == 0) ids[row] = best;
    return;
  }
  const int tid = threadIdx.x;
  double s = 0.0;
  for (int64_t c = tid; c < cols; c += kLanes) s = sampling::add_rn(s, row_weight(x[c], mx));
  lane_sum[tid] = s;
  __syncthreads();
  if (tid < sampling::kGroups) {
    double g = 0.0;
    for (int t = tid * sampling::kLaneGroup; t < (tid + 1) * sampling::kLaneGroup; ++t) {
      g = sampling::add_rn(g, lane_sum[t]);
    }
    group_sum[tid] = g;
  }
  __syncthreads();
  if (tid == 0) {
    double total = 0.0;
    for (int g = 0; g < sampling::kGroups; ++g) total = sampling::add_rn(total, group_sum[g]);
    const int64_t at = step_device != nullptr ? static_cast<int64_t>(*step_device) : step;
    const double target = sampling::mul_rn(random::sampling_uniform(seed, row, at), total);
    double cum = 0.0;
    const int lane = sampling::locate_lane(group_sum, lane_sum, target, cum);
    int32_t chosen = -1;
    for (int64_t c = lane; lane >= 0 && c < cols; c += kLanes) {
      const double w = row_weight(x[c], mx);
      const double next = sampling::add_rn(cum, w);
      if (w > 0.0 && target < next) {
        chosen = static_cast<int32_t>(c);
        break;
      }
      cum = next;
    }
    pick = chosen;
  }
  __syncthreads();
  if (pick >= 0) {
    if (tid == 0) ids[row] = pick;
    return;
  }
  const int32_t best = row_argmax(x, cols, keys, idxs);  // rounding at the very top end
  if (tid == 0) ids[row] = best;
}

__global__ void append_tokens_kernel(int32_t* history, int32_t* lengths, const int32_t* ids,
                                     int64_t rows, int64_t capacity, int32_t* step) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n == 0 && step != nullptr) ++*step;
  if (n >= rows || history == nullptr) return;
  const int32_t len = lengths[n];
  if (len < 0 || len >= capacity) return;
  history[n * capacity + len] = ids[n];
  lengths[n] = len + 1;
}

}  // namespace

namespace {

// (B, V) f32 logits; returns the shape.
backend_common::RowShape expect_logits(const char* op, const Tensor& logits) {
  const backend_common::RowShape s = kChecks.rows(op, "logits", logits, DType::kF32);
  if (logits.shape().size() != 2)
    kChecks.fail(op, "logits is " + describe(logits) + "; expected (B, V)");
  return s;
}

}  // namespace

void CudaBackend::temperature_rows(const Tensor& logits, double temperature) {
  OpScope op_scope(profiler_.get(), "temperature_rows");
  const char* op = "temperature_rows";
  const backend_common::RowShape s = expect_logits(op, logits);
  if (!(temperature > 0.0)) {
    kChecks.fail(op, "temperature " + std::to_string(temperature) + " must be > 0");
  }
  if (s.rows == 0 || s.cols == 0) return;
  temperature_kernel<<<static_cast<unsigned>(s.rows), kRowThreads, 0, stream_>>>(
      ptr<float>(logits), s.cols, temperature);
  NNKIT_CUDA_CHECK_LAUNCH(temperature_kernel);
}

void CudaBackend::top_k_filter_rows(const Tensor& logits, int64_t k) {
  OpScope op_scope(profiler_.get(), "top_k_filter_rows");
  const char* op = "top_k_filter_rows";
  const backend_common::RowShape s = expect_logits(op, logits);
  if (k < 1) kChecks.fail(op, "k = " + std::to_string(k) + " must be >= 1");
  if (s.rows == 0 || k >= s.cols) return;
  top_k_kernel<<<static_cast<unsigned>(s.rows), kLanes, 0, stream_>>>(ptr<float>(logits), s.cols,
                                                                      k);
  NNKIT_CUDA_CHECK_LAUNCH(top_k_kernel);
}

void CudaBackend::top_p_filter_rows(const Tensor& logits, double p) {
  OpScope op_scope(profiler_.get(), "top_p_filter_rows");
  const char* op = "top_p_filter_rows";
  const backend_common::RowShape s = expect_logits(op, logits);
  if (s.rows == 0 || s.cols == 0 || !(p < 1.0)) return;
  constexpr size_t kShared = sizeof(double) * kBins * kLanes;
  if (first_launch_of(reinterpret_cast<const void*>(top_p_kernel))) {
    NNKIT_CUDA_CHECK(cudaFuncSetAttribute(top_p_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(kShared)));
  }
  top_p_kernel<<<static_cast<unsigned>(s.rows), kLanes, kShared, stream_>>>(ptr<float>(logits),
                                                                            s.cols, p);
  NNKIT_CUDA_CHECK_LAUNCH(top_p_kernel);
}

void CudaBackend::min_p_filter_rows(const Tensor& logits, double p) {
  OpScope op_scope(profiler_.get(), "min_p_filter_rows");
  const backend_common::RowShape s = expect_logits("min_p_filter_rows", logits);
  if (s.rows == 0 || s.cols == 0 || !(p > 0.0)) return;
  min_p_kernel<<<static_cast<unsigned>(s.rows), kRowThreads, 0, stream_>>>(ptr<float>(logits),
                                                                           s.cols, p);
  NNKIT_CUDA_CHECK_LAUNCH(min_p_kernel);
}

void CudaBackend::repetition_penalty_rows(const Tensor& logits, const Tensor& history,
                                          const Tensor& lengths, float penalty) {
  OpScope op_scope(profiler_.get(), "repetition_penalty_rows");
  const char* op = "repetition_penalty_rows";
  const backend_common::RowShape s = expect_logits(op, logits);
  const backend_common::RowShape h = kChecks.rows(op, "history", history, DType::kI32);
  if (history.shape().size() != 2 || h.rows != s.rows) {
    kChecks.fail(op, "history is " + describe(history) +
                         "; expected (B, L) with B = " + std::to_string(s.rows));
  }
  kChecks.tensor(op, "lengths", lengths, DType::kI32, {s.rows});
  if (!(penalty > 0.0f)) kChecks.fail(op, "penalty " + std::to_string(penalty) + " must be > 0");
  if (s.rows == 0 || s.cols == 0 || h.cols == 0) return;
  const size_t shared = sizeof(uint32_t) * static_cast<size_t>((s.cols + 31) / 32);
  if (shared > static_cast<size_t>(limits_.shared_optin_bytes)) {
    kChecks.fail(op, "a vocabulary of " + std::to_string(s.cols) + " ids needs a seen-bitmap of " +
                         std::to_string(shared) + " bytes of shared memory; this device allows " +
                         std::to_string(limits_.shared_optin_bytes));
  }
  if (shared > 48 * 1024 &&
      first_launch_of(reinterpret_cast<const void*>(repetition_penalty_kernel))) {
    NNKIT_CUDA_CHECK(cudaFuncSetAttribute(repetition_penalty_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          limits_.shared_optin_bytes));
  }
  repetition_penalty_kernel<<<static_cast<unsigned>(s.rows), kRowThreads, shared, stream_>>>(
      ptr<float>(logits), s.cols, ptr<int32_t>(history), ptr<int32_t>(lengths), h.cols, penalty);
  NNKIT_CUDA_CHECK_LAUNCH(repetition_penalty_kernel);
}

void CudaBackend::sample_rows(const Tensor& logits, uint64_t seed, int64_t step,
                              const Tensor& step_device, bool argmax, const Tensor& ids) {
  OpScope op_scope(profiler_.get(), "sample_rows");
  const char* op = "sample_rows";
  const backend_common::RowShape s = expect_logits(op, logits);
  kChecks.tensor(op, "ids", ids, DType::kI32, {s.rows});
  if (s.cols == 0) kChecks.fail(op, "logits " + describe(logits) + " has no columns");
  if (step_device.defined()) kChecks.tensor(op, "step_device", step_device, DType::kI32, {1});
  if (s.rows == 0) return;
  sample_rows_kernel<<<static_cast<unsigned>(s.rows), kLanes, 0, stream_>>>(
      ptr<float>(logits), s.cols, seed, step,
      step_device.defined() ? ptr<int32_t>(step_device) : nullptr, argmax, ptr<int32_t>(ids));
  NNKIT_CUDA_CHECK_LAUNCH(sample_rows_kernel);
}

void CudaBackend::append_tokens(const Tensor& history, const Tensor& lengths, const Tensor& ids,
                                const Tensor& step) {
  OpScope op_scope(profiler_.get(), "append_tokens");
  const char* op = "append_tokens";
  if (step.defined()) kChecks.tensor(op, "step", step, DType::kI32, {1});
  int64_t rows = 0, capacity = 0;
  if (history.defined() || lengths.defined()) {
    const backend_common::RowShape h = kChecks.rows(op, "history", history, DType::kI32);
    if (history.shape().size() != 2) {
      kChecks.fail(op, "history is " + describe(history) + "; expected (B, L)");
    }
    kChecks.tensor(op, "lengths", lengths, DType::kI32, {h.rows});
    kChecks.tensor(op, "ids", ids, DType::kI32, {h.rows});
    rows = h.rows;
    capacity = h.cols;
  }
  if (rows == 0 && !step.defined()) return;
  append_tokens_kernel<<<grid_for(rows > 0 ? rows : 1), kThreads, 0, stream_>>>(
      rows > 0 ? ptr<int32_t>(history) : nullptr, rows > 0 ? ptr<int32_t>(lengths) : nullptr,
      rows > 0 ? ptr<int32_t>(ids) : nullptr, rows, capacity,
      step.defined() ? ptr<int32_t>(step) : nullptr);
  NNKIT_CUDA_CHECK_LAUNCH(append_tokens_kernel);
}

}  // namespace nnkit::cuda
