#include "nnkit/io/atomic_file.h"

#include <gtest/gtest.h>

#include "io_test_util.h"

namespace nnkit {
namespace {

using test::expect_io_error;
using test::TempDir;

TEST(AtomicFile, WriteThenReadRoundTrips) {
  TempDir dir;
  const std::string bytes("binary\0data\n", 12);
  write_file_atomic(dir / "a.bin", bytes);
  EXPECT_EQ(read_file(dir / "a.bin"), bytes);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"a.bin"});  // no temp file left behind
}

TEST(AtomicFile, ReplacesExistingFile) {
  TempDir dir;
  write_file_atomic(dir / "a.txt", "old contents");
  write_file_atomic(dir / "a.txt", "new");
  EXPECT_EQ(read_file(dir / "a.txt"), "new");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"a.txt"});
}

TEST(AtomicFile, StreamingWriterCommits) {
  TempDir dir;
  AtomicFileWriter w(dir / "s.bin");
  EXPECT_TRUE(w.is_open());
  w.write("abc", 3);
  w.write("def", 3);
  EXPECT_EQ(w.bytes_written(), 6u);
  EXPECT_FALSE(std::filesystem::exists(dir / "s.bin"));  // invisible until commit
  EXPECT_TRUE(std::filesystem::exists(w.temp_path()));
  w.commit();
  EXPECT_FALSE(w.is_open());
  EXPECT_EQ(read_file(dir / "s.bin"), "abcdef");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"s.bin"});
}

TEST(AtomicFile, AbandonedWriterLeavesTargetAndRemovesTemp) {
  TempDir dir;
  write_file_atomic(dir / "ckpt", "good checkpoint");
  {
    AtomicFileWriter w(dir / "ckpt");
    w.write("partial", 7);
    EXPECT_NE(w.temp_path().filename().string().find("ckpt.tmp."), std::string::npos);
    // destroyed without commit, as when an exception unwinds a checkpoint save
  }
  EXPECT_EQ(read_file(dir / "ckpt"), "good checkpoint");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt"});
}

TEST(AtomicFile, ExceptionBeforeCommitNeverCreatesTarget) {
  TempDir dir;
  try {
    AtomicFileWriter w(dir / "new.bin");
    w.write("x", 1);
    throw std::runtime_error("simulated failure mid-save");
  } catch (const std::runtime_error&) {
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(AtomicFile, ReopenAbandonsPreviousFile) {
  TempDir dir;
  AtomicFileWriter w(dir / "one");
  w.write("1", 1);
  w.open(dir / "two");
  w.write("2", 1);
  w.commit();
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"two"});
}

TEST(AtomicFile, WriteAfterCommitFails) {
  TempDir dir;
  AtomicFileWriter w(dir / "f");
  w.commit();
  expect_io_error([&] { w.write("x", 1); }, {"after it was closed"});
  expect_io_error([&] { w.commit(); }, {"after it was closed"});
}

TEST(AtomicFile, MissingDirectoryIsExplained) {
  TempDir dir;
  expect_io_error([&] { write_file_atomic(dir / "nope" / "f.bin", "x"); },
                  {"nope", "does not exist", "create it first"});
}

TEST(AtomicFile, TargetThatIsADirectoryIsRefused) {
  TempDir dir;
  std::filesystem::create_directory(dir / "d");
  expect_io_error([&] { write_file_atomic(dir / "d", "x"); }, {"is a directory"});
}

TEST(ReadFile, Errors) {
  TempDir dir;
  expect_io_error([&] { read_file(dir / "missing.txt"); }, {"missing.txt", "no such file"});
  expect_io_error([&] { read_file(dir.path()); }, {"is a directory"});
  if (::geteuid() != 0) {  // root reads anything
    test::write_raw(dir / "secret", "x");
    std::filesystem::permissions(dir / "secret", std::filesystem::perms::none);
    expect_io_error([&] { read_file(dir / "secret"); }, {"secret", "Permission denied"});
  }
}

TEST(ReadFile, EmptyFile) {
  TempDir dir;
  test::write_raw(dir / "empty", "");
  EXPECT_EQ(read_file(dir / "empty"), "");
}

TEST(EnsureWritableDirectory, CreatesNestedDirectories) {
  TempDir dir;
  const auto out = dir / "runs" / "a" / "b";
  ensure_writable_directory(out);
  EXPECT_TRUE(std::filesystem::is_directory(out));
  EXPECT_TRUE(std::filesystem::is_empty(out));  // the probe file is gone
  ensure_writable_directory(out);               // idempotent
}

TEST(EnsureWritableDirectory, FileInTheWay) {
  TempDir dir;
  test::write_raw(dir / "file", "x");
  expect_io_error([&] { ensure_writable_directory(dir / "file"); },
                  {"file", "exists and is not a directory"});
  expect_io_error([&] { ensure_writable_directory(dir / "file" / "sub"); },
                  {"cannot create directory"});
}

TEST(EnsureWritableDirectory, ReadOnlyDirectory) {
  if (::geteuid() == 0) GTEST_SKIP() << "root can write to read-only directories";
  TempDir dir;
  std::filesystem::create_directory(dir / "ro");
  std::filesystem::permissions(
      dir / "ro", std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  expect_io_error([&] { ensure_writable_directory(dir / "ro"); }, {"not writable"});
  std::filesystem::permissions(dir / "ro", std::filesystem::perms::owner_all);
}

}  // namespace
}  // namespace nnkit
