// Purpose: import_hf (see hf.h): config.json -> nnkit config, HF tensors -> a regular checkpoint
// through CheckpointStore::save, so every command that takes --checkpoint RUN_DIR works on the
// result. The tensors are written from the memory-mapped HF files in their own dtype (f32, bf16
// or f16): no copy of the model is made in memory, and bf16 weights stay bf16.
// Besides the checkpoint layout (model.layers.N.block_sparse_moe.experts.E.w1.weight, what
// save_pretrained writes), the in-memory layout of transformers 5 is read too: mlp.gate.weight and
// fused mlp.experts.gate_up_proj (E, 2F, H; gate rows first) / mlp.experts.down_proj (E, H, F).
// RoPE needs no permutation: HF's q_proj/k_proj rows are already in rotate-half order, which is
// what attention/mqa applies (docs/conventions.md).
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "hf/hf_tensors.h"
#include "nnkit/checkpoint.h"
#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/run_lock.h"
#include "nnkit/logging.h"
#include "nnkit/model.h"

namespace nnkit {

namespace fs = std::filesystem;

namespace {

// A double-quoted YAML scalar (paths may hold ':' or '#').
std::string yaml_quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string shape_text(const Shape& shape) {
  return to_string(shape);
}

// Where each model parameter's numbers are in the HF files, trying the checkpoint names first and
// the transformers-5 module names second: a NamedHostTensor pointing into the memory-mapped file,
// in the file's dtype. The checkpoint is written from these pointers, so importing holds no copy
// of the weights (bf16 weights stay bf16, with no f32 model in memory on the way).
class WeightPlan {
 public:
  WeightPlan(hf::HfTensors& tensors, bool tied) : tensors_(tensors), tied_(tied) {}

  // One entry per parameter, in the model's parameter order.
  std::vector<NamedHostTensor> plan(Transformer& model) {
    std::vector<NamedHostTensor> out;
    std::optional<size_t> embed;  // index of the embedding in `out`
    for (Parameter* p : model.parameters()) {
      if (p->name == "lm_head.weight" && tied_ && embed) {
        // tie_word_embeddings: HF uses the embedding as the head; nnkit keeps two tensors.
        out.push_back({p->name, out[*embed].dtype, p->shape, out[*embed].data});
        tensors_.mark_used("lm_head.weight");  // a tied folder may still store a copy
        continue;
      }
      out.push_back(locate(*p));
      if (p->name == "model.embed_tokens.weight") embed = out.size() - 1;
    }
    for (const std::string& name : tensors_.unused()) {
      if (name.ends_with(".rotary_emb.inv_freq")) continue;  // recomputed, not learned
      throw IoError("hf", "tensor '" + name + "' in " + tensors_.description() +
                              " has no place in the nnkit model (biases, other layers and "
                              "other architectures are not supported)");
    }
    return out;
  }

 private:
  NamedHostTensor locate(const Parameter& p) {
    if (auto direct = locate_direct(p, p.name)) return *direct;
    std::string alias = p.name;
    const size_t at = alias.find(".block_sparse_moe.");
    if (at != std::string::npos) {
      alias.replace(at, 18, ".mlp.");
      if (auto direct = locate_direct(p, alias)) return *direct;
      if (auto fused = locate_fused(p)) return *fused;
    }
    throw IoError("hf", tensors_.description() + " has no tensor '" + p.name + "' (shape " +
                            shape_text(p.shape) + ") that config.json implies");
  }

  // Weights are floats; anything else (an int tensor under a weight's name) is refused here,
  // where the tensor is named, rather than when the checkpoint is loaded.
  static void require_float(const SafetensorsFile& file, const std::string& name, DType dtype) {
    if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
      throw IoError("hf", file.label() + ": tensor '" + name + "' is " + dtype_name(dtype) +
                              "; weights must be f32, bf16 or f16");
    }
  }

  std::optional<NamedHostTensor> locate_direct(const Parameter& p, const std::string& name) {
    const SafetensorsFile* file = tensors_.find(name);
    if (file == nullptr) return std::nullopt;
    const TensorInfo& info = file->info(name);
    if (info.shape != p.shape) {
      throw IoError("hf", file->label() + ": tensor '" + name + "' has shape " +
                              shape_text(info.shape) + " but config.json implies " +
                              shape_text(p.shape));
    }
    require_float(*file, name, info.dtype);
    tensors_.mark_used(name);
    return NamedHostTensor{p.name, info.dtype, p.shape, file->bytes(name).data()};
  }

