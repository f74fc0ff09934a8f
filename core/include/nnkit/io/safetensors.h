// Purpose: read and write the safetensors format (the Hugging Face weight format):
//   u64 little-endian N | N bytes of JSON header | data
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the start of the data) and may hold "__metadata__": {string: string}. nnkit pads the
// header with spaces to a multiple of 8 so tensor data stays 8-byte aligned.
// The reader trusts nothing: header size, JSON shape, dtypes, shapes (overflow-checked), offsets
// (they must tile the data exactly, no gaps, overlaps or trailing bytes) and names (unique) are all
// validated before any tensor is touched. Tensor names are only keys, never paths.
// Thread-safety: a SafetensorsFile is immutable after construction; const methods may be called
// concurrently (read_into drives a Backend, which is single-threaded; see backend.h).
// Ownership: SafetensorsFile owns the read-only memory mapping; spans returned by bytes() point
// into it and live as long as the object. write_safetensors reads the caller's host memory and
// keeps no pointer. Errors throw IoError("io", ...) naming the file and, where relevant, the
// tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nnkit/export.h"
#include "nnkit/tensor.h"

namespace nnkit {

class Backend;

// A tensor in host memory to be written. `data` holds shape_numel(shape) * dtype_size(dtype)
// contiguous bytes (may be null only for empty tensors).
struct NamedHostTensor {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const void* data = nullptr;
};

// Writes `tensors` (in the given order, contiguous) and `metadata` to `path` atomically through
// AtomicFileWriter. Names must be unique, non-empty and not "__metadata__".
NNKIT_API void write_safetensors(const std::filesystem::path& path,
                                 const std::vector<NamedHostTensor>& tensors,
                                 const std::map<std::string, std::string>& metadata = {});

// Where one tensor lives. begin/end are byte offsets into the data section (end - begin == nbytes).
struct TensorInfo {
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

// The header limit of the reference implementation: a larger header is a corrupt or foreign file.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

class NNKIT_API SafetensorsFile {
 public:
  // Memory-maps `path` and validates it (see above). Throws IoError.
  explicit SafetensorsFile(const std::filesystem::path& path);
  // Parses bytes already in memory (copied); `label` stands in for the file name in messages.
  // Used by the fuzzer and by callers that received a file over the wire.
  static SafetensorsFile from_bytes(std::string_view bytes, const std::string& label = "<memory>");

  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The file name (or label) used in messages.
  const std::string& label() const;
  // Tensor names in the order of their data offsets.
  const std::vector<std::string>& names() const;
  bool has(const std::string& name) const;
  // Throws IoError if there is no such tensor.
  const TensorInfo& info(const std::string& name) const;
  // The raw little-endian bytes of `name` (no alignment guarantee beyond what the writer chose).
  std::span<const std::byte> bytes(const std::string& name) const;
  // The "__metadata__" map (empty if absent).
  const std::map<std::string, std::string>& metadata() const;

  // Copies tensor `name` into `dst` (any device) through backend.copy_from_host. The shape must
  // equal dst's; the dtype must equal dst's, except that bf16/f16 <-> f32 are converted (to half
  // with round-to-nearest-even). Throws IoError naming the file, the tensor and both shapes/dtypes.
  void read_into(const std::string& name, Backend& backend, const Tensor& dst) const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nnkit
