// Purpose: getting a ready model for inference commands (eval, generate, logits): either freshly
// initialised from a CONFIG (--random-init) or restored from a training run's newest checkpoint.
// The model is inference-only (Transformer::allocate_inference_only: on a bf16/fp16 backend it
// holds its compute-dtype weights and no f32 masters), loaded one tensor at a time;
// --keep-f32-masters allocates the masters as training does (for comparisons: same tokens, 3x
// the weight memory at bf16).
// Ownership: LoadedModel owns everything; members are destroyed model-first.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "args.h"
#include "common.h"
#include "nnkit/memory_estimate.h"
#include "nnkit/model.h"

namespace nnkit::cli {

struct LoadedModel {
  Session session;
  std::shared_ptr<Backend> backend;
  std::shared_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Transformer> model;
};

// What the command will run, from the resolved config: the memory check (memory_check.h) runs
// on it before the weights are allocated. `command` names the command in its message.
struct MemoryPlan {
  std::string command;
  std::function<MemoryShape(const RunConfig&)> shape;
};

inline constexpr const char* kKeepMastersFlag = "--keep-f32-masters";
// The flag's help line, for the commands that load a model through this file.
FlagSpec keep_masters_flag();

// seed < 0 uses the config's seed.
LoadedModel build_random_model(const std::filesystem::path& config,
                               const std::vector<std::string>& overrides, const ParsedArgs& args,
                               int64_t seed, const MemoryPlan& plan);
// Overrides may change inference-time options (e.g. model.attention.rope.ntk_alpha=8) but not
// parameter shapes.
LoadedModel load_checkpoint_model(const std::filesystem::path& run_dir,
                                  const std::vector<std::string>& overrides, const ParsedArgs& args,
                                  const MemoryPlan& plan);

}  // namespace nnkit::cli
