// Purpose: see checkpoint.h.
#include "nnkit/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/checksum.h"
#include "nnkit/io/safetensors.h"
#include "nnkit/logging.h"

namespace nnkit {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManifest = "MANIFEST.json";
const char* const kFiles[] = {"model.safetensors", "optimizer.safetensors", "trainer.json",
                              "config.yaml"};

// step-00000100.tmp-4242: where a save writes before the rename that publishes it.
bool is_temporary_folder_name(const std::string& name) {
  return name.rfind("step-", 0) == 0 && name.find(".tmp-") != std::string::npos;
}

std::string step_name(int64_t step) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "step-%08lld", static_cast<long long>(step));
  return buffer;
}

// CRC-32C of a file, streamed so multi-GB checkpoints need no extra memory.
uint32_t file_crc(const fs::path& path, uint64_t* size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("checkpoint", "cannot read " + path.string());
  std::vector<char> buffer(1 << 20);
  uint32_t crc = 0;
  uint64_t total = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize got = in.gcount();
    if (got <= 0) break;
    crc = crc32c(crc, buffer.data(), static_cast<size_t>(got));
    total += static_cast<uint64_t>(got);
  }
  *size = total;
  return crc;
}

void fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::vector<NamedHostTensor> to_host(Backend& backend,
                                     const std::vector<std::pair<std::string, Tensor>>& tensors,
                                     std::vector<std::vector<float>>& storage) {
  std::vector<NamedHostTensor> out;
  storage.resize(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].second;
    storage[i].resize(static_cast<size_t>(t.numel()));
    if (t.numel() > 0) backend.copy_to_host(storage[i].data(), t);
    out.push_back(NamedHostTensor{tensors[i].first, DType::kF32, t.shape(), storage[i].data()});
  }
  return out;
}

void write_weights_file(const fs::path& dir, const std::vector<NamedHostTensor>& weights) {
  write_safetensors(dir / "model.safetensors", weights, {{"format", "pt"}, {"producer", "nnkit"}});
}

void write_optimizer_file(const fs::path& dir, const std::vector<NamedHostTensor>& state,
                          int64_t optimizer_steps) {
  write_safetensors(dir / "optimizer.safetensors", state,
                    {{"optimizer_steps", std::to_string(optimizer_steps)}});
}

void require_tensor(const SafetensorsFile& st, const fs::path& file, const std::string& name) {
  if (!st.has(name)) {
    throw IoError("checkpoint", file.string() + " has no tensor '" + name +
                                    "'; the checkpoint was written for a different model "
                                    "(compare its config.yaml with yours)");
  }
}

void load_tensors(const fs::path& file, Backend& backend,
                  const std::vector<std::pair<std::string, Tensor>>& targets) {
  SafetensorsFile st(file);
  for (const auto& [name, tensor] : targets) {
    require_tensor(st, file, name);
    st.read_into(name, backend, tensor);
  }
}

// The model's weights, one tensor at a time: each is read into Transformer::stage_weights (the
// master, or an f32 staging tensor freed before the next one is read) and committed into the
// compute copy, so an inference-only model peaks at its compute weights plus one f32 tensor.
// A 16-bit tensor (an imported HF checkpoint) bound for a compute-only parameter of its own
// dtype goes straight into the copy: widening it to f32 and rounding back gives the same bits.
void load_weights(const fs::path& file, Transformer& model) {
  SafetensorsFile st(file);
  Backend& backend = model.backend();
  for (Parameter* p : model.parameters()) {
    require_tensor(st, file, p->name);
    if (!p->value.defined() && p->compute.defined() &&
        st.info(p->name).dtype == p->compute.dtype()) {
      st.read_into(p->name, backend, p->compute);
      continue;
    }
    const Tensor staged = model.stage_weights(*p);
    st.read_into(p->name, backend, staged);
    model.commit_weights(*p, staged);
  }
}

}  // namespace

