// Purpose: backend/cuda optimizer ops: the AdamW update (one fused elementwise pass over param,
// grad, m and v) and its multi-tensor forms (sum_squares_multi for the global gradient norm,
// adamw_update_multi for clip + step + grad reset + compute copy in one launch). Owned by
// backend/cuda. The arithmetic is the CPU's line for line (bias corrections computed
// once in double on the host), so both backends move weights the same way.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "kernel_utils.cuh"

namespace nnkit::cuda {

namespace {

struct AdamWConstants {
  float b1, b2, lr, eps, wd, grad_scale, inv_bc1, inv_bc2;
};

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n,
                             const AdamWConstants k) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = k.grad_scale * g[i];
    const float mi = k.b1 * m[i] + (1.0f - k.b1) * gi;
    const float vi = k.b2 * v[i] + (1.0f - k.b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float update = (mi * k.inv_bc1) / (sqrtf(vi * k.inv_bc2) + k.eps) + k.wd * p[i];
    p[i] -= k.lr * update;
  }
}

}  // namespace

void CudaBackend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m,
                               const Tensor& v, const AdamWStep& step) {
  OpScope op_scope(profiler_.get(), "adamw_update");
  const char* op = "adamw_update";
  kChecks.dtype(op, "param", param, DType::kF32);
  kChecks.dtype(op, "grad", grad, DType::kF32);
  kChecks.dtype(op, "m", m, DType::kF32);
  kChecks.dtype(op, "v", v, DType::kF32);
  kChecks.same_shape(op, "param", param, "grad", grad);
  kChecks.same_shape(op, "param", param, "m", m);
  kChecks.same_shape(op, "param", param, "v", v);
  if (step.step < 1) {
    kChecks.fail(op, "step = " + std::to_string(step.step) + "; steps are 1-based");
  }
  const int64_t n = param.numel();
  if (n == 0) return;
  const double s = static_cast<double>(step.step);
  const AdamWConstants k{step.beta1,
                         step.beta2,
                         step.lr,
                         step.eps,
                         step.weight_decay,
                         step.grad_scale,
                         static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta1), s))),
                         static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta2), s)))};
  adamw_kernel<<<grid_for(n), kThreads, 0, stream_>>>(ptr<float>(param), ptr<float>(grad),
                                                      ptr<float>(m), ptr<float>(v), n, k);
  NNKIT_CUDA_CHECK_LAUNCH(adamw_kernel);
}

}  // namespace nnkit::cuda

// ---- multi-tensor ops (ABI 2): the global gradient norm and the fused step over every tensor ----
// Both walk a table of tensors cut into chunks of kMultiChunk elements; block b takes chunks b,
// b + grid, ... and finds a chunk's tensor by binary search over the table's chunk prefix (the
// same for every thread of the block, so those reads broadcast). The table travels as the
// kernel's parameter (__grid_constant__, up to 32 KB since CUDA 12.1), so a call uploads nothing,
// allocates nothing beyond the sum's partials, never waits for the host and can be captured in a
// CUDA Graph; ~450 tensors fit one launch. Chunks of a 16-byte-aligned tensor use float4 (8-byte
// for bf16/f16) accesses; the rest of a chunk, and tensors at odd addresses, go scalar.
// The clip factor and the non-finite check are computed on the device from grad_sum_squares.
namespace nnkit::cuda {

namespace {

constexpr int kMultiThreads = 256;
constexpr int64_t kMultiChunk = 16384;  // elements: 16 vectors of 4 per thread
constexpr int kMaxSumTensors = 1024;    // per launch (table ~25 KB)
constexpr int kMaxAdamWTensors = 480;   // per launch (table ~29 KB)
constexpr int kSumGrid = 1024;          // blocks (hence partials) per sum launch: a fixed tree
constexpr size_t kMaxKernelParams = 32764;

// kind bits: the element dtype (sum) or the compute copy's dtype (AdamW), and whether the
// tensor's pointers allow vector accesses.
enum : uint8_t { kNone = 0, kF32 = 1, kBF16 = 2, kF16 = 3, kDTypeMask = 3, kVector = 4 };

uint8_t kind_of(DType dtype) {
  return dtype == DType::kF32 ? kF32 : dtype == DType::kBF16 ? kBF16 : kF16;
}

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// The tensor holding chunk c: the last i with chunk_begin[i] <= c (tables hold no empty tensor).
__device__ __forceinline__ int find_tensor(const int64_t* chunk_begin, int count, int64_t c) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (chunk_begin[mid] <= c) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

__device__ __forceinline__ float load1(const float* p) {
  return *p;
}
__device__ __forceinline__ float load1(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
__device__ __forceinline__ float load1(const __half* p) {
  return __half2float(*p);
}

__device__ __forceinline__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
// Four 16-bit values from one 8-byte load (element 0 in the low half of .x).
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                     __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ float4 load4(const __half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return make_float4(__half2float(__ushort_as_half(static_cast<unsigned short>(u.x & 0xffffu))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(u.x >> 16))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(u.y & 0xffffu))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(u.y >> 16))));
}

