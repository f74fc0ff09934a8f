// Purpose: see hf_tensors.h.
#include "hf/hf_tensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/half.h"

namespace nnkit::hf {

namespace fs = std::filesystem;

HfTensors::HfTensors(const fs::path& dir) {
  std::error_code ec;
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  if (fs::exists(index_path, ec)) {
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(read_file(index_path));
    } catch (const nlohmann::json::exception& e) {
      throw IoError("hf", index_path.string() + " is not valid JSON: " + e.what());
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      throw IoError("hf", index_path.string() + " has no \"weight_map\" object");
    }
    std::map<std::string, const SafetensorsFile*> opened;
    for (const auto& [name, value] : index["weight_map"].items()) {
      if (!value.is_string()) {
        throw IoError(
            "hf", index_path.string() + ": the shard of tensor '" + name + "' must be a file name");
      }
      const std::string shard = value.get<std::string>();
      // Shard names are file names inside the folder, never paths out of it.
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        throw IoError("hf", index_path.string() + ": tensor '" + name + "' points to '" + shard +
                                "', which is not a file name in the folder");
      }
      auto it = opened.find(shard);
      if (it == opened.end()) {
        if (!fs::exists(dir / shard, ec)) {
          throw IoError("hf", index_path.string() + " lists shard " + shard +
                                  ", which is missing from " + dir.string());
        }
        files_.push_back(std::make_unique<SafetensorsFile>(dir / shard));
        it = opened.emplace(shard, files_.back().get()).first;
      }
      if (!it->second->has(name)) {
        throw IoError("hf", index_path.string() + " places tensor '" + name + "' in " + shard +
                                ", which does not hold it");
      }
      where_[name] = it->second;
    }
    description_ = std::to_string(files_.size()) + " shard(s) of " + index_path.string();
  } else if (fs::exists(single, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const std::string& name : files_.back()->names()) where_[name] = files_.back().get();
    description_ = single.string();
  } else {
    throw IoError("hf", dir.string() +
                            " has neither model.safetensors nor model.safetensors.index.json "
                            "(PyTorch .bin weights are not read; re-save with "
                            "save_pretrained(safe_serialization=True))");
  }
}

const SafetensorsFile* HfTensors::find(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : it->second;
}

std::vector<std::string> HfTensors::unused() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) {
    if (!used_.count(name)) out.push_back(name);
  }
  return out;
}

std::vector<float> read_f32(const SafetensorsFile& file, const std::string& name) {
  const TensorInfo& info = file.info(name);
  const auto bytes = file.bytes(name);
  const size_t n = static_cast<size_t>(shape_numel(info.shape));
  std::vector<float> out(n);
  switch (info.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), bytes.data(), n * sizeof(float));
      break;
    case DType::kBF16:
      bf16_to_f32(bytes.data(), out.data(), n);
      break;
    case DType::kF16:
      f16_to_f32(bytes.data(), out.data(), n);
      break;
    default:
      throw IoError("hf", file.label() + ": tensor '" + name + "' is " + dtype_name(info.dtype) +
                              "; weights must be f32, bf16 or f16");
  }
  return out;
}

}  // namespace nnkit::hf
