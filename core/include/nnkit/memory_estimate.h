// Purpose: the memory a command will need, estimated from the resolved config before anything is
// allocated, and the memory the machine has, so that train, eval and generate refuse up front
// ("needs ~38 GiB, 7.6 GiB available; lower train.batch_size ...") instead of growing until the
// kernel kills the process. `nnkit validate --json` prints the same numbers (memory_bytes).
// What is counted, per category (docs/architecture.md, "Memory estimate"):
//   parameters       fp32 master weights: training, and inference at fp32 (where they are the
//                    weights that compute) or with keep_f32_masters
//   compute_copies   16-bit copies of the weights (CUDA at precision bf16/fp16; docs/cuda.md);
//                    at inference without keep_f32_masters the only copy of the weights
//   load_staging     inference at bf16/fp16 without masters: the one f32 tensor a load or
//                    random init stages at a time (the largest parameter)
//   gradients        fp32, training only
//   optimizer_state  two fp32 moments per parameter (AdamW), training only
//   activations      what a step keeps for backward (training) or its largest working set
//                    (eval, generate prefill), logits and their gradient included
//   kv_cache         generate only
// The model of activations follows the in-tree components (attention/mqa, moe/topk +
// moe/swiglu, ffn/swiglu, norm/rmsnorm) from their option names; a third-party plugin with other
// option names is estimated as multi-head attention with head width hidden_dim and an FFN of
// 4 x hidden_dim. Excluded: the program itself (code, libraries, thread pools: ~50-100 MB on the
// CPU), data files, and allocator slack.
// Thread-safety: pure functions; host_memory_available() reads /proc and /sys.
// Ownership: value types.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "nnkit/config.h"
#include "nnkit/export.h"

namespace nnkit {

enum class Workload : uint8_t { kTrain, kEval, kGenerate };

struct MemoryShape {
  Workload workload = Workload::kTrain;
  int64_t batch = 0;        // sequences per forward (train: train.batch_size; generate: prompts)
  int64_t seq = 0;          // tokens per sequence in one forward (generate: the longest prompt)
  int64_t kv_capacity = 0;  // generate: KV cache tokens per sequence (prompt + new tokens)
  bool activation_checkpointing = false;
  // eval/generate: the model also holds its f32 masters (Transformer::allocate instead of
  // allocate_inference_only; `--keep-f32-masters`). Training always does.
  bool keep_f32_masters = false;
};

struct MemoryEstimate {
  int64_t parameters = 0;
  int64_t compute_copies = 0;
  int64_t gradients = 0;
  int64_t optimizer_state = 0;
  int64_t activations = 0;
  int64_t kv_cache = 0;
  int64_t load_staging = 0;
  std::string device;     // "cpu" or "cuda" (the backend's type)
  std::string precision;  // "fp32", "bf16" or "fp16": the dtype of activations
  // The sum of the categories (estimate_memory keeps each below 2^62, so the seven cannot
  // overflow).
  int64_t total() const {
    return parameters + compute_copies + gradients + optimizer_state + activations + kv_cache +
           load_staging;
  }
};

// Throws ConfigError when a size does not fit in 64 bits (naming the batch and sequence length).
// `parameter_count` is Transformer::parameter_count() of the config's model.
NNKIT_API MemoryEstimate estimate_memory(const RunConfig& config, int64_t parameter_count,
                                         const MemoryShape& shape);

struct MemoryLimit {
  int64_t bytes = 0;
  std::string source;  // "MemAvailable in /proc/meminfo" or "cgroup memory.max - memory.current"
};

// The memory this process can still take: the smaller of /proc/meminfo's MemAvailable and the
// cgroup's limit minus its usage (cgroup v2 memory.max / memory.current, v1 limit_in_bytes /
// usage_in_bytes). The roots are parameters for tests; nullopt when neither can be read.
NNKIT_API std::optional<MemoryLimit> host_memory_available(
    const std::filesystem::path& proc_meminfo = "/proc/meminfo",
    const std::filesystem::path& cgroup_root = "/sys/fs/cgroup");

// "1.5 GiB", "640 KiB", "12 B".
NNKIT_API std::string format_bytes(int64_t bytes);
// "parameters 6.9 MiB, gradients 6.9 MiB, ..." (categories that are 0 are left out).
NNKIT_API std::string describe(const MemoryEstimate& estimate);

// Compares the estimate with what the machine has and throws Error("memory", ...) naming the
// estimate by category, the limit and where it came from, and the fixes that apply to `config`
// and `shape` (smaller batch or sequence, activation checkpointing, bf16), plus
// `skip_flag` to run anyway. `limit` is the host's memory for the CPU backend and the device's
// free memory (Backend::device_memory()) for a GPU backend; nullopt (unknown) checks nothing.
// `command` names the command in the message ("nnkit train").
NNKIT_API void check_memory(const MemoryEstimate& estimate, const RunConfig& config,
                            const MemoryShape& shape, const std::optional<MemoryLimit>& limit,
                            const std::string& command, const std::string& skip_flag);

}  // namespace nnkit