// ---- sum_squares_multi ----------------------------------------------------------------------

struct SumSquaresTable {
  const void* data[kMaxSumTensors];
  int64_t numel[kMaxSumTensors];
  int64_t chunk_begin[kMaxSumTensors + 1];  // prefix of ceil(numel / kMultiChunk)
  uint8_t kind[kMaxSumTensors];
  int count;
};
static_assert(sizeof(SumSquaresTable) + sizeof(double*) <= kMaxKernelParams);

// This thread's share of sum(x[begin, end)^2), in double (exact squares of f32 values).
template <typename T>
__device__ double chunk_sum_squares(const T* x, int64_t begin, int64_t end, bool vector) {
  double acc = 0.0;
  int64_t scalar_begin = begin;
  if (vector) {
    const int64_t vectors = (end - begin) >> 2;
    for (int64_t j = threadIdx.x; j < vectors; j += blockDim.x) {
      const float4 v = load4(x + begin + 4 * j);
      acc += double(v.x) * v.x;
      acc += double(v.y) * v.y;
      acc += double(v.z) * v.z;
      acc += double(v.w) * v.w;
    }
    scalar_begin = begin + 4 * vectors;
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x) {
    const double v = load1(x + i);
    acc += v * v;
  }
  return acc;
}

// partial[blockIdx.x] = this block's sum over its chunks (fixed chunk order, fixed tree).
__global__ void __launch_bounds__(kMultiThreads)
    sum_squares_multi_kernel(const __grid_constant__ SumSquaresTable t, double* partial) {
  __shared__ double shared[32];
  double acc = 0.0;
  const int64_t chunks = t.chunk_begin[t.count];
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const int i = find_tensor(t.chunk_begin, t.count, c);
    const int64_t begin = (c - t.chunk_begin[i]) * kMultiChunk;
    const int64_t end = min(begin + kMultiChunk, t.numel[i]);
    const bool vector = (t.kind[i] & kVector) != 0;
    switch (t.kind[i] & kDTypeMask) {
      case kF32:
        acc += chunk_sum_squares(static_cast<const float*>(t.data[i]), begin, end, vector);
        break;
      case kBF16:
        acc += chunk_sum_squares(static_cast<const __nv_bfloat16*>(t.data[i]), begin, end, vector);
        break;
      default:
        acc += chunk_sum_squares(static_cast<const __half*>(t.data[i]), begin, end, vector);
        break;
    }
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// out[0] += sum(partial[0, n)) in double (one block, fixed order), rounded once.
__global__ void sum_partials_kernel(const double* partial, int n, float* out) {
  __shared__ double shared[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) out[0] = static_cast<float>(double(out[0]) + total);
}

// ---- adamw_update_multi ---------------------------------------------------------------------

struct AdamWTable {
  float* param[kMaxAdamWTensors];
  float* grad[kMaxAdamWTensors];
  float* exp_avg[kMaxAdamWTensors];
  float* exp_avg_sq[kMaxAdamWTensors];
  void* copy[kMaxAdamWTensors];  // compute copy or null
  int64_t numel[kMaxAdamWTensors];
  int64_t chunk_begin[kMaxAdamWTensors + 1];
  float weight_decay[kMaxAdamWTensors];
  uint8_t kind[kMaxAdamWTensors];  // the copy's dtype (kNone without one) | kVector
  int count;
};

// What every element of the call shares; the clip is derived on the device from the norm.
struct AdamWMultiConstants {
  float b1, b2, lr, eps, grad_scale, inv_bc1, inv_bc2, max_grad_norm;
  const float* grad_sum_squares;  // (1) on the device
  // (4) on the device or null: lr, inv_bc1, inv_bc2, grad_scale read at run time (AdamWStep::
  // scalars), so a captured CUDA Graph replays each step with that step's values.
  const float* scalars;
};
static_assert(sizeof(AdamWTable) + sizeof(AdamWMultiConstants) <= kMaxKernelParams);

// adamw_kernel's arithmetic, expression for expression (so the fused step matches the
// per-tensor one bit for bit; see the contract in backend.h).
__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v,
                                              const AdamWConstants& k) {
  const float gi = k.grad_scale * g;
  const float mi = k.b1 * m + (1.0f - k.b1) * gi;
  const float vi = k.b2 * v + (1.0f - k.b2) * gi * gi;
  m = mi;
  v = vi;
  const float update = (mi * k.inv_bc1) / (sqrtf(vi * k.inv_bc2) + k.eps) + k.wd * p;
  p -= k.lr * update;
}

