// Purpose: programmatic dependent launch (PDL, sm_90) for the kernels of a decode step. A decode
// step is ~14 small dependent kernels per layer; launched with PDL, a kernel's blocks are
// scheduled while its predecessor is still running (once every block of the predecessor has
// called allow_dependent_launch() or exited), do what needs none of the predecessor's results
// (prefetch their weights into L2), and then wait in wait_for_preceding_grid() until the
// predecessor has completed and its writes are visible. bench/graph_gap.cu measured the saving
// per dependent node on the H200. Owned by backend/cuda.
//
// The rule that keeps this correct: a kernel launched by launch_dependent() calls
// wait_for_preceding_grid() before it reads anything a predecessor writes and before it writes
// anything (a predecessor may still read it). Waiting is transitive (a predecessor completes only
// after its own wait), so everything earlier in the stream is visible after it. Both calls are
// no-ops in a kernel launched plainly, so these kernels serve every other caller unchanged.
// NNKIT_PDL=0 launches them plainly (to compare on one machine).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "cuda_check.h"

namespace nnkit::cuda {

__device__ __forceinline__ void wait_for_preceding_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Brings the 128-byte line at p into L2 (weights, which no kernel of the step writes).
__device__ __forceinline__ void prefetch_to_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

inline bool dependent_launch_enabled() {
  static const bool enabled = [] {
    const char* flag = std::getenv("NNKIT_PDL");
    return flag == nullptr || std::strcmp(flag, "0") != 0;
  }();
  return enabled;
}

// kernel<<<grid, block, shared, stream>>>(args...) with programmatic stream serialization.
template <typename... Params, typename... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = dependent_launch_enabled() ? 1 : 0;
  NNKIT_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace nnkit::cuda
