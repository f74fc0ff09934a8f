// Purpose: see op_checks.h. Compiled into each backend plugin.
#include "op_checks.h"

#include "nnkit/error.h"

namespace nnkit::backend_common {

void OpChecks::fail(const char* op, const std::string& message) const {
  throw ShapeError(component, std::string(op) + ": " + message);
}

void OpChecks::dtype(const char* op, const char* name, const Tensor& t, DType want) const {
  if (!t.defined()) fail(op, std::string(name) + " is an undefined tensor");
  if (t.device().type != device) {
    fail(op, std::string(name) + " is " + describe(t) + "; this backend needs " +
                 (device == DeviceType::kCpu ? "host" : "CUDA device") + " tensors");
  }
  if (t.dtype() != want) {
    fail(op, std::string(name) + " is " + describe(t) + "; expected dtype " + dtype_name(want));
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

}  // namespace nnkit::backend_common