__device__ __forceinline__ void store_copy1(void* copy, uint8_t dtype, int64_t i, float p) {
  if (dtype == kBF16) {
    static_cast<__nv_bfloat16*>(copy)[i] = __float2bfloat16_rn(p);
  } else if (dtype == kF16) {
    static_cast<__half*>(copy)[i] = __float2half_rn(p);
  } else if (dtype == kF32) {
    static_cast<float*>(copy)[i] = p;
  }
}

// Four consecutive copy elements from element i (a multiple of 4 of an aligned tensor).
__device__ __forceinline__ void store_copy4(void* copy, uint8_t dtype, int64_t i, float4 p) {
  if (dtype == kBF16) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(p.x, p.y), hi = __floats2bfloat162_rn(p.z, p.w);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&lo);
    u.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(copy) + i)[0] = u;
  } else if (dtype == kF16) {
    const __half2 lo = __floats2half2_rn(p.x, p.y), hi = __floats2half2_rn(p.z, p.w);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&lo);
    u.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(static_cast<__half*>(copy) + i)[0] = u;
  } else if (dtype == kF32) {
    reinterpret_cast<float4*>(static_cast<float*>(copy) + i)[0] = p;
  }
}

__global__ void __launch_bounds__(kMultiThreads)
    adamw_multi_kernel(const __grid_constant__ AdamWTable t, const AdamWMultiConstants k) {
  // Every thread derives the same clip from the same value, in the CPU's order.
  const float sum_squares = *k.grad_sum_squares;
  // Skipped step (non-finite norm): nothing is written, grads included (see backend.h).
  if (!isfinite(sum_squares)) return;
  const float lr = k.scalars != nullptr ? k.scalars[0] : k.lr;
  const float inv_bc1 = k.scalars != nullptr ? k.scalars[1] : k.inv_bc1;
  const float inv_bc2 = k.scalars != nullptr ? k.scalars[2] : k.inv_bc2;
  const float grad_scale = k.scalars != nullptr ? k.scalars[3] : k.grad_scale;
  float clip = 1.0f;
  if (k.max_grad_norm > 0.0f) {
    const float norm = sqrtf(sum_squares) * grad_scale;
    clip = fminf(1.0f, k.max_grad_norm / norm);
  }
  AdamWConstants c{k.b1, k.b2, lr, k.eps, 0.0f, grad_scale * clip, inv_bc1, inv_bc2};
  const int64_t chunks = t.chunk_begin[t.count];
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    const int i = find_tensor(t.chunk_begin, t.count, chunk);
    const int64_t begin = (chunk - t.chunk_begin[i]) * kMultiChunk;
    const int64_t end = min(begin + kMultiChunk, t.numel[i]);
    const int64_t vectors = (t.kind[i] & kVector) ? (end - begin) >> 2 : 0;
    const int64_t scalar_begin = begin + 4 * vectors;
    float* __restrict__ p = t.param[i];
    float* __restrict__ g = t.grad[i];
    float* __restrict__ m = t.exp_avg[i];
    float* __restrict__ v = t.exp_avg_sq[i];
    c.wd = t.weight_decay[i];
    void* copy = t.copy[i];
    const uint8_t copy_dtype = t.kind[i] & kDTypeMask;
    for (int64_t j = threadIdx.x; j < vectors; j += blockDim.x) {
      const int64_t e = begin + 4 * j;
      // Moments and grads are touched once per step: stream them past the caches.
      float4 p4 = *reinterpret_cast<const float4*>(p + e);
      const float4 g4 = __ldcs(reinterpret_cast<const float4*>(g + e));
      float4 m4 = __ldcs(reinterpret_cast<const float4*>(m + e));
      float4 v4 = __ldcs(reinterpret_cast<const float4*>(v + e));
      adamw_element(p4.x, g4.x, m4.x, v4.x, c);
      adamw_element(p4.y, g4.y, m4.y, v4.y, c);
      adamw_element(p4.z, g4.z, m4.z, v4.z, c);
      adamw_element(p4.w, g4.w, m4.w, v4.w, c);
      *reinterpret_cast<float4*>(p + e) = p4;
      __stcs(reinterpret_cast<float4*>(m + e), m4);
      __stcs(reinterpret_cast<float4*>(v + e), v4);
      __stcs(reinterpret_cast<float4*>(g + e), make_float4(0.0f, 0.0f, 0.0f, 0.0f));
      store_copy4(copy, copy_dtype, e, p4);
    }
    for (int64_t e = scalar_begin + threadIdx.x; e < end; e += blockDim.x) {
      float pe = p[e], me = m[e], ve = v[e];
      adamw_element(pe, g[e], me, ve, c);
      p[e] = pe;
      m[e] = me;
      v[e] = ve;
      g[e] = 0.0f;
      store_copy1(copy, copy_dtype, e, pe);
    }
  }
}

