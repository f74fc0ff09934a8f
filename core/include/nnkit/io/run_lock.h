// Purpose: one process per run directory. A RunLock is an exclusive flock(2) on RUN_DIR/.lock,
// held for as long as the RunLock lives; every command that writes into a run directory (train,
// fresh or resumed; convert import-hf) holds one, so two processes can never interleave metrics
// or checkpoints. The lock file records who holds it (PID, host, start time, command) so that a
// refused process can say whom it is waiting for.
// Stale locks: the kernel drops an flock when its holder exits, however it exits (kill -9
// included), so a lock file left behind by a dead process is only text; the next process takes
// the lock over (and logs whose file it was). Nothing is decided from PIDs, which would be wrong
// across hosts and after PID reuse. On network file systems the lock is as good as the file
// system's flock (NFSv4 and Lustre with flock enabled honour it across hosts); where the file
// system refuses locks, the lock is not held and a warning says so.
// Readers (generate, eval, export-hf, plot) take no lock: checkpoints appear by atomic rename,
// so reading a run that is training is safe and useful.
// Thread-safety: a RunLock is driven by one thread. Two RunLocks on one directory conflict even
// within one process (flock locks belong to the open file description), which keeps a second
// Trainer in a process from sharing a run by accident.
// Ownership: a RunLock owns its file descriptor; it is movable, not copyable. Releasing (or
// destroying) it removes the lock file and closes the descriptor; it never throws.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "nnkit/export.h"

namespace nnkit {

// What a lock file says about the process that wrote it.
struct RunLockHolder {
  int64_t pid = 0;
  std::string host;
  std::string started;  // UTC, ISO 8601 ("2026-12-01T10:00:00Z")
  std::string command;  // what it is doing there ("nnkit train")
};

class NNKIT_API RunLock {
 public:
  // Not holding anything (a moved-from or released lock looks the same).
  RunLock() = default;
  // Takes the lock on `run_dir`, which must exist, without waiting. `command` is recorded for
  // the message other processes get. Throws IoError when the directory does not exist, the lock
  // file cannot be created, or another holder has it: "another nnkit process (pid 1234 on host
  // X, started ..., `nnkit train`) is using 'RUN'; wait for it to finish ...".
  RunLock(const std::filesystem::path& run_dir, const std::string& command);
  RunLock(RunLock&& other) noexcept;
  RunLock& operator=(RunLock&& other) noexcept;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  ~RunLock();

  // Removes the lock file and drops the lock now. Idempotent; never throws.
  void release() noexcept;
  // False when released, moved from, or when the file system does not support locks.
  bool held() const { return held_; }
  const std::filesystem::path& run_dir() const { return run_dir_; }

  // RUN_DIR/.lock
  static std::filesystem::path lock_path(const std::filesystem::path& run_dir);
  // What RUN_DIR/.lock records; nullopt when it is missing, empty or not a lock record.
  static std::optional<RunLockHolder> read_holder(const std::filesystem::path& run_dir);

 private:
  int fd_ = -1;
  bool held_ = false;
  std::filesystem::path run_dir_;
  std::filesystem::path lock_file_;  // run_dir_/.lock, kept so that release() needs no allocation
};

}  // namespace nnkit
