// Purpose: see mapped_file.h.
#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include "io/quote.h"
#include "nnkit/error.h"

namespace nnkit::io_detail {
namespace fs = std::filesystem;

MappedFile::MappedFile(const fs::path& path) {
  const std::string name = quoted(path);
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st))
    throw IoError("io", "cannot open " + name + ": no such file; check the path");
  if (fs::is_directory(st)) {
    throw IoError("io", "cannot open " + name + ": it is a directory, not a file");
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw IoError("io", "cannot open " + name + ": " + std::strerror(errno));
  }
  struct stat sb {};
  if (::fstat(fd, &sb) != 0) {
    const int err = errno;
    ::close(fd);
    throw IoError("io", "cannot stat " + name + ": " + std::strerror(err));
  }
  size_ = static_cast<size_t>(sb.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw IoError("io", "cannot memory-map " + name + ": " + std::strerror(err));
    }
    map_ = p;
    data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
}

MappedFile MappedFile::from_bytes(std::string bytes) {
  MappedFile f;
  f.owned_ = std::move(bytes);
  f.data_ = reinterpret_cast<const std::byte*>(f.owned_.data());
  f.size_ = f.owned_.size();
  return f;
}

MappedFile::~MappedFile() {
  release();
}

void MappedFile::release() noexcept {
  if (map_ != nullptr) ::munmap(map_, size_);
  map_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  owned_.clear();
}

MappedFile::MappedFile(MappedFile&& other) noexcept {
  *this = std::move(other);
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    map_ = std::exchange(other.map_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owned_ = std::move(other.owned_);
    // A moved std::string may keep small strings inline, so an owned view is re-pointed at our
    // own buffer rather than copied from `other`.
    data_ = map_ != nullptr ? other.data_ : reinterpret_cast<const std::byte*>(owned_.data());
    other.data_ = nullptr;
    other.owned_.clear();
  }
  return *this;
}

}  // namespace nnkit::io_detail