// A float tensor for the multi-tensor ops: defined, on this device, f32 / bf16 / f16.
void expect_float(const Backend& backend, const char* op, const std::string& name,
                  const Tensor& t) {
  if (!t.defined() || t.device() != backend.device() ||
      (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16 && t.dtype() != DType::kF16)) {
    kChecks.fail(op, name + " is " + describe(t) +
                         "; expected a tensor of dtype f32, bf16 or f16 on " +
                         to_string(backend.device()));
  }
}

// An f32 tensor on this device (kChecks.dtype checks the device type; this also checks the index).
void expect_f32(const Backend& backend, const char* op, const std::string& name, const Tensor& t) {
  kChecks.dtype(op, name.c_str(), t, DType::kF32);
  if (t.device() != backend.device()) {
    kChecks.fail(
        op, name + " is " + describe(t) + "; expected a tensor on " + to_string(backend.device()));
  }
}

int64_t chunks_of(int64_t numel) {
  return (numel + kMultiChunk - 1) / kMultiChunk;
}

}  // namespace

void CudaBackend::sum_squares_multi(const std::vector<Tensor>& xs, const Tensor& out) {
  OpScope op_scope(profiler_.get(), "sum_squares_multi");
  const char* op = "sum_squares_multi";
  for (size_t i = 0; i < xs.size(); ++i)
    expect_float(*this, op, "xs[" + std::to_string(i) + "]", xs[i]);
  expect_f32(*this, op, "out", out);
  if (out.numel() != 1) kChecks.fail(op, "out is " + describe(out) + "; expected (1)");

  // Tables of at most kMaxSumTensors non-empty tensors, each launch writing its own run of
  // partials; the grouping depends only on the list, so the reduction tree is fixed.
  std::vector<SumSquaresTable> tables;
  for (const Tensor& x : xs) {
    if (x.numel() == 0) continue;
    if (tables.empty() || tables.back().count == kMaxSumTensors) {
      tables.emplace_back();
      tables.back().count = 0;
      tables.back().chunk_begin[0] = 0;
    }
    SumSquaresTable& t = tables.back();
    const int i = t.count++;
    t.data[i] = x.raw();
    t.numel[i] = x.numel();
    t.chunk_begin[i + 1] = t.chunk_begin[i] + chunks_of(x.numel());
    const bool vector = aligned(x.raw(), x.dtype() == DType::kF32 ? 16 : 8);
    t.kind[i] = static_cast<uint8_t>(kind_of(x.dtype()) | (vector ? kVector : 0));
  }
  if (tables.empty()) return;  // nothing to add
  std::vector<int> grids;
  int partials = 0;
  for (const SumSquaresTable& t : tables) {
    grids.push_back(static_cast<int>(std::min<int64_t>(t.chunk_begin[t.count], kSumGrid)));
    partials += grids.back();
  }
  Tensor scratch_partials = scratch(size_t(partials) * sizeof(double));
  double* partial = ptr<double>(scratch_partials);
  int offset = 0;
  for (size_t l = 0; l < tables.size(); ++l) {
    sum_squares_multi_kernel<<<grids[l], kMultiThreads, 0, stream_>>>(tables[l], partial + offset);
    NNKIT_CUDA_CHECK_LAUNCH(sum_squares_multi_kernel);
    offset += grids[l];
  }
  sum_partials_kernel<<<1, 1024, 0, stream_>>>(partial, partials, ptr<float>(out));
  NNKIT_CUDA_CHECK_LAUNCH(sum_partials_kernel);
}

