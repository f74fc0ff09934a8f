// Purpose: export_hf (see hf.h): the newest checkpoint of a run -> config.json, model.safetensors
// (or shards + model.safetensors.index.json, HF's layout) in f32/bf16/f16, and tokenizer.model
// when the run uses tokenizer/sentencepiece. Tensors are written in the model's parameter order
// under the checkpoint-format names transformers' save_pretrained writes (per-expert w1/w2/w3).
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "hf/hf_tensors.h"
#include "nnkit/checkpoint.h"
#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/half.h"
#include "nnkit/io/safetensors.h"
#include "nnkit/logging.h"
#include "nnkit/model.h"
#include "nnkit/tokenizer.h"

namespace nnkit {

namespace fs = std::filesystem;

namespace {

struct PlannedTensor {
  std::string name;
  Shape shape;
  uint64_t bytes = 0;  // in the output dtype
};

// Greedy sharding in parameter order: a shard closes when the next tensor would pass the limit
// (a tensor larger than the limit gets a shard of its own, as in transformers).
std::vector<std::vector<PlannedTensor>> plan_shards(const std::vector<PlannedTensor>& tensors,
                                                    uint64_t shard_bytes) {
  std::vector<std::vector<PlannedTensor>> shards(1);
  uint64_t used = 0;
  for (const PlannedTensor& t : tensors) {
    if (shard_bytes > 0 && !shards.back().empty() && used + t.bytes > shard_bytes) {
      shards.emplace_back();
      used = 0;
    }
    shards.back().push_back(t);
    used += t.bytes;
  }
  return shards;
}

// The tokenizer model file a run's config names, resolved like tokenizer/sentencepiece does
// (absolute, beside the stored config, or from the working directory).
fs::path tokenizer_file(const RunConfig& config, const fs::path& config_dir) {
  const fs::path given = config.tokenizer.options.get_string("model");
  if (given.is_absolute()) return given;
  std::error_code ec;
  if (fs::exists(config_dir / given, ec)) return config_dir / given;
  return given;
}

void remove_earlier_output(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name == "model.safetensors" || name == "model.safetensors.index.json" ||
                      (name.starts_with("model-") && name.ends_with(".safetensors") &&
                       name.find("-of-") != std::string::npos);
    if (ours) {
      logger()->info("replacing {}", entry.path().string());
      fs::remove(entry.path(), ec);
    }
  }
}

}  // namespace

HfExportReport export_hf(const fs::path& run_dir, const fs::path& hf_dir, const Registry& registry,
                         const HfExportOptions& options) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16 &&
      options.dtype != DType::kF16) {
    throw ConfigError("hf", std::string("cannot export as ") + dtype_name(options.dtype) +
                                "; choose f32, bf16 or f16");
  }
  const CheckpointRef ref = CheckpointStore(run_dir).require_latest();
  CheckpointStore::verify(ref);
  const fs::path config_file = ref.dir / "config.yaml";
  const ConfigDocument document =
      ConfigDocument::parse(CheckpointStore::read_config(ref), config_file.string());
  const RunConfig config = resolve_config(document, registry);

  HfExportReport report;
  report.architecture = config.model.is_moe ? "MixtralForCausalLM" : "LlamaForCausalLM";
  const PluginChoice& t = config.tokenizer;
  auto tokenizer = registry.create<Tokenizer>(t.kind, t.name, CreateArgs{t.options, {}, nullptr});
  const std::string config_json = hf_config_json(config, options.dtype, tokenizer->bos_id(),
                                                 tokenizer->eos_id(), tokenizer->pad_id());

  // The parameter list (names, shapes, order) of the configured model; nothing is allocated.
  const PluginChoice& b = config.backend;
  auto backend = registry.create<Backend>(b.kind, b.name, CreateArgs{b.options, {}, nullptr});
  Transformer model(config, registry, backend);
  const SafetensorsFile weights(ref.dir / "model.safetensors");
  std::vector<PlannedTensor> planned;
  for (Parameter* p : model.parameters()) {
    if (!weights.has(p->name)) {
      throw IoError(
          "hf", weights.label() + " has no tensor '" + p->name + "' that its config.yaml implies");
    }
    const TensorInfo& info = weights.info(p->name);
    // f32 from training; an imported checkpoint keeps the HF files' bf16 or f16.
    const bool float_type =
        info.dtype == DType::kF32 || info.dtype == DType::kBF16 || info.dtype == DType::kF16;
    if (info.shape != p->shape || !float_type) {
      throw IoError("hf", weights.label() + ": tensor '" + p->name + "' is " +
                              dtype_name(info.dtype) + to_string(info.shape) +
                              ", expected f32, bf16 or f16 " + to_string(p->shape));
    }
    planned.push_back({p->name, p->shape,
                       static_cast<uint64_t>(shape_numel(p->shape)) * dtype_size(options.dtype)});
  }

  fs::create_directories(hf_dir);
  remove_earlier_output(hf_dir);
  write_file_atomic(hf_dir / "config.json", config_json);
  report.files.push_back(hf_dir / "config.json");

  const auto shards = plan_shards(planned, options.shard_bytes);
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    std::string file_name = "model.safetensors";
    if (shards.size() > 1) {
      char buffer[64];
      std::snprintf(buffer, sizeof(buffer), "model-%05zu-of-%05zu.safetensors", s + 1,
                    shards.size());
      file_name = buffer;
    }
    // Converted copies for this shard only, so memory stays at about one shard. A tensor
    // already in the asked dtype is written as it is; others go through f32 (widening a half
    // is exact, so each value is rounded at most once).
    std::vector<std::vector<uint16_t>> converted;
    std::vector<std::vector<float>> widened;
    converted.reserve(shards[s].size());
    widened.reserve(shards[s].size());
    std::vector<NamedHostTensor> out;
    for (const PlannedTensor& pt : shards[s]) {
      const auto bytes = weights.bytes(pt.name);
      const DType stored = weights.info(pt.name).dtype;
      const size_t n = static_cast<size_t>(shape_numel(pt.shape));
      const void* data = bytes.data();
      if (stored != options.dtype) {
        const void* f32 = data;
        if (stored != DType::kF32) {
          widened.push_back(hf::read_f32(weights, pt.name));
          f32 = widened.back().data();
        }
        data = f32;
        if (options.dtype != DType::kF32) {
          converted.emplace_back(n);
          if (options.dtype == DType::kBF16) {
            f32_to_bf16(f32, converted.back().data(), n);
          } else {
            f32_to_f16(f32, converted.back().data(), n);
          }
          data = converted.back().data();
        }
      }
      out.push_back(NamedHostTensor{pt.name, options.dtype, pt.shape, data});
      weight_map[pt.name] = file_name;
      total += pt.bytes;
    }
    // "format": "pt" is what transformers checks before it loads a safetensors file.
    write_safetensors(hf_dir / file_name, out, {{"format", "pt"}, {"producer", "nnkit"}});
    report.files.push_back(hf_dir / file_name);
  }
  if (shards.size() > 1) {
    const nlohmann::json index{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(hf_dir / "model.safetensors.index.json", index.dump(2) + "\n");
    report.files.push_back(hf_dir / "model.safetensors.index.json");
  }

  if (t.name == "sentencepiece") {
    const fs::path source = tokenizer_file(config, ref.dir);
    fs::copy_file(source, hf_dir / "tokenizer.model", fs::copy_options::overwrite_existing);
    report.files.push_back(hf_dir / "tokenizer.model");
    report.tokenizer_copied = true;
  }
  return report;
}

}  // namespace nnkit
