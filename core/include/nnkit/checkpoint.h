// Purpose: training checkpoints in a run directory, written atomically and verified on load.
// Layout:  RUN_DIR/checkpoints/step-00000100/
//            model.safetensors      weights, HF-style names, f32 (a checkpoint written by
//                                   `convert import-hf` keeps the HF files' bf16/f16)
//            optimizer.safetensors  optimizer state ("exp_avg.<param>", "exp_avg_sq.<param>")
//            trainer.json           step, tokens seen, data-loader state, consecutive bad steps
//            config.yaml            the resolved config the run used
//            MANIFEST.json          size and CRC-32C of every file above (written last)
// A checkpoint is first written as step-N.tmp-<pid>/ (each file fsynced), then renamed into place
// and the folder fsynced, so a killed run leaves either a complete checkpoint or an ignorable
// temp folder; the next writer removes such folders once it holds the run lock, and retention
// pruning removes them too. Loading verifies sizes and checksums first and names the file (and
// tensor) that is wrong; a complete-looking but corrupt checkpoint is an error, never a silent
// fresh start.
// Ownership: CheckpointStore holds only paths; save/load borrow the model and optimizer.
// Thread-safety: one writer per run directory, which lock_for_writing() enforces across
// processes; reading (latest, verify, load) is safe while a writer saves.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nnkit/export.h"
#include "nnkit/io/run_lock.h"
#include "nnkit/io/safetensors.h"
#include "nnkit/model.h"
#include "nnkit/optim.h"

namespace nnkit {

struct TrainerState {
  int64_t step = 0;  // optimizer steps completed
  int64_t tokens_seen = 0;
  int64_t bad_steps_in_a_row = 0;
  std::string loader_state;       // WindowLoader::State, serialised
  std::string loss_scaler_state;  // fp16 dynamic loss scaler (LossScaler::save()), or empty
};

struct CheckpointRef {
  std::filesystem::path dir;
  int64_t step = 0;
};

class NNKIT_API CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path run_dir);

  const std::filesystem::path& run_dir() const { return run_dir_; }
  // Takes the run directory's lock for `command` (see nnkit/io/run_lock.h; the directory must
  // exist) and then, since no live process can be saving here any more, removes the temp folders
  // of saves that never finished. Keep the lock for as long as anything is written into the run.
  RunLock lock_for_writing(const std::string& command) const;
  // Removes checkpoints/step-N.tmp-<pid>/ folders, logging each; returns how many went. Only for
  // the holder of the run lock: another live writer's save in progress would lose its folder.
  int remove_temporary_folders() const;
  // Writes a checkpoint of `step`; returns its folder. Keeps the newest `keep` checkpoints and
  // removes temp folders (a failed save's own on the way out, leftovers at pruning). Refuses
  // (Error) an inference-only model: it holds no f32 masters to record.
  std::filesystem::path save(const TrainerState& state, Transformer& model, Optimizer* optimizer,
                             const std::string& config_yaml, int keep = 3);
  // The same from named tensors on `backend`, written in the order given: what expert
  // parallelism saves after gathering every shard's experts onto the writing rank.
  std::filesystem::path save(const TrainerState& state, Backend& backend,
                             const std::vector<std::pair<std::string, Tensor>>& weights,
                             const std::vector<std::pair<std::string, Tensor>>& optimizer_state,
                             int64_t optimizer_steps, const std::string& config_yaml, int keep = 3);
  // The same from weights in host memory (f32, bf16 or f16; the caller's, read and not kept)
  // and no optimizer state: what `convert import-hf` writes from the memory-mapped HF files.
  std::filesystem::path save(const TrainerState& state, const std::vector<NamedHostTensor>& weights,
                             const std::string& config_yaml, int keep = 3);
  // Newest checkpoint with a MANIFEST (half-written temp folders are skipped and logged).
  std::optional<CheckpointRef> latest() const;
  // Like latest(), but throws IoError explaining what is missing when there is none.
  CheckpointRef require_latest() const;

  // Checks sizes and CRC-32C of every file in the manifest; throws IoError naming the file.
  static void verify(const CheckpointRef& ref);
  static std::string read_config(const CheckpointRef& ref);
  // Verifies, then copies weights (and optimizer state when given) into already-allocated
  // tensors; every model parameter must be present with its shape (error names the tensor).
  // Weights load one tensor at a time (Transformer::stage_weights/commit_weights), so an
  // inference-only model never holds more than one f32 tensor; optimizer state needs a model
  // made with allocate().
  static TrainerState load(const CheckpointRef& ref, Transformer& model, Optimizer* optimizer);
  // trainer.json text -> TrainerState; throws IoError naming `where` for anything malformed
  // (load() uses it; the fuzz target trainer_state feeds it arbitrary bytes).
  static TrainerState parse_trainer_state(const std::string& json, const std::string& where);

 private:
  // Writes the folder of `state.step` (write_tensors puts model.safetensors and
  // optimizer.safetensors into the folder it is given), publishes it, prunes to `keep`.
  std::filesystem::path write(
      const TrainerState& state, const std::string& config_yaml, int keep,
      const std::function<void(const std::filesystem::path&)>& write_tensors);

  std::filesystem::path run_dir_;
};

}  // namespace nnkit
