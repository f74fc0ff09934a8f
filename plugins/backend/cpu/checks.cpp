// Purpose: see checks.h. Owned by backend/cpu.
#include "checks.h"

#include "nnkit/error.h"

namespace nnkit::cpu {

void shape_fail(const char* op, const std::string& message) {
  throw ShapeError(kComponent, std::string(op) + ": " + message);
}

void expect_dtype(const char* op, const char* name, const Tensor& t, DType dtype) {
  if (!t.defined()) shape_fail(op, std::string(name) + " is an undefined tensor");
  if (!t.device().is_host()) {
    shape_fail(op, std::string(name) + " is " + describe(t) + "; this backend needs host tensors");
  }
  if (t.dtype() != dtype) {
    shape_fail(op,
               std::string(name) + " is " + describe(t) + "; expected dtype " + dtype_name(dtype));
  }
}

void expect_tensor(const char* op, const char* name, const Tensor& t, DType dtype,
                   const Shape& shape) {
  expect_dtype(op, name, t, dtype);
  if (t.shape() != shape) {
    shape_fail(op,
               std::string(name) + " is " + describe(t) + "; expected shape " + to_string(shape));
  }
}

void expect_same_shape(const char* op, const char* a_name, const Tensor& a, const char* b_name,
                       const Tensor& b) {
  if (a.shape() != b.shape()) {
    shape_fail(op, std::string(a_name) + " is " + describe(a) + " but " + b_name + " is " +
                       describe(b) + "; they must have the same shape");
  }
}

RowShape expect_rows(const char* op, const char* name, const Tensor& t, DType dtype) {
  expect_dtype(op, name, t, dtype);
  if (t.rank() < 1) shape_fail(op, std::string(name) + " is " + describe(t) + "; expected (N, C)");
  RowShape s;
  s.cols = t.dim(-1);
  s.rows = 1;
  for (int i = 0; i + 1 < t.rank(); ++i) s.rows *= t.shape()[size_t(i)];
  return s;
}

}  // namespace nnkit::cpu
