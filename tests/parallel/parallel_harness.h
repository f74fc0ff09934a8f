// Purpose: what the multi-process tests of tests/parallel share: running the real `nnkit` (under
// `mpirun -np N --oversubscribe` or alone) with a timeout, a fixture with a small English-like
// token file and a scratch run directory per test, and readers of checkpoints and metrics.
// Ownership: the fixture owns its scratch directory (removed after the test unless
// NNKIT_KEEP_TEST_DIRS is set). Header-only, for test_data_parallel.cpp and
// test_expert_parallel.cpp (NNKIT_CLI, NNKIT_MPIEXEC and NNKIT_SOURCE_DIR_DEFAULT come from
// tests/parallel/CMakeLists.txt).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "nnkit/io/safetensors.h"

namespace nnkit::parallel_test {

namespace fs = std::filesystem;

struct Result {
  int exit_code = -1;
  std::string output;  // stdout and stderr of every rank
};

inline std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs `command` through the shell, stopping it after `timeout_s` (exit code 124 then).
inline Result run(const std::string& command, int timeout_s = 120) {
  const std::string line =
      "timeout -k 5 " + std::to_string(timeout_s) + " sh -c " + quote(command) + " 2>&1";
  Result result;
  FILE* pipe = ::popen(line.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// `mpirun -np N` with what CI needs: oversubscription (2 ranks on 2 shared cores), root, and the
// test's variables forwarded to every rank.
inline std::string mpirun(int ranks, const std::vector<std::string>& env = {}) {
  std::string line = std::string(NNKIT_MPIEXEC) + " -np " + std::to_string(ranks) +
                     " --oversubscribe --bind-to none -x OMP_NUM_THREADS=1"
                     // containers often forbid the cross-memory attach of OpenMPI's shared-memory
                     // transport (ptrace scope): copy through the shared segment instead
                     " --mca btl_vader_single_copy_mechanism none";
  if (::geteuid() == 0) line += " --allow-run-as-root";
  for (const std::string& e : env) line += " -x " + e;
  return line + " ";
}

inline std::string nnkit_cli() {
  return quote(NNKIT_CLI);
}

// The base of the tests' fixtures: a token file in a fresh scratch directory, tests/parallel's
// dense config, and the command line of a training run into a folder of it.
class ParallelRun : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("OMP_NUM_THREADS", "1", 1);
    dir_ = fs::temp_directory_path() /
           ("nnkit-dp-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    config_ = fs::path(NNKIT_SOURCE_DIR_DEFAULT) / "tests/parallel/dp-tiny.yaml";
    data_ = prepare_data();
  }
  void TearDown() override {
    if (!dir_.empty() && std::getenv("NNKIT_KEEP_TEST_DIRS") == nullptr) fs::remove_all(dir_);
  }

  // A token file of English-like text (distinct sentences from a seeded generator).
  fs::path prepare_data() {
    const char* words[] = {"the",   "river",  "slowly", "carried",  "old",     "boats", "past",
                           "green", "hills",  "while",  "children", "watched", "from",  "a",
                           "stone", "bridge", "and",    "counted",  "every",   "sail"};
    std::mt19937_64 rng(11);
    std::ostringstream text;
    for (int sentence = 0; sentence < 600; ++sentence) {
      const int length = 6 + static_cast<int>(rng() % 8);
      for (int w = 0; w < length; ++w) text << (w ? " " : "") << words[rng() % 20];
      text << ".\n";
    }
    const fs::path txt = dir_ / "corpus.txt", tokens = dir_ / "corpus.tokens";
    std::ofstream(txt) << text.str();
    const Result r = run(nnkit_cli() + " data prepare " + quote(txt) + " -o " + quote(tokens) +
                         " --log-level warn");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return tokens;
  }

  std::string train_args(const fs::path& out, const std::string& extra = "") const {
    return nnkit_cli() + " train " + quote(config_) + " --data " + quote(data_) + " --out " +
           quote(out) + " --no-progress " + extra;
  }

  fs::path dir_, config_, data_;
};

// The largest absolute difference between the same tensors of two checkpoints' `file`.
inline double max_weight_difference(const fs::path& a, const fs::path& b,
                                    const char* file = "model.safetensors") {
  const SafetensorsFile fa(a / file), fb(b / file);
  EXPECT_EQ(fa.names(), fb.names());
  double worst = 0.0;
  for (const std::string& name : fa.names()) {
    const auto x = fa.bytes(name), y = fb.bytes(name);
    EXPECT_EQ(x.size(), y.size()) << name;
    const size_t n = std::min(x.size(), y.size()) / sizeof(float);
    for (size_t i = 0; i < n; ++i) {
      float u, v;
      std::memcpy(&u, x.data() + i * sizeof(float), sizeof(float));
      std::memcpy(&v, y.data() + i * sizeof(float), sizeof(float));
      worst = std::max(worst, std::abs(static_cast<double>(u) - v));
    }
  }
  return worst;
}

inline std::vector<nlohmann::json> step_lines(const fs::path& run_dir) {
  std::ifstream in(run_dir / "metrics.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j);
  }
  return out;
}

inline size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

inline fs::path step_dir(const fs::path& run, int step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08d", step);
  return run / "checkpoints" / name;
}

// A copy of `run_dir` at `copy` without its step-10 checkpoint, resumed from step 5 by
// `launcher` ("" for one process, or mpirun(N)) with `overrides`: how a run moves between rank
// counts. Returns the resume's result.
inline Result resume_from_step_5(const fs::path& run_dir, const fs::path& copy,
                                 const std::string& launcher, const std::string& overrides) {
  fs::copy(run_dir, copy, fs::copy_options::recursive);
  fs::remove_all(step_dir(copy, 10));
  return run(launcher + nnkit_cli() + " train --resume " + quote(copy) + " " + overrides +
             " --no-progress");
}

#define NNKIT_REQUIRE_MPIRUN()                                                      \
  if (std::string(NNKIT_MPIEXEC).empty()) {                                         \
    GTEST_SKIP() << "no MPI in this build (install openmpi-bin libopenmpi-dev and " \
                    "reconfigure): this multi-process test needs mpirun";           \
  }

}  // namespace nnkit::parallel_test