CheckpointStore::CheckpointStore(fs::path run_dir) : run_dir_(std::move(run_dir)) {}

RunLock CheckpointStore::lock_for_writing(const std::string& command) const {
  RunLock lock(run_dir_, command);
  remove_temporary_folders();
  return lock;
}

int CheckpointStore::remove_temporary_folders() const {
  const fs::path root = run_dir_ / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return 0;
  std::vector<fs::path> leftovers;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (is_temporary_folder_name(entry.path().filename().string()) && entry.is_directory(ec)) {
      leftovers.push_back(entry.path());
    }
  }
  int removed = 0;
  for (const fs::path& dir : leftovers) {
    fs::remove_all(dir, ec);
    if (ec) {
      logger()->warn("cannot remove temporary checkpoint folder {}: {}", dir.string(),
                     ec.message());
      continue;
    }
    logger()->info(
        "removed stale temporary checkpoint folder {} (left by a save that did not "
        "finish)",
        dir.string());
    ++removed;
  }
  return removed;
}

fs::path CheckpointStore::save(const TrainerState& state, Transformer& model, Optimizer* optimizer,
                               const std::string& config_yaml, int keep) {
  if (model.inference_only()) {
    // A checkpoint holds the f32 masters that training resumes from; rounded compute weights
    // written in their place would lose precision without a trace.
    throw Error("checkpoint",
                "cannot save a model allocated for inference only (allocate_inference_only, "
                "as generate, eval and logits do): it holds " +
                    std::string(dtype_name(model.backend().compute_dtype())) +
                    " compute weights, not the f32 master weights a checkpoint records; save "
                    "from a model made with allocate(), or export the run with `nnkit convert "
                    "export-hf`");
  }
  std::vector<std::pair<std::string, Tensor>> weights;
  for (Parameter* p : model.parameters()) weights.emplace_back(p->name, p->value);
  std::vector<std::pair<std::string, Tensor>> opt_state;
  if (optimizer != nullptr) opt_state = optimizer->state(model.backend(), model.parameters());
  return save(state, model.backend(), weights, opt_state, optimizer ? optimizer->step_count() : 0,
              config_yaml, keep);
}

fs::path CheckpointStore::save(const TrainerState& state, Backend& backend,
                               const std::vector<std::pair<std::string, Tensor>>& weights,
                               const std::vector<std::pair<std::string, Tensor>>& opt_state,
                               int64_t optimizer_steps, const std::string& config_yaml, int keep) {
  return write(state, config_yaml, keep, [&](const fs::path& dir) {
    // One host buffer set for both files in turn: the optimizer's reuses the weights'.
    std::vector<std::vector<float>> host;
    write_weights_file(dir, to_host(backend, weights, host));
    write_optimizer_file(dir, to_host(backend, opt_state, host), optimizer_steps);
  });
}

fs::path CheckpointStore::save(const TrainerState& state,
                               const std::vector<NamedHostTensor>& weights,
                               const std::string& config_yaml, int keep) {
  return write(state, config_yaml, keep, [&](const fs::path& dir) {
    write_weights_file(dir, weights);
    write_optimizer_file(dir, {}, 0);
  });
}

