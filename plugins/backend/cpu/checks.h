// Purpose: argument validation shared by every backend/cpu op. Each op validates all of its
// tensors before touching memory, so a wiring error surfaces as a ShapeError that names the op
// and describes the tensors ("[backend/cpu] gemm: op(a) is [3, 4] but op(b) is [5, 2] ...")
// instead of a crash inside an OpenMP region (which cannot propagate exceptions).
// Ownership: stateless helpers.
#pragma once

#include <cstdint>
#include <string>

#include "nnkit/tensor.h"

namespace nnkit::cpu {

inline constexpr const char* kComponent = "backend/cpu";

// Throws ShapeError("[backend/cpu] <op>: <message>").
[[noreturn]] void shape_fail(const char* op, const std::string& message);

// `t` is defined, lives on the host and has `dtype`.
void expect_dtype(const char* op, const char* name, const Tensor& t, DType dtype);
// As expect_dtype, and its shape is exactly `shape`.
void expect_tensor(const char* op, const char* name, const Tensor& t, DType dtype,
                   const Shape& shape);
// `b` has the same shape as `a` (both already dtype-checked).
void expect_same_shape(const char* op, const char* a_name, const Tensor& a, const char* b_name,
                       const Tensor& b);

// A tensor read as (rows, cols): rank >= 1, cols = last dimension, rows = the rest.
struct RowShape {
  int64_t rows = 0;
  int64_t cols = 0;
};
RowShape expect_rows(const char* op, const char* name, const Tensor& t, DType dtype);

// The first element as a typed host pointer (the tensor has been checked).
template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

// Loops shorter than this stay on one thread: a parallel region costs a few microseconds.
inline constexpr int64_t kParallelGrain = 1 << 14;

}  // namespace nnkit::cpu
