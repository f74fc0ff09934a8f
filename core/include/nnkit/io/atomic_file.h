// Purpose: crash-safe file writes and careful file reads for checkpoints, token files and run
// directories. A write goes to `<path>.tmp.<pid>` in the target's directory, is fsync'ed, renamed
// over the target and the directory is fsync'ed, so a reader (or a crash) sees either the old file
// or the complete new one, never a torn mix.
// Thread-safety: the free functions are thread-safe for distinct paths. An AtomicFileWriter is
// driven by one thread. Two writers to the same path from one process share a temp name and must
// not overlap.
// Ownership: AtomicFileWriter owns its temp file descriptor; if it is destroyed before commit() the
// temp file is removed and the target is untouched. Errors throw IoError tagged "io".
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "nnkit/export.h"

namespace nnkit {

// Replaces `path` with `bytes` atomically (see above). Throws IoError naming the file.
NNKIT_API void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// The whole file as bytes. Throws IoError when the file is missing, is a directory or cannot be
// read, with the OS reason.
NNKIT_API std::string read_file(const std::filesystem::path& path);

// Creates `dir` (and its parents) if needed and proves it is writable by creating and removing a
// probe file. Meant to fail `--out` before hours of training, not at the first checkpoint.
NNKIT_API void ensure_writable_directory(const std::filesystem::path& dir);

// Streaming form of write_file_atomic, for files too large to assemble in memory.
//   AtomicFileWriter w(path);  w.write(p, n); ...;  w.commit();
// Nothing is visible at `path` until commit() returns. Destroying the writer (or an exception
// escaping before commit) removes the temp file and leaves any existing target as it was.
class NNKIT_API AtomicFileWriter {
 public:
  AtomicFileWriter() = default;
  // Same as open(path).
  explicit AtomicFileWriter(const std::filesystem::path& path);
  // Never throws: removes the temp file unless commit() succeeded.
  ~AtomicFileWriter();

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // Creates the temp file next to `path` (whose directory must exist). Abandons any file this
  // writer had open and not committed.
  void open(const std::filesystem::path& path);
  // Appends n bytes. Handles short writes; a failure (e.g. disk full) throws and abandons the file.
  void write(const void* data, size_t n);
  // fsync, rename over the target, fsync the directory. After commit the writer is closed.
  void commit();

  bool is_open() const { return fd_ >= 0; }
  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& temp_path() const { return temp_path_; }
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  void abandon() noexcept;

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  uint64_t bytes_written_ = 0;
};

}  // namespace nnkit
