// Purpose: see nnkit/io/run_lock.h. POSIX only (open/flock/fstat).
#include "nnkit/io/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <utility>

#include "io/quote.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"

namespace nnkit {

namespace fs = std::filesystem;

namespace {

using io_detail::quoted;

constexpr const char* kLockFileName = ".lock";
// A holder that unlinks the file between our open() and flock() makes us lock a dead inode; we
// notice and retry. More than a handful of such races in a row means something else is wrong.
constexpr int kMaxLockAttempts = 64;

std::string this_host() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "unknown";
  return name;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm parts{};
  ::gmtime_r(&now, &parts);
  char text[32] = {};
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &parts);
  return text;
}

// The whole file behind `fd` (a lock record is one short line).
std::string read_all(int fd) {
  std::string text;
  char buffer[512];
  off_t offset = 0;
  for (;;) {
    const ssize_t got = ::pread(fd, buffer, sizeof(buffer), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0 || text.size() > 64 * 1024) break;
    text.append(buffer, static_cast<size_t>(got));
    offset += got;
  }
  return text;
}

std::optional<RunLockHolder> parse_holder(const std::string& text) {
  try {
    const nlohmann::json record = nlohmann::json::parse(text);
    if (!record.is_object() || !record.contains("pid") || !record["pid"].is_number_integer()) {
      return std::nullopt;
    }
    RunLockHolder holder;
    holder.pid = record["pid"].get<int64_t>();
    holder.host = record.value("host", std::string());
    holder.started = record.value("started", std::string());
    holder.command = record.value("command", std::string());
    return holder;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;  // torn by a crash mid-write, or not ours: only text
  }
}

// Best effort: a holder whose record cannot be written still holds the lock; the others then
// say only that "another nnkit process" has it.
void write_holder(int fd, const RunLockHolder& holder) {
  const std::string text = nlohmann::json{{"pid", holder.pid},
                                          {"host", holder.host},
                                          {"started", holder.started},
                                          {"command", holder.command}}
                               .dump() +
                           "\n";
  if (::ftruncate(fd, 0) != 0) return;
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n =
        ::pwrite(fd, text.data() + written, text.size() - written, static_cast<off_t>(written));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    written += static_cast<size_t>(n);
  }
}

// True when `fd` is still the file at `path` (its holder did not unlink it meanwhile).
bool is_file_at(int fd, const fs::path& path) {
  struct stat opened {
  }, named{};
  if (::fstat(fd, &opened) != 0 || ::stat(path.c_str(), &named) != 0) return false;
  return opened.st_dev == named.st_dev && opened.st_ino == named.st_ino;
}

std::string refusal(const fs::path& run_dir, const std::optional<RunLockHolder>& holder) {
  const std::string dir = quoted(run_dir);
  if (!holder) {
    return "another nnkit process is using " + dir +
           " (it holds the run lock but has not recorded its PID yet); wait for it to finish or "
           "use another run directory (--out)";
  }
  const bool same_host = holder->host == this_host();
  const std::string pid = std::to_string(holder->pid);
  const std::string command = holder->command.empty() ? "" : ", `" + holder->command + "`";
  if (same_host && holder->pid == static_cast<int64_t>(::getpid())) {
    return "this process already holds the run lock on " + dir + command +
           "; one run directory takes one writer at a time";
  }
  std::string message = "another nnkit process (pid " + pid + " on host " + holder->host +
                        ", started " + holder->started + command + ") is using " + dir +
                        "; wait for it to finish";
  if (same_host) message += " (`kill -INT " + pid + "` stops a training run with a checkpoint)";
  return message + " or use another run directory (--out)";
}

}  // namespace

RunLock::RunLock(const fs::path& run_dir, const std::string& command)
    : run_dir_(run_dir), lock_file_(lock_path(run_dir)) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) {
    throw IoError("io", "run directory " + quoted(run_dir) + " does not exist");
  }
  const fs::path& path = lock_file_;
  for (int attempt = 0; fd_ < 0; ++attempt) {
    if (attempt == kMaxLockAttempts) {
      throw IoError("io", "cannot take the run lock " + quoted(path) +
                              ": the file keeps being replaced by other processes");
    }
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      const int err = errno;
      throw IoError(
          "io", "cannot create the run lock " + quoted(path) + ": " + std::strerror(err) +
                    (err == EACCES || err == EROFS ? "; the run directory must be writable" : ""));
    }
    int rc;
    do {
      rc = ::flock(fd, LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      const int err = errno;
      if (err == EWOULDBLOCK) {
        const std::optional<RunLockHolder> holder = parse_holder(read_all(fd));
        ::close(fd);
        throw IoError("io", refusal(run_dir, holder));
      }
      // ENOLCK and friends: a file system without locks. Refusing would make such run
      // directories unusable; going on unlocked is what every run did before locks existed.
      ::close(fd);
      logger()->warn(
          "cannot lock {} ({}): the file system does not support file locks; make sure no "
          "other nnkit process uses {}",
          path.string(), std::strerror(err), run_dir.string());
      return;
    }
    if (is_file_at(fd, path)) {
      fd_ = fd;
    } else {
      ::close(fd);  // we locked a file its previous holder had just removed; lock the new one
    }
  }
  held_ = true;
  if (const std::optional<RunLockHolder> previous = parse_holder(read_all(fd_))) {
    logger()->info(
        "{} was left by pid {} on host {} (started {}), which no longer holds it; taking it over",
        path.string(), previous->pid, previous->host, previous->started);
  }
  write_holder(fd_,
               RunLockHolder{static_cast<int64_t>(::getpid()), this_host(), utc_now(), command});
}

RunLock::RunLock(RunLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      held_(std::exchange(other.held_, false)),
      run_dir_(std::move(other.run_dir_)),
      lock_file_(std::move(other.lock_file_)) {}

RunLock& RunLock::operator=(RunLock&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::exchange(other.fd_, -1);
    held_ = std::exchange(other.held_, false);
    run_dir_ = std::move(other.run_dir_);
    lock_file_ = std::move(other.lock_file_);
  }
  return *this;
}

RunLock::~RunLock() {
  release();
}

void RunLock::release() noexcept {
  if (fd_ < 0) return;
  // Unlink while still locked: a process that opened the old file meanwhile finds, once it gets
  // the lock, that the file is gone and starts over on a new one (see is_file_at).
  if (held_) ::unlink(lock_file_.c_str());
  ::close(fd_);
  fd_ = -1;
  held_ = false;
}

fs::path RunLock::lock_path(const fs::path& run_dir) {
  return run_dir / kLockFileName;
}

std::optional<RunLockHolder> RunLock::read_holder(const fs::path& run_dir) {
  const int fd = ::open(lock_path(run_dir).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  const std::string text = read_all(fd);
  ::close(fd);
  return parse_holder(text);
}

}  // namespace nnkit
