// Purpose: Tensor, a typed, shaped view of backend-owned memory.
// Ownership: a Tensor shares its Storage (std::shared_ptr); copying a Tensor copies the view, not
// the data. Storage releases its memory through the allocator of the backend that made it, whose
// code lives in the backend's plugin library: release every tensor before the last owner of that
// library (the Registry and the components it created) is gone. Holding a tensor in an object
// that also holds its backend (as Transformer does) is the simple way to keep this rule.
// Thread-safety: a Tensor is a value; concurrent mutation of the same storage is the caller's job.
// Tensors are always contiguous row-major; views are reshapes or row ranges of the first dimension.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/export.h"

namespace nnkit {

enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI32 = 3, kI64 = 4, kU8 = 5 };

NNKIT_API size_t dtype_size(DType dtype);
NNKIT_API const char* dtype_name(DType dtype);

enum class DeviceType : uint8_t { kCpu = 0, kCuda = 1 };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;
  bool operator==(const Device& other) const = default;
  bool is_host() const { return type == DeviceType::kCpu; }
};

NNKIT_API std::string to_string(const Device& device);

using Shape = std::vector<int64_t>;

NNKIT_API int64_t shape_numel(const Shape& shape);
NNKIT_API std::string to_string(const Shape& shape);

// A block of memory on one device. `data` owns the allocation through its deleter.
struct Storage {
  std::shared_ptr<void> data;
  size_t bytes = 0;
  Device device;
};

class NNKIT_API Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, Shape shape, DType dtype, size_t byte_offset = 0);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;  // negative i counts from the end
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;

  // Raw address of the first element (a device address for device tensors).
  void* raw() const;
  // Typed host access; throws if the tensor is not on the host.
  template <typename T>
  T* data() const {
    return static_cast<T*>(host_raw());
  }

  // Same data, new shape with the same number of elements (-1 infers one dimension).
  Tensor view(Shape shape) const;
  // Rows [begin, end) of the first dimension.
  Tensor slice_rows(int64_t begin, int64_t end) const;

  const std::shared_ptr<Storage>& storage() const { return storage_; }

 private:
  void* host_raw() const;

  std::shared_ptr<Storage> storage_;
  Shape shape_;
  DType dtype_ = DType::kF32;
  size_t byte_offset_ = 0;
};

// Describes a tensor in messages: "f32[4, 768] on cpu".
NNKIT_API std::string describe(const Tensor& tensor);

}  // namespace nnkit
