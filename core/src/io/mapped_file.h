// Purpose: a read-only view of a whole file's bytes, memory-mapped, or owned in memory for inputs
// that never touched a disk (the fuzzer, tests). Private to the core's io folder.
// Thread-safety: immutable after construction; concurrent reads are fine.
// Ownership: owns the mapping (or the buffer); the destructor unmaps and never throws. Move-only.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>

namespace nnkit::io_detail {

class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path` read-only. Throws IoError (missing, directory, unreadable). An empty file gives an
  // empty view (mmap refuses zero-length mappings, so nothing is mapped).
  explicit MappedFile(const std::filesystem::path& path);
  // Takes ownership of bytes already in memory.
  static MappedFile from_bytes(std::string bytes);
  ~MappedFile();

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  void release() noexcept;

  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  void* map_ = nullptr;  // non-null when data_ is an mmap'ed region
  std::string owned_;    // the bytes for from_bytes()
};

}  // namespace nnkit::io_detail
