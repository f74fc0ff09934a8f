// Purpose: RunLock (nnkit/io/run_lock.h): the record it writes, refusal of a second holder in this
// process and in another one (with the holder's PID and host in the message), release on exit
// however the holder ends (kill -9 included), stale and garbage lock files, and the removal of
// temporary checkpoint folders by CheckpointStore::lock_for_writing.
// Thread-safety: none needed; the cross-process cases fork a child that only locks and waits.
#include "nnkit/io/run_lock.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "nnkit/checkpoint.h"

namespace nnkit {
namespace {

using test::TempDir;
using test::write_raw;

std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  return name;
}

std::string lock_error(const std::filesystem::path& dir, const std::string& command) {
  try {
    RunLock second(dir, command);
  } catch (const IoError& e) {
    return e.what();
  }
  ADD_FAILURE() << "a second lock on " << dir << " was granted";
  return "";
}

// A child process that holds the lock on `dir` until the returned pipe is closed (or it is
// killed). Returns its PID once it holds the lock.
pid_t hold_in_child(const std::filesystem::path& dir, int* release_fd) {
  int ready[2], release[2];
  EXPECT_EQ(::pipe(ready), 0);
  EXPECT_EQ(::pipe(release), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(ready[0]);
    ::close(release[1]);
    char status = 'n';
    try {
      RunLock lock(dir, "test child");
      status = 'y';
      (void)!::write(ready[1], &status, 1);
      char ignored;
      (void)!::read(release[0], &ignored, 1);  // returns when the parent closes its end
    } catch (...) {
      (void)!::write(ready[1], &status, 1);
    }
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(release[0]);
  char status = 'n';
  EXPECT_EQ(::read(ready[0], &status, 1), 1);
  ::close(ready[0]);
  EXPECT_EQ(status, 'y') << "the child could not take the lock";
  *release_fd = release[1];
  return pid;
}

TEST(RunLock, RecordsItsHolderAndRemovesTheFileOnRelease) {
  TempDir dir;
  {
    RunLock lock(dir.path(), "nnkit train");
    EXPECT_TRUE(lock.held());
    EXPECT_EQ(lock.run_dir(), dir.path());
    const auto holder = RunLock::read_holder(dir.path());
    ASSERT_TRUE(holder.has_value());
    EXPECT_EQ(holder->pid, ::getpid());
    EXPECT_EQ(holder->host, host_name());
    EXPECT_EQ(holder->command, "nnkit train");
    EXPECT_EQ(holder->started.size(), std::string("2026-01-01T00:00:00Z").size())
        << holder->started;
    EXPECT_EQ(holder->started.back(), 'Z');
  }
  EXPECT_FALSE(std::filesystem::exists(RunLock::lock_path(dir.path())));
  RunLock again(dir.path(), "nnkit train");  // free again once released
  EXPECT_TRUE(again.held());
}

TEST(RunLock, ASecondLockInThisProcessIsRefused) {
  TempDir dir;
  RunLock first(dir.path(), "nnkit train");
  const std::string message = lock_error(dir.path(), "nnkit convert import-hf");
  EXPECT_NE(message.find("this process already holds the run lock"), std::string::npos) << message;
  EXPECT_NE(message.find("`nnkit train`"), std::string::npos) << message;
  EXPECT_TRUE(first.held());
  EXPECT_EQ(RunLock::read_holder(dir.path())->command, "nnkit train");  // record untouched
}

TEST(RunLock, AnotherProcessIsRefusedWithTheHoldersPidAndHost) {
  TempDir dir;
  int release_fd = -1;
  const pid_t child = hold_in_child(dir.path(), &release_fd);
  const std::string message = lock_error(dir.path(), "nnkit train");
  EXPECT_NE(message.find("another nnkit process (pid " + std::to_string(child) + " on host " +
                         host_name() + ", started "),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("`test child`) is using '" + dir.path().string() + "'"), std::string::npos)
      << message;
  EXPECT_NE(message.find("wait for it to finish"), std::string::npos) << message;
  EXPECT_NE(message.find("kill -INT " + std::to_string(child)), std::string::npos) << message;
  EXPECT_NE(message.find("another run directory (--out)"), std::string::npos) << message;
  ::close(release_fd);
  int status = 0;
  ::waitpid(child, &status, 0);
  RunLock mine(dir.path(), "nnkit train");
  EXPECT_TRUE(mine.held());
}

TEST(RunLock, AHolderKilledWithSigkillLeavesNoLockBehind) {
  TempDir dir;
  int release_fd = -1;
  const pid_t child = hold_in_child(dir.path(), &release_fd);
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ::close(release_fd);
  // The file is still there (nothing ran to remove it) and names the dead child...
  ASSERT_TRUE(RunLock::read_holder(dir.path()).has_value());
  EXPECT_EQ(RunLock::read_holder(dir.path())->pid, child);
  // ...but the kernel dropped its lock with it.
  RunLock mine(dir.path(), "nnkit train");
  EXPECT_TRUE(mine.held());
  EXPECT_EQ(RunLock::read_holder(dir.path())->pid, ::getpid());
}

TEST(RunLock, StaleOrGarbageLockFilesDoNotBlock) {
  TempDir dir;
  write_raw(RunLock::lock_path(dir.path()),
            R"({"pid": 999999999, "host": "elsewhere", "started": "2020-01-01T00:00:00Z"})");
  {
    RunLock lock(dir.path(), "nnkit train");
    EXPECT_TRUE(lock.held());
    EXPECT_EQ(RunLock::read_holder(dir.path())->pid, ::getpid());
    EXPECT_EQ(RunLock::read_holder(dir.path())->host, host_name());
  }
  for (const std::string text : {"", "not json", "{\"pid\": \"x\"}", "[1,2]", "{\"pid\": 1"}) {
    write_raw(RunLock::lock_path(dir.path()), text);
    EXPECT_FALSE(RunLock::read_holder(dir.path()).has_value()) << text;
    RunLock lock(dir.path(), "nnkit train");
    EXPECT_TRUE(lock.held()) << text;
  }
}

TEST(RunLock, MovesAndReleasesOnce) {
  TempDir dir;
  RunLock outer;
  EXPECT_FALSE(outer.held());
  {
    RunLock inner(dir.path(), "nnkit train");
    outer = std::move(inner);
    EXPECT_FALSE(inner.held());  // NOLINT(bugprone-use-after-move): moved-from state is defined
  }
  EXPECT_TRUE(outer.held());
  EXPECT_TRUE(std::filesystem::exists(RunLock::lock_path(dir.path())));
  outer.release();
  outer.release();
  EXPECT_FALSE(outer.held());
  EXPECT_FALSE(std::filesystem::exists(RunLock::lock_path(dir.path())));
}

TEST(RunLock, AMissingRunDirectoryIsNamed) {
  TempDir dir;
  test::expect_io_error([&] { RunLock lock(dir / "absent", "nnkit train"); },
                        {"run directory", "absent", "does not exist"});
  EXPECT_FALSE(std::filesystem::exists(dir / "absent"));
}

TEST(RunLock, LockForWritingRemovesOnlyTemporaryCheckpointFolders) {
  TempDir dir;
  const auto root = dir / "checkpoints";
  std::filesystem::create_directories(root / "step-00000005");
  write_raw(root / "step-00000005" / "MANIFEST.json", "{}");
  std::filesystem::create_directories(root / "step-00000010.tmp-4242");
  write_raw(root / "step-00000010.tmp-4242" / "model.safetensors", "half");
  std::filesystem::create_directories(root / "step-00000007.tmp-17");
  write_raw(root / "notes.tmp-1", "not a checkpoint folder");

  const CheckpointStore store(dir.path());
  {
    const RunLock lock = store.lock_for_writing("nnkit train");
    EXPECT_TRUE(lock.held());
    EXPECT_FALSE(std::filesystem::exists(root / "step-00000010.tmp-4242"));
    EXPECT_FALSE(std::filesystem::exists(root / "step-00000007.tmp-17"));
    EXPECT_TRUE(std::filesystem::exists(root / "step-00000005" / "MANIFEST.json"));
    EXPECT_TRUE(std::filesystem::exists(root / "notes.tmp-1"));
    EXPECT_EQ(store.remove_temporary_folders(), 0);
  }
  std::filesystem::create_directories(root / "step-00000011.tmp-1");
  EXPECT_EQ(store.remove_temporary_folders(), 1);
  ASSERT_TRUE(store.latest().has_value());
  EXPECT_EQ(store.latest()->step, 5);
}

TEST(RunLock, LockForWritingIsRefusedWhileHeldAndRemovesNothing) {
  TempDir dir;
  std::filesystem::create_directories(dir / "checkpoints" / "step-00000003.tmp-99");
  const RunLock holder(dir.path(), "nnkit train");
  EXPECT_THROW(CheckpointStore(dir.path()).lock_for_writing("nnkit train"), IoError);
  EXPECT_TRUE(std::filesystem::exists(dir / "checkpoints" / "step-00000003.tmp-99"))
      << "a live holder's save in progress was removed";
}

}  // namespace
}  // namespace nnkit
