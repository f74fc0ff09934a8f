// Purpose: see nnkit/io/atomic_file.h. POSIX only (open/fsync/rename).
#include "nnkit/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "io/quote.h"
#include "nnkit/error.h"

namespace nnkit {
namespace fs = std::filesystem;

namespace {

using io_detail::quoted;

std::string os_reason(int err) {
  return std::strerror(err);
}

// Hints for the failures people can fix themselves.
std::string fix_hint(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return "; free disk space or write somewhere else";
    case EACCES:
    case EPERM:
      return "; check the permissions or choose another location";
    case EROFS:
      return "; the file system is read-only, choose another location";
    default:
      return "";
  }
}

[[noreturn]] void fail(const std::string& what, const fs::path& path, int err) {
  throw IoError("io", what + " " + quoted(path) + ": " + os_reason(err) + fix_hint(err));
}

// The directory a relative or absolute path lives in ("." for a bare file name).
fs::path parent_or_dot(const fs::path& path) {
  fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// Makes the rename durable. Some file systems refuse fsync on directories (EINVAL); the rename
// itself has happened by then, so that is not worth failing a checkpoint over.
void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  int rc;
  do {
    rc = ::fsync(fd);
  } while (rc != 0 && errno == EINTR);
  ::close(fd);
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(const fs::path& path) {
  open(path);
}

AtomicFileWriter::~AtomicFileWriter() {
  abandon();
}

void AtomicFileWriter::abandon() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(temp_path_.c_str());
  }
}

void AtomicFileWriter::open(const fs::path& path) {
  abandon();
  if (path.empty()) throw IoError("io", "cannot write a file with an empty path");
  path_ = path;
  temp_path_ = path;
  temp_path_ += ".tmp." + std::to_string(::getpid());
  bytes_written_ = 0;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    throw IoError("io", "cannot write " + quoted(path) + ": it is a directory");
  }
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    const int err = errno;
    if (err == ENOENT) {
      throw IoError("io", "cannot write " + quoted(path) + ": directory " +
                              quoted(parent_or_dot(path)) + " does not exist; create it first");
    }
    fail("cannot create temporary file for", path, err);
  }
}

void AtomicFileWriter::write(const void* data, size_t n) {
  if (fd_ < 0) throw IoError("io", "write to " + quoted(path_) + " after it was closed");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    // Cap each call: Linux writes at most ~2 GiB per write(2) anyway.
    const size_t chunk = n < (size_t{1} << 30) ? n : (size_t{1} << 30);
    ssize_t w = ::write(fd_, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      abandon();
      fail("cannot write", path_, err);
    }
    p += w;
    n -= static_cast<size_t>(w);
    bytes_written_ += static_cast<uint64_t>(w);
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) throw IoError("io", "commit of " + quoted(path_) + " after it was closed");
  int rc;
  do {
    rc = ::fsync(fd_);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    abandon();
    fail("cannot flush", path_, err);
  }
  // close() can report a deferred write error (NFS); treat it like a failed write.
  rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0 && errno != EINTR) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    fail("cannot close", path_, err);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    fail("cannot replace", path_, err);
  }
  fsync_directory(parent_or_dot(path_));
}

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes.data(), bytes.size());
  writer.commit();
}

std::string read_file(const fs::path& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    throw IoError("io", "cannot read " + quoted(path) + ": no such file; check the path");
  }
  if (fs::is_directory(st)) {
    throw IoError("io", "cannot read " + quoted(path) + ": it is a directory, not a file");
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open", path, errno);
  std::string out;
  struct stat sb {};
  if (::fstat(fd, &sb) == 0 && sb.st_size > 0) out.reserve(static_cast<size_t>(sb.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof(buf));
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail("cannot read", path, err);
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return out;
}

void ensure_writable_directory(const fs::path& dir) {
  if (dir.empty()) throw IoError("io", "output directory path is empty");
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (fs::exists(st) && !fs::is_directory(st)) {
    throw IoError("io", "output directory " + quoted(dir) +
                            " exists and is not a directory; choose another path");
  }
  if (!fs::exists(st)) {
    fs::create_directories(dir, ec);
    if (ec) {
      throw IoError("io", "cannot create directory " + quoted(dir) + ": " + ec.message() +
                              fix_hint(ec.value()));
    }
  }
  const fs::path probe = dir / (".nnkit-write-probe." + std::to_string(::getpid()));
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    const int err = errno;
    throw IoError("io", "directory " + quoted(dir) + " is not writable: " + os_reason(err) +
                            (fix_hint(err).empty() ? "; choose another location" : fix_hint(err)));
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace nnkit
