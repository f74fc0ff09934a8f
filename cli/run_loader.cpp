// Purpose: see run_loader.h.
#include "run_loader.h"

#include "memory_check.h"
#include "nnkit/checkpoint.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"
#include "nnkit/trainer.h"

namespace nnkit::cli {

FlagSpec keep_masters_flag() {
  return {kKeepMastersFlag, "",
          "also hold the f32 master weights (as training does) instead of only the compute-dtype "
          "ones: the same results with 3x the weight memory at bf16, for comparisons"};
}

namespace {

LoadedModel finish(Session session, const ParsedArgs& args, const MemoryPlan& plan) {
  LoadedModel loaded;
  loaded.session = std::move(session);
  const bool keep_masters = args.has(kKeepMastersFlag);
  // The backend first (it allocates nothing of the model's), so that a GPU's free memory is
  // what the estimate (weights, activations, KV cache) is held against.
  loaded.backend = create_backend(loaded.session);
  MemoryShape shape = plan.shape(loaded.session.config);
  shape.keep_f32_masters = keep_masters;
  check_memory_before(loaded.session, shape, args, plan.command, loaded.backend.get());
  loaded.tokenizer = create_tokenizer(loaded.session);
  loaded.model = std::make_unique<Transformer>(loaded.session.config, *loaded.session.registry,
                                               loaded.backend);
  if (keep_masters) {
    loaded.model->allocate(false);
  } else {
    loaded.model->allocate_inference_only();
  }
  return loaded;
}

}  // namespace

LoadedModel build_random_model(const std::filesystem::path& config,
                               const std::vector<std::string>& overrides, const ParsedArgs& args,
                               int64_t seed, const MemoryPlan& plan) {
  LoadedModel loaded = finish(open_session(config, overrides, args), args, plan);
  loaded.model->init_random(static_cast<uint64_t>(seed >= 0 ? seed : loaded.session.config.seed));
  return loaded;
}

LoadedModel load_checkpoint_model(const std::filesystem::path& run_dir,
                                  const std::vector<std::string>& overrides, const ParsedArgs& args,
                                  const MemoryPlan& plan) {
  const CheckpointStore store(run_dir);
  const CheckpointRef ref = store.require_latest();
  const std::string yaml = CheckpointStore::read_config(ref);
  const std::vector<PluginRecord> recorded = read_plugin_records(run_dir);
  Session stored =
      open_session_from_text(yaml, (ref.dir / "config.yaml").string(), {}, args, recorded);
  Session session =
      open_session_from_text(yaml, (ref.dir / "config.yaml").string(), overrides, args, recorded);
  const auto diffs = model_shape_differences(stored.config, session.config);
  if (!diffs.empty()) {
    std::string message = "overrides change the shape of the checkpoint's model:";
    for (const auto& d : diffs) message += "\n  " + d;
    throw ConfigError("cli", message);
  }
  LoadedModel loaded = finish(std::move(session), args, plan);
  CheckpointStore::load(ref, *loaded.model, nullptr);
  logger()->info("loaded {} (step {})", ref.dir.string(), ref.step);
  return loaded;
}

}  // namespace nnkit::cli