fs::path CheckpointStore::write(const TrainerState& state, const std::string& config_yaml, int keep,
                                const std::function<void(const fs::path&)>& write_tensors) {
  const fs::path root = run_dir_ / "checkpoints";
  fs::create_directories(root);
  const fs::path final_dir = root / step_name(state.step);
  const fs::path temp_dir = root / (step_name(state.step) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(temp_dir);
  fs::create_directories(temp_dir);
  // A save that fails (disk full, I/O error) takes its half-written folder with it.
  struct RemoveUnlessPublished {
    const fs::path& dir;
    bool published = false;
    ~RemoveUnlessPublished() {
      std::error_code ignored;
      if (!published) fs::remove_all(dir, ignored);
    }
  } temp_guard{temp_dir};
  write_tensors(temp_dir);
  const nlohmann::json trainer{{"step", state.step},
                               {"tokens_seen", state.tokens_seen},
                               {"bad_steps_in_a_row", state.bad_steps_in_a_row},
                               {"loader_state", state.loader_state},
                               {"loss_scaler", state.loss_scaler_state}};
  write_file_atomic(temp_dir / "trainer.json", trainer.dump(2));
  write_file_atomic(temp_dir / "config.yaml", config_yaml);

  nlohmann::json manifest{{"step", state.step}, {"files", nlohmann::json::object()}};
  for (const char* name : kFiles) {
    uint64_t size = 0;
    const uint32_t crc = file_crc(temp_dir / name, &size);
    manifest["files"][name] = {{"bytes", size}, {"crc32c", hex32(crc)}};
  }
  write_file_atomic(temp_dir / kManifest, manifest.dump(2));
  fsync_directory(temp_dir);
  fs::remove_all(final_dir);  // an older checkpoint of the same step (re-run after resume)
  fs::rename(temp_dir, final_dir);
  temp_guard.published = true;
  fsync_directory(root);

  // Retention: keep the newest `keep` complete checkpoints; temp folders are never worth keeping
  // (the caller holds the run lock, so none of them belongs to a live save).
  remove_temporary_folders();
  std::vector<CheckpointRef> complete;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) == 0 && name.find(".tmp") == std::string::npos &&
        fs::exists(entry.path() / kManifest)) {
      complete.push_back({entry.path(), std::stoll(name.substr(5))});
    }
  }
  std::sort(complete.begin(), complete.end(),
            [](const CheckpointRef& a, const CheckpointRef& b) { return a.step > b.step; });
  for (size_t i = static_cast<size_t>(std::max(keep, 1)); i < complete.size(); ++i) {
    fs::remove_all(complete[i].dir);
  }
  return final_dir;
}

std::optional<CheckpointRef> CheckpointStore::latest() const {
  const fs::path root = run_dir_ / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  std::optional<CheckpointRef> best;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) != 0) continue;
    if (name.find(".tmp") != std::string::npos || !fs::exists(entry.path() / kManifest)) {
      logger()->warn("ignoring incomplete checkpoint {} (a run was stopped while writing it)",
                     entry.path().string());
      continue;
    }
    int64_t step = 0;
    try {
      step = std::stoll(name.substr(5));
    } catch (const std::exception&) {
      continue;
    }
    if (!best || step > best->step) best = CheckpointRef{entry.path(), step};
  }
  return best;
}

CheckpointRef CheckpointStore::require_latest() const {
  std::error_code ec;
  if (!fs::is_directory(run_dir_, ec)) {
    throw IoError("checkpoint", "run directory " + run_dir_.string() + " does not exist");
  }
  auto ref = latest();
  if (!ref) {
    throw IoError("checkpoint", "no complete checkpoint in " + (run_dir_ / "checkpoints").string() +
                                    "; train with `nnkit train CONFIG --out " + run_dir_.string() +
                                    "` first");
  }
  return *ref;
}

