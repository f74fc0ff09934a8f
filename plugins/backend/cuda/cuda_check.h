// Purpose: error checks for CUDA runtime and cuBLAS calls and for kernel launches in backend/cuda.
// A failed call throws nnkit::Error tagged "[backend/cuda]" with the call text, the error name and
// string, and the file:line of the call, so a failure names the op that hit it.
// Ownership: stateless macros and helpers.
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace nnkit::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                   int line);
[[noreturn]] void throw_cublas_error(int status, const char* call, const char* file, int line);

}  // namespace nnkit::cuda

#define NNKIT_CUDA_CHECK(call)                                                   \
  do {                                                                           \
    const cudaError_t nnkit_status_ = (call);                                    \
    if (nnkit_status_ != cudaSuccess) {                                          \
      ::nnkit::cuda::throw_cuda_error(nnkit_status_, #call, __FILE__, __LINE__); \
    }                                                                            \
  } while (0)

#define NNKIT_CUBLAS_CHECK(call)                                                   \
  do {                                                                             \
    const int nnkit_status_ = static_cast<int>(call);                              \
    if (nnkit_status_ != 0) {                                                      \
      ::nnkit::cuda::throw_cublas_error(nnkit_status_, #call, __FILE__, __LINE__); \
    }                                                                              \
  } while (0)

// After a <<<...>>> launch: a bad configuration is reported at once (asynchronous faults surface
// at the next synchronising call, which checks too).
#define NNKIT_CUDA_CHECK_LAUNCH(kernel_name) NNKIT_CUDA_CHECK(cudaGetLastError())
