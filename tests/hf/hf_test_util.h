// Purpose: helpers for the tests/hf executables: temporary folders, small random models saved as
// run directories, loading a run's newest checkpoint, logits and their differences.
// Ownership: TempDir removes its folder on destruction; LoadedRun owns its model (which shares
// the backend), so tensors are released before the plugin libraries.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/config.h"
#include "nnkit/model.h"

namespace nnkit::test {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// A small MoE (4 experts, top 2, MQA, NTK alpha 2) and a small dense (GQA) config, vocab 300.
std::string small_moe_yaml();
std::string small_dense_yaml();

RunConfig resolve_yaml(const std::string& yaml, const std::string& source = "<test>");

struct LoadedRun {
  RunConfig config;
  std::unique_ptr<Transformer> model;
};

// Builds the model of `yaml`, initialises it from `seed` and saves it as run_dir's checkpoint.
void make_random_run(const std::filesystem::path& run_dir, const std::string& yaml, uint64_t seed);
LoadedRun load_run(const std::filesystem::path& run_dir);

// Full-sequence logits (T * vocab) of `ids` as one batch row.
std::vector<float> logits_of(Transformer& model, const std::vector<int32_t>& ids);
float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);
float max_abs(const std::vector<float>& a);
std::vector<float> parameter_values(Transformer& model, const std::string& name);

void write_text(const std::filesystem::path& path, const std::string& text);
std::string read_text(const std::filesystem::path& path);

}  // namespace nnkit::test
