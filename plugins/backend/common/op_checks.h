// Purpose: argument validation shared by the backend plugins (backend/cpu, backend/cuda). Each op
// validates all of its tensors before touching memory, so a wiring error surfaces as a ShapeError
// that names the backend and the op and describes the tensors
// ("[backend/cuda] gemm: op(a) is (3, 4), op(b) is (5, 2) ...") instead of a crash inside an
// OpenMP region or a CUDA kernel (neither can propagate exceptions).
// Ownership: OpChecks is a value naming the backend component and the device its tensors must
// live on; every backend keeps one constant instance. The sources are compiled into each backend
// plugin (they are not part of the installed SDK).
#pragma once

#include <cstdint>
#include <string>

#include "nnkit/tensor.h"

namespace nnkit::backend_common {

// A tensor read as (rows, cols): rank >= 1, cols = last dimension, rows = the rest.
struct RowShape {
  int64_t rows = 0;
  int64_t cols = 0;
};

// The sizes of c (m, n) = op(a) (m, k) @ op(b) (k, n).
struct GemmDims {
  int64_t m = 0, n = 0, k = 0;
};

struct OpChecks {
  const char* component;  // "backend/cpu"
  DeviceType device;      // where every tensor of this backend must live

  // Throws ShapeError("[<component>] <op>: <message>").
  [[noreturn]] void fail(const char* op, const std::string& message) const;
  // `t` is defined, lives on this backend's device type and has `dtype`.
  void dtype(const char* op, const char* name, const Tensor& t, DType dtype) const;
  // As dtype(), and its shape is exactly `shape`.
  void tensor(const char* op, const char* name, const Tensor& t, DType dtype,
              const Shape& shape) const;
  // `b` has the same shape as `a` (both already dtype-checked).
  void same_shape(const char* op, const char* a_name, const Tensor& a, const char* b_name,
                  const Tensor& b) const;
  // dtype() and the (rows, cols) reading of `t`.
  RowShape rows(const char* op, const char* name, const Tensor& t, DType dtype) const;
  // gemm's arguments: f32 2-D tensors on this device whose shapes agree (see Backend::gemm).
  GemmDims gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                const Tensor& c) const;
};

}  // namespace nnkit::backend_common
