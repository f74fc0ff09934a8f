// Purpose: small device helpers shared by backend/cuda's kernel files: grid sizing, warp and block
// reductions with a fixed combination order (so results repeat bit for bit), the out-of-range
// index report, and the storage types of the float dtypes (widening loads, rounding stores,
// 16-byte packs, and the host-side dispatch from a DType to its storage type). Owned by
// backend/cuda.
// Precision rule (the Backend contract): a kernel widens every low-precision input to f32 with
// to_float(), does all its arithmetic in f32 (or double), and rounds once with from_float<T>()
// when it stores. For T = float both are the identity, so a kernel templated on its storage type
// computes exactly what its fp32 version computed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda_backend.h"

namespace nnkit::cuda {

inline constexpr int kThreads = 256;  // default block size of the elementwise and row kernels

// Blocks for a grid-stride loop over n elements (capped: each thread then handles several).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 values. The tree is fixed, so the result is deterministic.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  T total = lane < warps ? shared[lane] : T(0);
  return warp_sum(total);
}

__device__ inline float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(total);
}

// Records the first out-of-range index a kernel meets (see DeviceFault); later ones are dropped.
__device__ inline void report_fault(DeviceFault* fault, FaultOp op, int64_t index, int64_t limit,
                                    int64_t row) {
  if (atomicCAS(&fault->op, 0, static_cast<int32_t>(op) + 1) == 0) {
    fault->index = index;
    fault->limit = limit;
    fault->row = row;
  }
}

// ---- float storage types -------------------------------------------------------------------
// f32 -> float, bf16 -> __nv_bfloat16, f16 -> __half.

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
__device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}

// Rounds to nearest, ties to even (the identity for float).
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// Loads `kernel` (and, the first time, its module) now rather than at its first launch (CUDA's
// lazy loading). Best effort: a failure here shows again at the launch.
template <typename Kernel>
void load_kernel_now(Kernel kernel) {
  cudaFuncAttributes attributes;
  if (cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(kernel)) != cudaSuccess) {
    (void)cudaGetLastError();
  }
}

// Elements of T in one 16-byte load: 4 floats or 8 halves.
template <typename T>
inline constexpr int kPackWidth = static_cast<int>(16 / sizeof(T));

// kWidth consecutive elements moved as one vector access (at most 16 bytes per instruction; a
// 32-byte pack of 8 floats becomes two). The pointer must be aligned to the pack's alignment.
template <typename T, int kWidth>
struct alignas(sizeof(T) * kWidth > 16 ? 16 : sizeof(T) * kWidth) Pack {
  T v[kWidth];
};

// Widening load of kWidth consecutive elements at p.
template <int kWidth, typename T>
__device__ __forceinline__ void load_floats(const T* p, float (&out)[kWidth]) {
  const Pack<T, kWidth> pack = *reinterpret_cast<const Pack<T, kWidth>*>(p);
#pragma unroll
  for (int i = 0; i < kWidth; ++i) out[i] = to_float(pack.v[i]);
}

// Rounding store of kWidth consecutive elements at p.
template <int kWidth, typename T>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[kWidth]) {
  Pack<T, kWidth> pack;
#pragma unroll
  for (int i = 0; i < kWidth; ++i) pack.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T, kWidth>*>(p) = pack;
}

// Calls f(offset, width) for every pack of kWidth elements in [0, n) (a grid-stride loop), then
// f(offset, width 1) for the n % kWidth elements left; width is a std::integral_constant, so f
// can size register arrays by it.
template <int kWidth, typename F>
__device__ __forceinline__ void for_each_pack(int64_t n, F&& f) {
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t packs = n / kWidth;
  for (int64_t p = first; p < packs; p += stride) {
    f(p * kWidth, std::integral_constant<int, kWidth>{});
  }
  if constexpr (kWidth > 1) {
    for (int64_t i = packs * kWidth + first; i < n; i += stride) {
      f(i, std::integral_constant<int, 1>{});
    }
  }
}

// Blocks for a for_each_pack over n elements.
template <int kWidth>
unsigned grid_for_packs(int64_t n) {
  return grid_for((n + kWidth - 1) / kWidth);
}

// Runs launch(std::integral_constant<int, width>) with width = kPackWidth<T> (16-byte packs)
// when `packed` (every pointer aligned, rows a whole number of packs), 1 otherwise.
template <typename T, typename Launch>
void with_pack_width(bool packed, Launch&& launch) {
  if (packed) {
    launch(std::integral_constant<int, kPackWidth<T>>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

// True when p may be read in 16-byte packs (host side; tensors from empty() always are, row-range
// views need not be).
inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Names a storage type for the dispatchers below: `[&](auto tag) { using T = typename
// decltype(tag)::type; ... }`.
template <typename T>
struct StorageTag {
  using type = T;
};

// Calls f(StorageTag<T>{}) with T the storage type of a float dtype (f32, bf16, f16); the caller
// has checked the dtype (anything else does nothing).
template <typename F>
void dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32:
      f(StorageTag<float>{});
      return;
    case DType::kBF16:
      f(StorageTag<__nv_bfloat16>{});
      return;
    case DType::kF16:
      f(StorageTag<__half>{});
      return;
    default:
      return;
  }
}

// As dispatch_float for the low-precision dtypes only (bf16, f16), for kernels whose f32 case
// keeps its own code path.
template <typename F>
void dispatch_half(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBF16:
      f(StorageTag<__nv_bfloat16>{});
      return;
    case DType::kF16:
      f(StorageTag<__half>{});
      return;
    default:
      return;
  }
}

}  // namespace nnkit::cuda