void CudaBackend::adamw_update_multi(const std::vector<AdamWTensor>& tensors, const AdamWStep& step,
                                     const Tensor& grad_sum_squares, float max_grad_norm) {
  OpScope op_scope(profiler_.get(), "adamw_update_multi");
  const char* op = "adamw_update_multi";
  // Everything is checked before the first launch, so a wiring error updates nothing.
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AdamWTensor& a = tensors[i];
    const std::string at = "tensors[" + std::to_string(i) + "].";
    expect_f32(*this, op, at + "param", a.param);
    expect_f32(*this, op, at + "grad", a.grad);
    expect_f32(*this, op, at + "exp_avg", a.exp_avg);
    expect_f32(*this, op, at + "exp_avg_sq", a.exp_avg_sq);
    kChecks.same_shape(op, (at + "param").c_str(), a.param, (at + "grad").c_str(), a.grad);
    kChecks.same_shape(op, (at + "param").c_str(), a.param, (at + "exp_avg").c_str(), a.exp_avg);
    kChecks.same_shape(op, (at + "param").c_str(), a.param, (at + "exp_avg_sq").c_str(),
                       a.exp_avg_sq);
    if (a.compute_copy.defined()) {
      expect_float(*this, op, at + "compute_copy", a.compute_copy);
      if (a.compute_copy.numel() != a.param.numel()) {
        kChecks.fail(op, at + "compute_copy is " + describe(a.compute_copy) + " and " + at +
                             "param is " + describe(a.param) +
                             "; expected the same number of elements");
      }
    }
  }
  expect_f32(*this, op, "grad_sum_squares", grad_sum_squares);
  if (grad_sum_squares.numel() != 1) {
    kChecks.fail(op, "grad_sum_squares is " + describe(grad_sum_squares) + "; expected (1)");
  }
  if (step.step < 1) {
    kChecks.fail(op, "step = " + std::to_string(step.step) + "; steps are 1-based");
  }
  if (step.scalars.defined()) {
    expect_f32(*this, op, "step.scalars", step.scalars);
    if (step.scalars.numel() != 4) {
      kChecks.fail(op, "step.scalars is " + describe(step.scalars) + "; expected (4)");
    }
  }
  const double s = static_cast<double>(step.step);
  const AdamWMultiConstants k{step.beta1,
                              step.beta2,
                              step.lr,
                              step.eps,
                              step.grad_scale,
                              static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta1), s))),
                              static_cast<float>(1.0 / (1.0 - std::pow(double(step.beta2), s))),
                              max_grad_norm,
                              ptr<float>(grad_sum_squares),
                              step.scalars.defined() ? ptr<float>(step.scalars) : nullptr};

  // One launch per kMaxAdamWTensors non-empty tensors (one for a typical model). A launch of
  // one wave of resident blocks strides over the chunks: equal-sized chunks balance by themselves.
  const unsigned max_grid = static_cast<unsigned>(std::max(1, limits_.sms) * 8);
  auto table = std::make_unique<AdamWTable>();  // ~29 KB: off the host stack
  auto launch = [&] {
    if (table->count == 0) return;
    const int64_t chunks = table->chunk_begin[table->count];
    const auto grid = static_cast<unsigned>(std::min<int64_t>(chunks, max_grid));
    adamw_multi_kernel<<<grid, kMultiThreads, 0, stream_>>>(*table, k);
    NNKIT_CUDA_CHECK_LAUNCH(adamw_multi_kernel);
    table->count = 0;
  };
  table->count = 0;
  table->chunk_begin[0] = 0;
  for (const AdamWTensor& a : tensors) {
    if (a.param.numel() == 0) continue;
    const int i = table->count++;
    table->param[i] = ptr<float>(a.param);
    table->grad[i] = ptr<float>(a.grad);
    table->exp_avg[i] = ptr<float>(a.exp_avg);
    table->exp_avg_sq[i] = ptr<float>(a.exp_avg_sq);
    table->copy[i] = a.compute_copy.defined() ? a.compute_copy.raw() : nullptr;
    table->numel[i] = a.param.numel();
    table->chunk_begin[i + 1] = table->chunk_begin[i] + chunks_of(a.param.numel());
    table->weight_decay[i] = a.weight_decay;
    const uint8_t copy_dtype =
        a.compute_copy.defined() ? kind_of(a.compute_copy.dtype()) : static_cast<uint8_t>(kNone);
    const bool vector =
        aligned(table->param[i], 16) && aligned(table->grad[i], 16) &&
        aligned(table->exp_avg[i], 16) && aligned(table->exp_avg_sq[i], 16) &&
        (copy_dtype == kNone || aligned(table->copy[i], copy_dtype == kF32 ? 16 : 8));
    table->kind[i] = static_cast<uint8_t>(copy_dtype | (vector ? kVector : 0));
    if (table->count == kMaxAdamWTensors) launch();
  }
  launch();
}

}  // namespace nnkit::cuda
