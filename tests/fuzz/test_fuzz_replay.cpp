// Purpose: every fuzz target's seed corpus and saved crash inputs, replayed through its entry
// (fuzz/parsers.h): each input must parse or be refused with the parser's own error; another
// exception fails the test (and a crash or sanitizer report fails the binary).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "parsers.h"

namespace nnkit::fuzz {
namespace {

namespace fs = std::filesystem;

std::string bytes_of(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Runs every file of `dir` (none when it does not exist); returns how many ran.
int replay(const Entry& entry, const fs::path& dir) {
  int count = 0;
  if (!fs::is_directory(dir)) return 0;
  for (const auto& file : fs::directory_iterator(dir)) {
    if (!file.is_regular_file() || file.path().extension() == ".md") continue;
    SCOPED_TRACE(file.path().string());
    try {
      entry.run(bytes_of(file.path()));
    } catch (const std::exception& e) {
      ADD_FAILURE() << entry.name << ": escaped exception: " << e.what();
    }
    ++count;
  }
  return count;
}

class FuzzReplay : public ::testing::TestWithParam<Entry> {};

TEST_P(FuzzReplay, SeedsAndCrashInputs) {
  const Entry& entry = GetParam();
  const std::string name = entry.name;
  const fs::path seeds = name == "safetensors" ? fs::path(NNKIT_FUZZ_DIR) / "corpus"
                                               : fs::path(NNKIT_FUZZ_DIR) / "seeds" / name;
  EXPECT_GT(replay(entry, seeds), 0) << "no seeds in " << seeds;
  replay(entry, fs::path(NNKIT_FUZZ_CRASHES) / name);
}

INSTANTIATE_TEST_SUITE_P(Parsers, FuzzReplay, ::testing::ValuesIn(entries()),
                         [](const ::testing::TestParamInfo<Entry>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace nnkit::fuzz
