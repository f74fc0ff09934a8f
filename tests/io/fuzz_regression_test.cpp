// Replays the fuzzer's seed corpus and every input that once crashed it (tests/io/data/*): each
// must either parse or throw IoError, never crash or throw anything else.
#include <gtest/gtest.h>

#include <filesystem>

#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/safetensors.h"

namespace nnkit {
namespace {

int replay(const std::filesystem::path& dir) {
  int files = 0;
  if (!std::filesystem::is_directory(dir)) return 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.path().extension() == ".md") continue;
    ++files;
    const std::string bytes = read_file(entry.path());
    const std::string leaf = entry.path().filename().string();
    // Seeds say what they are: valid_* must load, bad_* must be rejected; others just must not
    // crash.
    bool accepted = false;
    try {
      SafetensorsFile f = SafetensorsFile::from_bytes(bytes, leaf);
      for (const std::string& name : f.names()) {
        EXPECT_EQ(f.bytes(name).size(), f.info(name).nbytes());
      }
      accepted = true;
    } catch (const IoError&) {
      // rejected cleanly
    }
    if (leaf.starts_with("valid_")) {
      EXPECT_TRUE(accepted) << leaf;
    }
    if (leaf.starts_with("bad_")) {
      EXPECT_FALSE(accepted) << leaf;
    }
    // The file-backed path agrees with the in-memory one.
    try {
      SafetensorsFile f(entry.path());
    } catch (const IoError&) {
    }
  }
  return files;
}

TEST(FuzzRegression, SeedCorpusAndCrashInputs) {
  const int seeds = replay(NNKIT_FUZZ_CORPUS);
  const int crashes = replay(NNKIT_IO_TEST_DATA);
  EXPECT_GT(seeds, 0) << "no seed corpus at " << NNKIT_FUZZ_CORPUS;
  (void)crashes;
}

}  // namespace
}  // namespace nnkit
