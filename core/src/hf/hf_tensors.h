// Purpose: the tensors of a Hugging Face model folder, whether one model.safetensors or shards
// listed by model.safetensors.index.json, looked up by name; plus reading any float tensor as
// f32 on the host. Private to core/src/hf.
// Ownership: HfTensors owns the memory-mapped files; pointers it returns live as long as it does.
// Thread-safety: find() and read_f32() are const and safe to call concurrently; mark_used() is not.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "nnkit/io/safetensors.h"

namespace nnkit::hf {

class HfTensors {
 public:
  // Throws IoError when the folder has neither file, or the index names a missing shard or a
  // tensor its shard lacks.
  explicit HfTensors(const std::filesystem::path& dir);

  // The file holding `name`, or nullptr.
  const SafetensorsFile* find(const std::string& name) const;
  void mark_used(const std::string& name) { used_.insert(name); }
  // Every tensor name no mark_used() has claimed, sorted.
  std::vector<std::string> unused() const;
  // "model.safetensors" or "3 shards (model.safetensors.index.json)", for messages.
  const std::string& description() const { return description_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
  std::set<std::string> used_;
  std::string description_;
};

// Tensor `name` of `file` (f32, bf16 or f16) as f32 values; IoError names it otherwise.
std::vector<float> read_f32(const SafetensorsFile& file, const std::string& name);

}  // namespace nnkit::hf
