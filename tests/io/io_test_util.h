// Purpose: helpers for the io tests: a fresh temp directory per test, raw file writing, hand-built
// safetensors files, and an expectation that an IoError mentions given fragments.
// Ownership: TempDir removes its directory (recursively) when destroyed.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>

#include "nnkit/error.h"

namespace nnkit::test {

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "nnkit-io-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) +
                       "-" + (info ? info->name() : "x");
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& leaf) const { return path_ / leaf; }
  // Names of the entries in the directory (to catch stray temp files).
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) {
      out.push_back(e.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

inline void write_raw(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

// A safetensors byte string with the given JSON header text and data bytes.
inline std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

// Runs fn and expects an IoError whose message contains every fragment.
inline void expect_io_error(const std::function<void()>& fn,
                            std::initializer_list<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected an IoError";
  } catch (const IoError& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.component(), "io");
    for (const std::string& f : fragments) {
      EXPECT_NE(what.find(f), std::string::npos) << "message lacks '" << f << "':\n  " << what;
    }
  }
}

}  // namespace nnkit::test