void CheckpointStore::verify(const CheckpointRef& ref) {
  const fs::path manifest_path = ref.dir / kManifest;
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(read_file(manifest_path));
  } catch (const nlohmann::json::exception& e) {
    throw IoError("checkpoint", manifest_path.string() + " is corrupt (" + e.what() + ")");
  }
  if (!manifest.contains("files") || !manifest["files"].is_object()) {
    throw IoError("checkpoint", manifest_path.string() + " lists no files");
  }
  for (const char* name : kFiles) {
    const fs::path file = ref.dir / name;
    if (!manifest["files"].contains(name)) {
      throw IoError("checkpoint", manifest_path.string() + " does not list " + name);
    }
    std::error_code ec;
    if (!fs::exists(file, ec)) {
      throw IoError("checkpoint", file.string() + " is missing from the checkpoint");
    }
    const auto& entry = manifest["files"][name];
    // A hand-edited or damaged manifest may hold anything here; value() would throw
    // nlohmann's type_error, which named neither the file nor the problem.
    if (!entry.is_object() || !entry.contains("bytes") || !entry["bytes"].is_number_unsigned() ||
        !entry.contains("crc32c") || !entry["crc32c"].is_string()) {
      throw IoError("checkpoint", manifest_path.string() + " has no {bytes, crc32c} entry for " +
                                      name + "; the checkpoint is corrupt");
    }
    uint64_t size = 0;
    const uint32_t crc = file_crc(file, &size);
    if (size != entry.value("bytes", uint64_t{0})) {
      throw IoError("checkpoint", file.string() + " has " + std::to_string(size) +
                                      " bytes but the manifest records " +
                                      std::to_string(entry.value("bytes", uint64_t{0})) +
                                      " (truncated or replaced)");
    }
    if (hex32(crc) != entry.value("crc32c", std::string())) {
      throw IoError("checkpoint", file.string() + " fails its checksum (crc32c " + hex32(crc) +
                                      ", manifest " + entry.value("crc32c", std::string()) +
                                      "): the file is corrupt");
    }
  }
}

TrainerState CheckpointStore::parse_trainer_state(const std::string& json,
                                                  const std::string& where) {
  TrainerState state;
  try {
    const nlohmann::json trainer = nlohmann::json::parse(json);
    // A count must be a JSON integer: a number too large for int64 parses as a double, and
    // converting it would be undefined (found by the trainer_state fuzzer).
    auto count = [&](const char* key) {
      const nlohmann::json& v = trainer.at(key);
      if (!v.is_number_integer()) {
        throw IoError("checkpoint", where + " is invalid: \"" + key +
                                        "\" must be a whole number that fits 64 bits, got " +
                                        v.dump().substr(0, 40));
      }
      return v.get<int64_t>();
    };
    state.step = count("step");
    state.tokens_seen = count("tokens_seen");
    state.bad_steps_in_a_row = count("bad_steps_in_a_row");
    state.loader_state = trainer.at("loader_state").get<std::string>();
    // Absent in checkpoints of runs without fp16 loss scaling (and of older versions).
    state.loss_scaler_state = trainer.value("loss_scaler", std::string());
  } catch (const nlohmann::json::exception& e) {
    throw IoError("checkpoint", where + " is invalid: " + e.what());
  }
  if (state.step < 0 || state.tokens_seen < 0 || state.bad_steps_in_a_row < 0) {
    throw IoError("checkpoint", where + " is invalid: negative step or token counts");
  }
  return state;
}

std::string CheckpointStore::read_config(const CheckpointRef& ref) {
  return read_file(ref.dir / "config.yaml");
}

TrainerState CheckpointStore::load(const CheckpointRef& ref, Transformer& model,
                                   Optimizer* optimizer) {
  verify(ref);
  if (optimizer != nullptr && model.inference_only()) {
    throw Error("checkpoint",
                "optimizer state loads only into a model that can train (one made "
                "with allocate(), not allocate_inference_only())");
  }
  Backend& backend = model.backend();
  load_weights(ref.dir / "model.safetensors", model);
  const TrainerState state =
      parse_trainer_state(read_file(ref.dir / "trainer.json"), (ref.dir / "trainer.json").string());
  if (optimizer != nullptr) {
    load_tensors(ref.dir / "optimizer.safetensors", backend,
                 optimizer->state(backend, model.parameters()));
    SafetensorsFile st(ref.dir / "optimizer.safetensors");
    const auto& meta = st.metadata();
    auto it = meta.find("optimizer_steps");
    optimizer->set_step_count(it == meta.end() ? state.step : std::stoll(it->second));
  }
  return state;
}

}  // namespace nnkit
