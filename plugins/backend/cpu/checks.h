// Purpose: backend/cpu's names for the shared op argument checks (../common/op_checks.h): every
// op validates its tensors before touching memory, so a wiring error is a ShapeError naming the
// op ("[backend/cpu] gemm: ...") instead of a crash inside an OpenMP region.
// Ownership: stateless helpers.
#pragma once

#include <cstdint>
#include <string>

#include "../common/op_checks.h"
#include "nnkit/tensor.h"

namespace nnkit::cpu {

using backend_common::RowShape;

inline constexpr backend_common::OpChecks kChecks{"backend/cpu", DeviceType::kCpu};

// Throws ShapeError("[backend/cpu] <op>: <message>").
[[noreturn]] inline void shape_fail(const char* op, const std::string& message) {
  kChecks.fail(op, message);
}
// `t` is defined, lives on the host and has `dtype`.
inline void expect_dtype(const char* op, const char* name, const Tensor& t, DType dtype) {
  kChecks.dtype(op, name, t, dtype);
}
// As expect_dtype, and its shape is exactly `shape`.
inline void expect_tensor(const char* op, const char* name, const Tensor& t, DType dtype,
                          const Shape& shape) {
  kChecks.tensor(op, name, t, dtype, shape);
}
// `b` has the same shape as `a` (both already dtype-checked).
inline void expect_same_shape(const char* op, const char* a_name, const Tensor& a,
                              const char* b_name, const Tensor& b) {
  kChecks.same_shape(op, a_name, a, b_name, b);
}
// A tensor read as (rows, cols): rank >= 1, cols = last dimension, rows = the rest.
inline RowShape expect_rows(const char* op, const char* name, const Tensor& t, DType dtype) {
  return kChecks.rows(op, name, t, dtype);
}

// The first element as a typed host pointer (the tensor has been checked).
template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

// Loops shorter than this stay on one thread: a parallel region costs a few microseconds.
inline constexpr int64_t kParallelGrain = 1 << 14;

}  // namespace nnkit::cpu
