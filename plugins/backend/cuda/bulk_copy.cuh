// Purpose: Hopper bulk copies (cp.async.bulk, the copy engine behind TMA) from global into shared
// memory, completed through shared-memory transaction barriers (mbarrier), for kernels that
// stream weights: the bytes in flight cost no registers, so a block can keep well over 100 KB
// in flight while its warps compute on the stage before. sm_90 only: the wrappers compile to
// nothing on older architectures, and callers check the device first. Owned by backend/cuda.
//
// Protocol (one producer, several consumers, a ring of stages): a stage's "full" barrier counts
// one arrival (the producer's, which also announces the stage's bytes) plus the bytes the
// copies complete; its "empty" barrier counts one arrival per consumer warp. Use u of a stage
// waits on parity u & 1.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "mma_m16n8k16.cuh"

namespace nnkit::cuda {

namespace {

__device__ __forceinline__ void barrier_init(uint64_t* barrier, unsigned arrivals) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(barrier)),
               "r"(arrivals)
               : "memory");
#endif
}

// Makes initialised barriers visible to the copy engine (then a __syncthreads for the threads).
__device__ __forceinline__ void barrier_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival that also adds `bytes` to the transactions the phase waits for.
__device__ __forceinline__ void barrier_arrive_expect_bytes(uint64_t* barrier, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   shared_address(barrier)),
               "r"(bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void barrier_arrive(uint64_t* barrier) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(barrier))
               : "memory");
#endif
}

__device__ __forceinline__ void barrier_wait(uint64_t* barrier, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned done = 0;
  do {
    asm volatile(
        "{\n .reg .pred ready;\n"
        " mbarrier.try_wait.parity.shared::cta.b64 ready, [%1], %2;\n"
        " selp.u32 %0, 1, 0, ready;\n}\n"
        : "=r"(done)
        : "r"(shared_address(barrier)), "r"(parity)
        : "memory");
  } while (done == 0);
#endif
}

// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to this block's shared
// memory; completion is counted on `barrier`.
__device__ __forceinline__ void bulk_copy_to_shared(void* shared, const void* global,
                                                    unsigned bytes, uint64_t* barrier) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(shared_address(shared)),
      "l"(global), "r"(bytes), "r"(shared_address(barrier))
      : "memory");
#endif
}

// A barrier among the first `threads` threads of the block (named barrier `id`, not 0).
__device__ __forceinline__ void named_barrier_sync(unsigned id, unsigned threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace

}  // namespace nnkit::cuda
