// Purpose: the base of everything a plugin creates, and the arguments every factory receives.
// Ownership: components are created by the Registry and handed out as std::shared_ptr whose
// deleter also holds the plugin library, so no object outlives its code. Components never own
// the Backend they are given; the model/trainer keeps it alive for as long as they run.
#pragma once

#include <cstdint>
#include <string>

#include "nnkit/export.h"
#include "nnkit/options.h"

namespace nnkit {

class Backend;

// Sizes of the surrounding model a component may need to validate and shape itself.
struct ModelDims {
  int64_t vocab_size = 0;
  int64_t hidden_dim = 0;
  int64_t n_layers = 0;
  int64_t max_seq_len = 0;
  int64_t layer_index = -1;  // which block this component sits in; -1 for model-level ones
  int64_t n_experts = 0;     // filled for moe/* components (router needs it to check top_k)
  // ABI 5, expert parallelism (docs/parallel.md): an experts plugin holds only experts
  // [expert_begin, expert_end) of its n_experts, names their parameters with their global index
  // ("experts.<e>.w1.weight"), and is then driven with a Routing over those experts alone
  // (Routing::n_experts = expert_end - expert_begin, offsets of local expert e - expert_begin).
  // expert_end = -1 (the default, and always outside expert parallelism): all of them.
  int64_t expert_begin = 0;
  int64_t expert_end = -1;
};

struct CreateArgs {
  const Options& options;
  ModelDims dims;
  Backend* backend = nullptr;  // null for components that do not compute (tokenizers, schedules)
};

class NNKIT_API Component {
 public:
  virtual ~Component();
  // "kind/name", set by the registry after creation; used to tag errors and logs.
  const std::string& id() const { return id_; }
  void set_id(std::string id) { id_ = std::move(id); }

 private:
  std::string id_;
};

}  // namespace nnkit
