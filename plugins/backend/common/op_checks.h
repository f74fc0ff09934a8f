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
#include <initializer_list>
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

// A set of dtypes one argument may take, e.g. {kF32, kBF16, kF16} or {kF32, x.dtype()}.
class DTypes {
 public:
  constexpr DTypes(std::initializer_list<DType> dtypes) {
    for (DType d : dtypes) bits_ |= 1u << static_cast<unsigned>(d);
  }
  constexpr bool contains(DType d) const { return (bits_ >> static_cast<unsigned>(d)) & 1u; }
  constexpr bool single() const { return bits_ != 0 && (bits_ & (bits_ - 1)) == 0; }
  // "f32", "f32 or bf16", "f32, bf16 or f16" (in DType order).
  std::string names() const;

 private:
  unsigned bits_ = 0;
};

// Every float dtype a low-precision backend computes in (the "float" of the Backend contract).
inline constexpr DTypes kFloatDTypes{DType::kF32, DType::kBF16, DType::kF16};

struct OpChecks {
  const char* component;  // "backend/cpu"
  DeviceType device;      // where every tensor of this backend must live

  // Throws ShapeError("[<component>] <op>: <message>").
  [[noreturn]] void fail(const char* op, const std::string& message) const;
  // `t` is defined and lives on this backend's device type.
  void on_device(const char* op, const char* name, const Tensor& t) const;
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
  // `t` is defined, lives on this backend's device type and has one of `allowed`; a refusal
  // names the op, the tensor and the dtypes it takes ("expected dtype f32, bf16 or f16"). With a
  // single allowed dtype this is dtype(), message included.
  void float_dtype(const char* op, const char* name, const Tensor& t, DTypes allowed) const;
  // As float_dtype(), and its shape is exactly `shape`.
  void float_tensor(const char* op, const char* name, const Tensor& t, DTypes allowed,
                    const Shape& shape) const;
  // float_dtype() and the (rows, cols) reading of `t`.
  RowShape float_rows(const char* op, const char* name, const Tensor& t, DTypes allowed) const;
  // `t` is defined, on this device, and has the dtype of `ref` (already checked), for tensors
  // that share one dtype: "dy is f32[4, 8] on cuda:0; expected dtype bf16 (the dtype of x)".
  void dtype_as(const char* op, const char* name, const Tensor& t, const char* ref_name,
                const Tensor& ref) const;
  // gemm's arguments: 2-D tensors on this device whose shapes agree (see Backend::gemm). a has
  // one of `operand_dtypes`, b has a's dtype, c is f32 or a's dtype. The default (f32 only) is
  // the fp32 backends' rule.
  GemmDims gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                DTypes operand_dtypes = DTypes{DType::kF32}) const;
};

}  // namespace nnkit::backend_common
