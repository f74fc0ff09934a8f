// Purpose: see op_checks.h. Compiled into each backend plugin.
#include "op_checks.h"

#include "nnkit/error.h"

namespace nnkit::backend_common {

std::string DTypes::names() const {
  std::string out;
  int listed = 0, total = 0;
  for (unsigned d = 0; d < 32; ++d) total += (bits_ >> d) & 1u;
  for (unsigned d = 0; d < 32; ++d) {
    if (((bits_ >> d) & 1u) == 0) continue;
    if (listed > 0) out += listed + 1 == total ? " or " : ", ";
    out += dtype_name(static_cast<DType>(d));
    ++listed;
  }
  return out;
}

void OpChecks::fail(const char* op, const std::string& message) const {
  throw ShapeError(component, std::string(op) + ": " + message);
}

void OpChecks::on_device(const char* op, const char* name, const Tensor& t) const {
  if (!t.defined()) fail(op, std::string(name) + " is an undefined tensor");
  if (t.device().type != device) {
    fail(op, std::string(name) + " is " + describe(t) + "; this backend needs " +
                 (device == DeviceType::kCpu ? "host" : "CUDA device") + " tensors");
  }
}

void OpChecks::dtype(const char* op, const char* name, const Tensor& t, DType want) const {
  float_dtype(op, name, t, DTypes{want});
}

void OpChecks::float_dtype(const char* op, const char* name, const Tensor& t,
                           DTypes allowed) const {
  on_device(op, name, t);
  if (!allowed.contains(t.dtype())) {
    fail(op, std::string(name) + " is " + describe(t) + "; expected dtype " + allowed.names());
  }
}

void OpChecks::float_tensor(const char* op, const char* name, const Tensor& t, DTypes allowed,
                            const Shape& shape) const {
  float_dtype(op, name, t, allowed);
  if (t.shape() != shape) {
    fail(op, std::string(name) + " is " + describe(t) + "; expected shape " + to_string(shape));
  }
}

RowShape OpChecks::float_rows(const char* op, const char* name, const Tensor& t,
                              DTypes allowed) const {
  float_dtype(op, name, t, allowed);
  return rows(op, name, t, t.dtype());
}

void OpChecks::dtype_as(const char* op, const char* name, const Tensor& t, const char* ref_name,
                        const Tensor& ref) const {
  on_device(op, name, t);
  if (t.dtype() != ref.dtype()) {
    fail(op, std::string(name) + " is " + describe(t) + "; expected dtype " +
                 dtype_name(ref.dtype()) + " (the dtype of " + ref_name + ")");
  }
}

void OpChecks::tensor(const char* op, const char* name, const Tensor& t, DType want,
                      const Shape& shape) const {
  dtype(op, name, t, want);
  if (t.shape() != shape) {
    fail(op, std::string(name) + " is " + describe(t) + "; expected shape " + to_string(shape));
  }
}

void OpChecks::same_shape(const char* op, const char* a_name, const Tensor& a, const char* b_name,
                          const Tensor& b) const {
  if (a.shape() != b.shape()) {
    fail(op, std::string(a_name) + " is " + describe(a) + " but " + b_name + " is " + describe(b) +
                 "; they must have the same shape");
  }
}

RowShape OpChecks::rows(const char* op, const char* name, const Tensor& t, DType want) const {
  dtype(op, name, t, want);
  if (t.rank() < 1) fail(op, std::string(name) + " is " + describe(t) + "; expected (N, C)");
  RowShape s;
  s.cols = t.dim(-1);
  s.rows = 1;
  for (int i = 0; i + 1 < t.rank(); ++i) s.rows *= t.shape()[size_t(i)];
  return s;
}

GemmDims OpChecks::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                        const Tensor& c, DTypes operand_dtypes) const {
  float_dtype("gemm", "a", a, operand_dtypes);
  if (operand_dtypes.single()) {
    // One operand dtype (the fp32 backends): the plain message, as it has always read.
    float_dtype("gemm", "b", b, operand_dtypes);
  } else {
    dtype_as("gemm", "b", b, "a", a);
  }
  float_dtype("gemm", "c", c, DTypes{DType::kF32, a.dtype()});
  if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2) {
    fail("gemm", "a is " + describe(a) + ", b is " + describe(b) + ", c is " + describe(c) +
                     "; all must be 2-D");
  }
  GemmDims d;
  d.m = trans_a ? a.dim(1) : a.dim(0);
  d.k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  d.n = trans_b ? b.dim(0) : b.dim(1);
  if (d.k != kb || c.dim(0) != d.m || c.dim(1) != d.n) {
    fail("gemm", std::string("op(a) = ") + (trans_a ? "a^T" : "a") + " is (" + std::to_string(d.m) +
                     ", " + std::to_string(d.k) + "), op(b) = " + (trans_b ? "b^T" : "b") +
                     " is (" + std::to_string(kb) + ", " + std::to_string(d.n) + "), c is " +
                     describe(c) + "; a is " + describe(a) + ", b is " + describe(b));
  }
  return d;
}

}  // namespace nnkit::backend_common
