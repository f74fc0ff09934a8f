// Purpose: helpers for the end-to-end CLI tests: run the real `nnkit` binary as a subprocess
// (fork/exec, stdout and stderr captured separately through temporary files), per-test temporary
// directories, a tiny model config and a small English corpus.
// Thread-safety: none needed; GoogleTest runs the tests of one executable sequentially.
// Ownership: TempDir removes its folder (unless NNKIT_KEEP_TEST_DIRS is set); Child waits for
// (and, if still running, kills) its process on destruction.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace nnkit::clitest {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;  // the exit status, or 128 + signal number when killed by a signal
  std::string out;     // stdout
  std::string err;     // stderr
  std::string all() const { return out + err; }
};

// Runs `nnkit args...` with `env` ("NAME=value") added to this process's environment, in `cwd`
// (this process's working directory when empty). Gives up (kills it) after `timeout_s` seconds.
RunResult run_nnkit(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                    const fs::path& cwd = {}, double timeout_s = 60);

// A running `nnkit` process whose output goes to files (read them after wait()).
class Child {
 public:
  Child(const std::vector<std::string>& args, const std::vector<std::string>& env,
        const fs::path& dir);
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();
  pid_t pid() const { return pid_; }
  bool running();  // false once it has exited (reaps it)
  void signal(int sig);
  // Waits up to `timeout_s` seconds (then SIGKILL); returns the result with captured output.
  RunResult wait(double timeout_s = 60);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  fs::path out_, err_;
};

class TempDir {
 public:
  TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

std::string read_text(const fs::path& file);
void write_text(const fs::path& file, const std::string& text);
// The repository (NNKIT_SOURCE_DIR from ctest, or the source tree this test was built from).
fs::path source_dir();
// Each line of a JSON-lines file, parsed (a line that fails to parse fails the test).
std::vector<nlohmann::json> read_jsonl(const fs::path& file);

// A few KB of English prose (distinct sentences, not random bytes).
std::string english_corpus();
// A tiny MoE model: hidden 32, 2 layers, 4 experts top-2, MQA-style GQA, vocab 260, seq_len 16,
// batch 4, 10 steps; `schedule` is the YAML of train.schedule.
std::string tiny_config_yaml(const std::string& schedule =
                                 "{type: warmup_cosine, warmup_steps: 3, "
                                 "min_lr_ratio: 0.1}");

// The per-test fixture: a temporary directory with the corpus, its token file and the config.
class CliTest : public ::testing::Test {
 protected:
  void SetUp() override;
  fs::path path(const std::string& name) const { return dir_ / name; }
  fs::path write(const std::string& name, const std::string& text) const;
  // Trains `config` into `run` with extra arguments; asserts success.
  void train_ok(const fs::path& run, const std::vector<std::string>& extra = {},
                const std::vector<std::string>& env = {});

  TempDir dir_;
  fs::path corpus_;  // corpus.txt
  fs::path tokens_;  // corpus.tokens (from `nnkit data prepare`)
  fs::path config_;  // tiny.yaml
};

// step -> loss of the training lines of a metrics.jsonl.
std::map<int64_t, double> losses_by_step(const fs::path& metrics);

}  // namespace nnkit::clitest

// Assertion helpers that print the whole output on failure.
#define EXPECT_EXIT_CODE(result, code)                                   \
  EXPECT_EQ((result).exit_code, (code)) << "stdout:\n"                   \
                                        << (result).out << "\nstderr:\n" \
                                        << (result).err
#define ASSERT_EXIT_CODE(result, code)                                   \
  ASSERT_EQ((result).exit_code, (code)) << "stdout:\n"                   \
                                        << (result).out << "\nstderr:\n" \
                                        << (result).err
#define EXPECT_MENTIONS(text, part)                                                                \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "missing '" << (part) << "' in:\n" \
                                                             << (text)