  // model.layers.N.block_sparse_moe.experts.E.wK.weight inside the fused expert tensors: each
  // expert's matrix is a contiguous block of rows there.
  std::optional<NamedHostTensor> locate_fused(const Parameter& p) {
    static const std::regex pattern(
        R"(model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.w([123])\.weight)");
    std::smatch m;
    if (!std::regex_match(p.name, m, pattern)) return std::nullopt;
    const std::string layer = m[1];
    const int64_t expert = std::stoll(m[2]);
    const int which = std::stoi(m[3]);
    const std::string prefix = "model.layers." + layer + ".mlp.experts.";
    const std::string name = prefix + (which == 2 ? "down_proj" : "gate_up_proj");
    const SafetensorsFile* file = tensors_.find(name);
    if (file == nullptr) return std::nullopt;
    // w1, w3: (F, H) rows [0, F) and [F, 2F) of gate_up_proj[e] (2F, H); w2: down_proj[e] (H, F).
    const int64_t rows = p.shape[0];
    const int64_t cols = p.shape[1];
    const TensorInfo& info = file->info(name);
    const int64_t fused_rows = which == 2 ? rows : 2 * rows;
    if (info.shape.size() != 3 || info.shape[1] != fused_rows || info.shape[2] != cols ||
        expert >= info.shape[0]) {
      throw IoError("hf", file->label() + ": tensor '" + name + "' has shape " +
                              shape_text(info.shape) + " but config.json implies (>" +
                              std::to_string(expert) + ", " + std::to_string(fused_rows) + ", " +
                              std::to_string(cols) + ")");
    }
    require_float(*file, name, info.dtype);
    const int64_t offset = (expert * fused_rows + (which == 3 ? rows : 0)) * cols;
    tensors_.mark_used(name);
    const std::byte* base = file->bytes(name).data();
    return NamedHostTensor{p.name, info.dtype, p.shape,
                           base + static_cast<size_t>(offset) * dtype_size(info.dtype)};
  }

  hf::HfTensors& tensors_;
  bool tied_;
};

}  // namespace

HfImportReport import_hf(const fs::path& hf_dir, const fs::path& run_dir,
                         const Registry& registry) {
  std::error_code ec;
  if (!fs::is_directory(hf_dir, ec)) {
    throw IoError("hf", hf_dir.string() + " is not a directory (expected an HF model folder)");
  }
  const fs::path config_path = hf_dir / "config.json";
  if (!fs::exists(config_path, ec)) {
    throw IoError("hf",
                  hf_dir.string() + " has no config.json; is it a Hugging Face model folder?");
  }
  const std::string config_text = read_file(config_path);
  ensure_writable_directory(run_dir);
  // Held until the checkpoint is written; also clears the temp folder of an import that was
  // killed, which would otherwise count as "already holds checkpoints" below.
  const RunLock run_lock = CheckpointStore(run_dir).lock_for_writing("nnkit convert import-hf");
  const fs::path checkpoints = run_dir / "checkpoints";
  if (fs::is_directory(checkpoints, ec) && !fs::is_empty(checkpoints, ec)) {
    throw IoError("hf",
                  run_dir.string() + " already holds checkpoints; import into a new run directory");
  }

  HfImportReport report;
  std::string tokenizer_yaml = "{type: byte}";
  const fs::path hf_tokenizer = hf_dir / "tokenizer.model";
  if (fs::exists(hf_tokenizer, ec)) {
    if (registry.find("tokenizer", "sentencepiece") != nullptr) {
      const fs::path copied = fs::absolute(run_dir / "tokenizer.model").lexically_normal();
      fs::copy_file(hf_tokenizer, copied, fs::copy_options::overwrite_existing);
      tokenizer_yaml = "{type: sentencepiece, model: " + yaml_quote(copied.string()) + "}";
      report.tokenizer_copied = true;
    } else {
      logger()->warn(
          "{} has a tokenizer.model but tokenizer/sentencepiece is not available "
          "(build with libsentencepiece-dev); the run uses tokenizer/byte",
          hf_dir.string());
    }
  }
  const std::string yaml = hf_config_to_yaml(config_text, config_path.string(), tokenizer_yaml);
  const ConfigDocument document =
      ConfigDocument::parse(yaml, "<import of " + config_path.string() + ">");
  const RunConfig config = resolve_config(document, registry);
  const nlohmann::json hf_config = nlohmann::json::parse(config_text);
  const bool tied = hf_config.value("tie_word_embeddings", false);
  if (hf_config.contains("architectures") && hf_config["architectures"].is_array() &&
      !hf_config["architectures"].empty()) {
    report.architecture = hf_config["architectures"][0].get<std::string>();
  } else {
    report.architecture = config.model.is_moe ? "MixtralForCausalLM" : "LlamaForCausalLM";
  }

  // The model is only described (names, shapes, order); its weights are never allocated.
  const PluginChoice& b = config.backend;
  auto backend = registry.create<Backend>(b.kind, b.name, CreateArgs{b.options, {}, nullptr});
  Transformer model(config, registry, backend);
  report.parameters = model.parameter_count();
  hf::HfTensors tensors(hf_dir);
  const std::vector<NamedHostTensor> weights = WeightPlan(tensors, tied).plan(model);
  const std::string config_yaml = config.to_yaml();
  write_file_atomic(run_dir / "config.yaml", config_yaml);
  report.checkpoint = CheckpointStore(run_dir).save(TrainerState{}, weights, config_yaml,
                                                    /*keep=*/1);
  return report;
}

}  // namespace nnkit
