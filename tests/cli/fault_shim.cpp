// Purpose: an LD_PRELOAD library for the fault-injection tests: makes write(2) or fsync(2) fail
// with ENOSPC or EIO on files whose path contains a given text, the way a full or failing disk
// would, without needing one. Configured by the environment of the process it is loaded into:
//   NNKIT_FAULT_MATCH        substring of the file's path (from /proc/self/fd), e.g.
//   "step-00000010" NNKIT_FAULT_ERRNO        ENOSPC or EIO NNKIT_FAULT_OP           write (default)
//   or fsync NNKIT_FAULT_AFTER_BYTES  write only: let this many bytes to matching files through
//   first
//                            (across files), then fail every write to a matching file
// Without NNKIT_FAULT_MATCH it passes every call through. Only the test binaries use it.
// Thread-safety: the byte count is atomic; the rest is read-only after the first call.
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

using WriteFn = ssize_t (*)(int, const void*, size_t);
using FsyncFn = int (*)(int);

std::atomic<long long> g_passed{0};

bool matches(int fd) {
  const char* match = std::getenv("NNKIT_FAULT_MATCH");
  if (match == nullptr || *match == '\0' || fd < 3) return false;
  char link[64];
  std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char target[4096];
  const ssize_t n = ::readlink(link, target, sizeof(target) - 1);
  if (n <= 0) return false;
  target[n] = '\0';
  return std::strstr(target, match) != nullptr;
}

bool op_is(const char* op) {
  const char* chosen = std::getenv("NNKIT_FAULT_OP");
  return std::strcmp(chosen != nullptr && *chosen != '\0' ? chosen : "write", op) == 0;
}

int fault_errno() {
  const char* name = std::getenv("NNKIT_FAULT_ERRNO");
  return name != nullptr && std::strcmp(name, "EIO") == 0 ? EIO : ENOSPC;
}

}  // namespace

extern "C" ssize_t write(int fd, const void* data, size_t n) {
  static const auto real = reinterpret_cast<WriteFn>(::dlsym(RTLD_NEXT, "write"));
  if (op_is("write") && matches(fd)) {
    const char* after = std::getenv("NNKIT_FAULT_AFTER_BYTES");
    const long long allowed = after != nullptr ? std::atoll(after) : 0;
    const long long before = g_passed.fetch_add(static_cast<long long>(n));
    if (before + static_cast<long long>(n) > allowed) {
      errno = fault_errno();
      return -1;
    }
  }
  return real(fd, data, n);
}

extern "C" int fsync(int fd) {
  static const auto real = reinterpret_cast<FsyncFn>(::dlsym(RTLD_NEXT, "fsync"));
  if (op_is("fsync") && matches(fd)) {
    errno = fault_errno();
    return -1;
  }
  return real(fd);
}
