// Purpose: Hugging Face interoperability: an HF model folder (config.json, model.safetensors or
// shards with model.safetensors.index.json, optional tokenizer.model) <-> an nnkit run directory
// with a complete checkpoint. Supported: MixtralForCausalLM (MoE) and LlamaForCausalLM /
// MistralForCausalLM without sliding window (dense). Parameter names are already HF's (see
// model.h) and both sides use rotate-half RoPE, so weights copy without permutation.
// Mapping decisions (docs/hf.md has the user-facing version):
//   - rope_theta <-> rope.base. nnkit's NTK scaling is static (base' = base * alpha^(d/(d-2)) at
//     every position), so export folds it into rope_theta; import sets ntk_alpha 1. HF
//     rope_scaling other than none/"default" is refused.
//   - router_aux_loss_coef c <-> aux_loss_weight c * top_k / n_layers (HF's loss is top_k times
//     nnkit's per layer and averaged over layers; nnkit sums).
//   - tie_word_embeddings: nnkit never ties; import copies the embedding into lm_head, export
//     writes false.
//   - Anything HF models that nnkit does not (sliding_window, attention_bias, mlp_bias, other
//     hidden_act, rope scaling types, other model types) is refused with a ConfigError naming
//     the config.json key; a tensor nnkit has no place for is refused naming the tensor.
// Ownership: functions borrow the Registry (for plugin options and the backend) and hold nothing
// after returning. Errors: ConfigError (unsupported configuration), IoError (files, tensors).
// Thread-safety: none needed; each call works on its own files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "nnkit/config.h"
#include "nnkit/export.h"
#include "nnkit/registry.h"
#include "nnkit/tensor.h"

namespace nnkit {

struct HfExportOptions {
  DType dtype = DType::kF32;  // kF32, kBF16 or kF16 (round to nearest even)
  uint64_t shard_bytes = 0;   // most tensor bytes per shard; 0 = one model.safetensors
};

struct HfImportReport {
  std::filesystem::path checkpoint;  // the checkpoint folder written in the run directory
  std::string architecture;          // "MixtralForCausalLM", "LlamaForCausalLM", ...
  bool tokenizer_copied = false;     // tokenizer.model was copied (tokenizer/sentencepiece)
  int64_t parameters = 0;
};

struct HfExportReport {
  std::vector<std::filesystem::path> files;  // everything written, config.json first
  std::string architecture;
  bool tokenizer_copied = false;
};

// config.json text -> a complete nnkit config (YAML): model, backend cpu, `tokenizer_yaml` (a
// flow map such as "{type: byte}") and train.seq_len <= max_seq_len. `label` names the file in
// errors. Throws ConfigError naming the key of anything unsupported.
NNKIT_API std::string hf_config_to_yaml(const std::string& config_json, const std::string& label,
                                        const std::string& tokenizer_yaml);

// A resolved nnkit config -> config.json text for `dtype`, with the given special token ids.
// Throws ConfigError naming the nnkit key HF cannot express (e.g. a capacity_factor).
NNKIT_API std::string hf_config_json(const RunConfig& config, DType dtype, int32_t bos_id,
                                     int32_t eos_id, int32_t pad_id);

// Reads HF_DIR and writes RUN_DIR/checkpoints/step-00000000 (each weight in its HF dtype: f32,
// bf16 or f16, written from the memory-mapped files without a copy of the model in memory; no
// optimizer state) plus RUN_DIR/tokenizer.model when HF_DIR has one. RUN_DIR must not hold
// checkpoints yet.
NNKIT_API HfImportReport import_hf(const std::filesystem::path& hf_dir,
                                   const std::filesystem::path& run_dir, const Registry& registry);

// Writes the newest checkpoint of RUN_DIR (f32, or the 16-bit weights of an imported one) as an
// HF folder (created if needed; earlier model files of ours there are replaced).
NNKIT_API HfExportReport export_hf(const std::filesystem::path& run_dir,
                                   const std::filesystem::path& hf_dir, const Registry& registry,
                                   const HfExportOptions& options = {});

}  // namespace nnkit
