// Purpose: Tensor views and dtype/shape helpers.
#include "nnkit/tensor.h"

#include <sstream>

#include "nnkit/error.h"

namespace nnkit {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
    case DType::kU8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
    case DType::kU8:
      return "u8";
  }
  return "?";
}

std::string to_string(const Device& device) {
  return device.type == DeviceType::kCpu ? "cpu" : "cuda:" + std::to_string(device.index);
}

int64_t shape_numel(const Shape& shape) {
  // Sizes come from user input (config dims): a product that wraps around would allocate the
  // wrong amount and index out of bounds later, so it is an error here.
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) {
      throw ShapeError("tensor", "shape " + to_string(shape) +
                                     (d < 0 ? " has a negative dimension"
                                            : " has more elements than a 64-bit count holds"));
    }
  }
  return n;
}

std::string to_string(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, DType dtype, size_t byte_offset)
    : storage_(std::move(storage)),
      shape_(std::move(shape)),
      dtype_(dtype),
      byte_offset_(byte_offset) {
  for (int64_t d : shape_) {
    if (d < 0) throw ShapeError("tensor", "negative dimension in shape " + to_string(shape_));
  }
  if (storage_ && byte_offset_ + nbytes() > storage_->bytes) {
    throw ShapeError("tensor", "view " + to_string(shape_) + " at byte offset " +
                                   std::to_string(byte_offset_) + " exceeds storage of " +
                                   std::to_string(storage_->bytes) + " bytes");
  }
}

int64_t Tensor::dim(int i) const {
  const int r = rank();
  const int k = i < 0 ? r + i : i;
  if (k < 0 || k >= r) {
    throw ShapeError("tensor", "dimension " + std::to_string(i) + " out of range for shape " +
                                   to_string(shape_));
  }
  return shape_[static_cast<size_t>(k)];
}

Device Tensor::device() const {
  return storage_ ? storage_->device : Device{};
}

void* Tensor::raw() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data.get()) + byte_offset_;
}

void* Tensor::host_raw() const {
  if (storage_ && !storage_->device.is_host()) {
    throw ShapeError("tensor", "host access to a tensor on " + to_string(storage_->device) +
                                   "; copy it to the host first");
  }
  return raw();
}

Tensor Tensor::view(Shape shape) const {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw ShapeError("tensor", "view " + to_string(shape) + " has two -1 dims");
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0 && known > 0) shape[static_cast<size_t>(infer)] = numel() / known;
  bool negative = false;
  for (int64_t d : shape) negative = negative || d < 0;
  if (negative || shape_numel(shape) != numel()) {
    throw ShapeError("tensor", "cannot view " + to_string(shape_) + " as " + to_string(shape));
  }
  return Tensor(storage_, std::move(shape), dtype_, byte_offset_);
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  if (rank() == 0 || begin < 0 || end < begin || end > shape_[0]) {
    throw ShapeError("tensor", "row slice [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   ") out of range for shape " + to_string(shape_));
  }
  Shape shape = shape_;
  const int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  shape[0] = end - begin;
  return Tensor(storage_, std::move(shape), dtype_,
                byte_offset_ + static_cast<size_t>(begin * row) * dtype_size(dtype_));
}

std::string describe(const Tensor& tensor) {
  if (!tensor.defined()) return "undefined tensor";
  return std::string(dtype_name(tensor.dtype())) + to_string(tensor.shape()) + " on " +
         to_string(tensor.device());
}

}  // namespace nnkit
