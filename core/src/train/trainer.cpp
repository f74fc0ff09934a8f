// Purpose: see trainer.h.
#include "nnkit/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "nnkit/checkpoint.h"
#include "nnkit/communicator.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/data_loader.h"
#include "nnkit/io/token_file.h"
#include "nnkit/logging.h"
#include "nnkit/model.h"
#include "nnkit/optim.h"
#include "parallel/data_parallel.h"
#include "parallel/expert_parallel.h"
#include "train/loss_scaler.h"

namespace nnkit {

namespace fs = std::filesystem;

// Gradients are summed across ranks in buckets of about this size (one collective each).
constexpr size_t kBucketBytes = size_t{16} << 20;

namespace {

// "model.attention.n_heads" -> "12" for every model option; `shape` keeps only shape keys.
std::map<std::string, std::string> flatten_model(const RunConfig& cfg) {
  std::map<std::string, std::string> out;
  const ModelConfig& m = cfg.model;
  out["model.vocab_size"] = std::to_string(m.vocab_size);
  out["model.hidden_dim"] = std::to_string(m.hidden_dim);
  out["model.n_layers"] = std::to_string(m.n_layers);
  out["model.feed_forward"] = m.is_moe ? "moe" : "ffn";
  auto add = [&](const std::string& path, const PluginChoice& c) {
    if (c.name.empty()) return;
    out[path + ".type"] = c.name;
    for (const auto& [name, v] : c.options.values()) {
      std::string text;
      if (v.is_null)
        text = "null";
      else if (v.type == OptionType::kInt)
        text = std::to_string(v.int_value);
      else if (v.type == OptionType::kFloat)
        text = std::to_string(v.float_value);
      else if (v.type == OptionType::kBool)
        text = v.bool_value ? "true" : "false";
      else
        text = v.string_value;
      out[path + "." + name] = text;
    }
  };
  add("model.norm", m.norm);
  add("model.attention", m.attention);
  add("model.moe.router", m.router);
  add("model.moe.experts", m.experts);
  add("model.ffn", m.ffn);
  return out;
}

// Options that do not change any parameter's shape may differ on resume (they are logged).
bool affects_shapes(const std::string& key) {
  static const std::set<std::string> soft_suffixes = {
      ".eps",           ".rope.base",       ".rope.ntk_alpha", ".renormalize", ".aux_loss_weight",
      ".z_loss_weight", ".capacity_factor", ".top_k"};
  for (const std::string& s : soft_suffixes) {
    if (key.size() >= s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0) {
      return false;
    }
  }
  return true;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = static_cast<long>(seconds);
  char buffer[32];
  if (s >= 3600)
    std::snprintf(buffer, sizeof(buffer), "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buffer, sizeof(buffer), "%ld:%02ld", s / 60, s % 60);
  return buffer;
}

// Steps listed in NNKIT_FAULT_NAN_STEPS ("3,4,5") get a NaN loss: a test hook for the
// non-finite-loss path, which real runs reach only through diverging numerics.
std::set<int64_t> injected_nan_steps() {
  std::set<int64_t> steps;
  if (const char* env = std::getenv("NNKIT_FAULT_NAN_STEPS")) {
    std::stringstream stream(env);
    std::string item;
    while (std::getline(stream, item, ',')) {
      if (!item.empty()) steps.insert(std::stoll(item));
    }
  }
  return steps;
}

// Keeps metrics lines up to `step` (a resumed run replays the steps after its checkpoint).
void truncate_metrics(const fs::path& file, int64_t step) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // a line cut short by a kill: drop it
    }
  }
  write_file_atomic(file, kept);
}

// The mean of the validation batches' losses; with several ranks each takes every size()-th
// batch and the sums are added up, so every rank returns the one-rank number. With expert
// shards every forward is a collective, so every rank takes part in every batch instead: each
// takes its rows of it (all of them when the batch has fewer rows than ranks, counted once),
// and a batch's loss is the row-weighted sum of the ranks' (validation windows have no ignored
// targets).
double validation_loss(Transformer& model, WindowLoader& loader, int64_t batch, int64_t max_batches,
                       Communicator& comm) {
  std::vector<int32_t> inputs, targets, rank_inputs, rank_targets;
  double sums[2] = {0.0, 0.0};  // loss total, batch count
  const int64_t batches = std::min(max_batches, loader.validation_batch_count(batch));
  if (model.expert_shard().count > 1) {
    const int rank = comm.rank(), ranks = comm.size();
    for (int64_t i = 0; i < batches; ++i) {
      const int64_t rows = loader.validation_batch(i, batch, inputs, targets);
      const int64_t seq = loader.seq_len();
      if (rows < ranks) {
        const double loss = model.forward_loss(inputs, targets, rows, seq, false, false);
        sums[0] += loss / ranks;
      } else {
        take_rank_rows(inputs, seq, rank, ranks, rank_inputs);
        take_rank_rows(targets, seq, rank, ranks, rank_targets);
        const int64_t mine = static_cast<int64_t>(rank_inputs.size()) / seq;
        const double loss = model.forward_loss(rank_inputs, rank_targets, mine, seq, false, false);
        sums[0] += loss * static_cast<double>(mine) / static_cast<double>(rows);
      }
      sums[1] += 1.0 / ranks;
    }
  } else {
    for (int64_t i = comm.rank(); i < batches; i += comm.size()) {
      const int64_t rows = loader.validation_batch(i, batch, inputs, targets);
      sums[0] += model.forward_loss(inputs, targets, rows, loader.seq_len(), false, false);
      sums[1] += 1.0;
    }
  }
  comm.all_reduce_sum_host(sums);
  return sums[1] > 0 ? sums[0] / sums[1] : std::nan("");
}

}  // namespace

std::vector<std::string> model_shape_differences(const RunConfig& a, const RunConfig& b) {
  const auto fa = flatten_model(a);
  const auto fb = flatten_model(b);
  std::set<std::string> keys;
  for (const auto& [k, v] : fa) keys.insert(k);
  for (const auto& [k, v] : fb) keys.insert(k);
  std::vector<std::string> out;
  for (const std::string& k : keys) {
    const std::string va = fa.count(k) ? fa.at(k) : "(absent)";
    const std::string vb = fb.count(k) ? fb.at(k) : "(absent)";
    if (va != vb && affects_shapes(k)) out.push_back(k + ": " + va + " -> " + vb);
  }
  return out;
}

namespace {

// The whole run on this rank; `comm` is set as soon as the job's communicator exists, so that
// train() can end the other ranks when this one fails.
TrainSummary train_rank(const TrainRequest& request, std::shared_ptr<Communicator>& comm) {
  const RunConfig& cfg = request.config;
  const TrainConfig& tc = cfg.train;
  const Registry& registry = *request.registry;
  auto log = logger();

  // ---- everything that can fail on bad input happens before the first step
  ensure_writable_directory(request.run_dir);
  CheckpointStore store(request.run_dir);
  std::optional<CheckpointRef> resume_from;
  std::string previous_data;  // the token file the run trained on (its stored train.data)
  if (request.resume) {
    resume_from = store.require_latest();
    const std::string stored = CheckpointStore::read_config(*resume_from);
    const RunConfig previous = resolve_config(
        ConfigDocument::parse(stored, (resume_from->dir / "config.yaml").string()), registry);
    const auto diffs = model_shape_differences(previous, cfg);
    if (!diffs.empty()) {
      std::string message =
          "cannot resume " + request.run_dir.string() + ": the model shape differs from the run's:";
      for (const auto& d : diffs) message += "\n  " + d;
      message += "\nuse the run's config (" + (resume_from->dir / "config.yaml").string() +
                 ") or start a new run with --out";
      throw ConfigError("train", message);
    }
    previous_data = previous.train.data;
    if (previous.train.steps != tc.steps) {
      log->info("train.steps changed from {} to {} on resume", previous.train.steps, tc.steps);
    }
  } else if (store.latest()) {
    throw ConfigError("train", request.run_dir.string() +
                                   " already holds checkpoints; continue it with --resume " +
                                   request.run_dir.string() + " or choose another --out");
  }
  fs::path data_path = request.data.empty() ? fs::path(tc.data) : request.data;
  if (data_path.empty()) data_path = previous_data;  // `--resume RUN` keeps the run's data
  if (data_path.empty()) {
    throw ConfigError("train",
                      "no training data: pass --data FILE or set train.data (make a token "
                      "file with `nnkit data prepare INPUT... -o FILE`)");
  }
  TokenFile tokens(data_path);
  if (tokens.vocab_size() > cfg.model.vocab_size) {
    throw IoError("data",
                  data_path.string() + " was prepared for " + std::to_string(tokens.vocab_size()) +
                      " token ids but model.vocab_size is " + std::to_string(cfg.model.vocab_size));
  }
  WindowLoader loader(tokens, tc.seq_len, tc.val_fraction, static_cast<uint64_t>(cfg.seed));

  const PluginChoice& bc = cfg.backend;
  auto backend = registry.create<Backend>(bc.kind, bc.name, CreateArgs{bc.options, {}, nullptr});
  // Data parallelism: every rank draws the same global batch and trains on its share of the
  // rows; gradients and losses are summed across ranks, so every rank takes the same update.
  comm = open_communicator(cfg, registry, *backend);
  const int rank = comm->rank(), ranks = comm->size();
  const bool writer = rank == 0;  // the rank that writes config, metrics and checkpoints
  // A comm plugin named in the config runs the data-parallel path even on one rank, so that
  // one GPU (or one process) exercises the communicator's collectives.
  const bool distributed = ranks > 1 || !cfg.parallel.comm.name.empty();
  const int64_t local_batch = tc.batch_size / ranks;
  // Expert parallelism: rank = d * P + p is expert rank p of data group d; the group's P ranks
  // hold the experts between them, every rank takes its own rows of the batch.
  const int expert_ranks = static_cast<int>(cfg.parallel.expert);
  const ExpertShard shard{rank % expert_ranks, expert_ranks};
  Transformer model(cfg, registry, backend, shard);
  // Before any pass: with expert shards the validation passes exchange rows too.
  if (distributed) model.set_communicator(comm.get());
  model.allocate(true);
  const PluginChoice& oc = tc.optimizer;
  auto optimizer =
      registry.create<Optimizer>(oc.kind, oc.name, CreateArgs{oc.options, {}, backend.get()});
  const PluginChoice& sc = tc.schedule;
  auto schedule = registry.create<Schedule>(sc.kind, sc.name, CreateArgs{sc.options, {}, nullptr});
  const std::vector<Parameter*> params = model.parameters();

  TrainerState state;
  if (resume_from) {
    state = CheckpointStore::load(*resume_from, model, optimizer.get());
    loader.restore_state(WindowLoader::State::decode(state.loader_state));
    log->info("resumed {} from {} (step {})", request.run_dir.string(), resume_from->dir.string(),
              state.step);
    // After the checkpoint was verified, before anything in the run is rewritten: fewer steps
    // than done cannot be honoured, and a finished run has nothing left to do (the caller sees
    // first_step == last_step == train.steps and says so).
    if (state.step > tc.steps) {
      throw ConfigError(
          "train", request.run_dir.string() + " is already at step " + std::to_string(state.step) +
                       ", beyond train.steps = " + std::to_string(tc.steps) +
                       "; a run does not go back: raise train.steps above " +
                       std::to_string(state.step) + " to continue, or start a new run with --out");
    }
    if (state.step == tc.steps) {
      TrainSummary finished;
      finished.first_step = finished.last_step = state.step;
      finished.last_checkpoint = resume_from->dir;
      return finished;
    }
  } else {
    model.init_random(static_cast<uint64_t>(cfg.seed));
  }
  // The stored config names the data actually used (also when it came from --data), as an
  // absolute path, so that `nnkit train --resume RUN` finds it again from any directory.
  RunConfig stored_config = cfg;
  stored_config.train.data = fs::absolute(data_path).string();
  const std::string config_yaml = stored_config.to_yaml();
  const fs::path metrics_path = request.run_dir / "metrics.jsonl";
  std::ofstream metrics;  // never opened on the other ranks: their lines go nowhere
  if (writer) {
    write_file_atomic(request.run_dir / "config.yaml", config_yaml);
    if (resume_from)
      truncate_metrics(metrics_path, state.step);
    else
      write_file_atomic(metrics_path, "");
    metrics.open(metrics_path, std::ios::app);
  }

  log->info(
      "training {} ({} parameters, {} active) on {} for {} steps; batch {}x{} tokens, "
      "grad_accum {}{}",
      cfg.source_name, model.parameter_count(), model.active_parameter_count(), bc.id(), tc.steps,
      tc.batch_size, tc.seq_len, tc.grad_accum,
      distributed
          ? fmt::format("; data parallel over {} rank(s) ({}, {} rows each{}{})", ranks, comm->id(),
                        local_batch,
                        cfg.parallel.zero == 1 ? ", optimizer state sharded (ZeRO-1)" : "",
                        expert_ranks > 1
                            ? fmt::format(", experts sharded over {} expert ranks", expert_ranks)
                            : std::string())
          : "");

  TrainSummary summary;
  summary.first_step = state.step;
  if (!resume_from && tc.eval_every > 0) {
    // The starting point of the validation curve (about ln(vocab) for a fresh model).
    const double initial = validation_loss(model, loader, tc.batch_size, tc.eval_batches, *comm);
    metrics << nlohmann::json{{"step", 0}, {"val_loss", initial}}.dump() << "\n";
    log->info("step 0 val_loss {:.4f} (ln(vocab) = {:.4f})", initial,
              std::log(static_cast<double>(cfg.model.vocab_size)));
  }
  const std::set<int64_t> nan_steps = injected_nan_steps();
  // fp16 needs dynamic loss scaling (its range is too small for small gradients); bf16 and f32
  // have f32's exponent range and run with scale 1.
  const bool fp16 = backend->compute_dtype() == DType::kF16;
  LossScalerOptions scaler_options;
  // Test hook: a start scale large enough to overflow fp16 exercises the scaler's skip path.
  if (const char* env = std::getenv("NNKIT_FP16_INITIAL_SCALE")) {
    scaler_options.initial_scale = std::strtof(env, nullptr);
    scaler_options.max_scale = std::max(scaler_options.max_scale, scaler_options.initial_scale);
  }
  LossScaler scaler(fp16, scaler_options);
  if (fp16 && !state.loss_scaler_state.empty()) {
    scaler = LossScaler::restore(state.loss_scaler_state);
  }
  // Per step only the loss and the gradient norm come back, in one read that does not wait for
  // the optimizer update behind it; the MoE statistics come back on logged steps only.
  Tensor loss_sum = backend->empty({1});          // (1) f32: mean CE over the micro-batches
  Tensor norm_accumulator = backend->empty({1});  // (1) f32: sum of squared gradients
  std::vector<int32_t> inputs, targets, rank_inputs, rank_targets;
  // Gradients summed across ranks (each over the ranks holding it) and the job's norm.
  // Test hook: NNKIT_GRADIENT_BUCKET_BYTES makes the buckets of a small test model several.
  size_t bucket_bytes = kBucketBytes;
  if (const char* env = std::getenv("NNKIT_GRADIENT_BUCKET_BYTES")) {
    bucket_bytes = std::max<size_t>(std::strtoull(env, nullptr, 10), 1);
  }
  GradientReduction gradients(*comm, *backend, model, distributed, bucket_bytes);
  // parallel.overlap: the buckets' all-reduces start during the step's last backward pass (the
  // earlier micro-batches' passes still add to the gradients, so only the last one may).
  const bool overlap = distributed && cfg.parallel.overlap;
  const Transformer::GradientsReady gradients_ready = [&](const std::vector<Parameter*>& done) {
    gradients.ready(done);
  };
  std::unique_ptr<OptimizerShards> shards;  // ZeRO-1: the parameters this rank updates
  if (distributed && cfg.parallel.zero == 1) {
    shards = std::make_unique<OptimizerShards>(*comm, *backend, params);
  }
  const int64_t tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum;
  const auto run_start = std::chrono::steady_clock::now();
  auto window_start = run_start;
  int64_t window_tokens = 0;
  double tokens_per_second = 0.0;

  // Every rank holds the same weights and optimizer state: one writes them, the others wait so
  // that nobody runs ahead of a checkpoint that is not there yet.
  auto save = [&](const char* why) {
    if (shards) shards->gather_state_on_writer(*optimizer);
    // Expert shards: the writer receives the other shards' experts and their optimizer state.
    CompleteState complete;
    if (expert_ranks > 1) {
      auto scratch =
          registry.create<Optimizer>(oc.kind, oc.name, CreateArgs{oc.options, {}, backend.get()});
      complete = gather_complete_state(*comm, *backend, model, *optimizer, *scratch);
    }
    if (writer) {
      state.loader_state = loader.save_state().encode();
      state.loss_scaler_state = fp16 ? scaler.save() : std::string();
      summary.last_checkpoint =
          expert_ranks > 1 ? store.save(state, *backend, complete.weights, complete.optimizer_state,
                                        optimizer->step_count(), config_yaml)
                           : store.save(state, model, optimizer.get(), config_yaml);
      if (request.progress_bar) std::fprintf(stderr, "\n");
      log->info("checkpoint ({}) at step {}: {}", why, state.step,
                summary.last_checkpoint.string());
    }
    comm->barrier();
  };

  // After every step, taken or skipped: the periodic checkpoint and the Ctrl-C check. Returns
  // true when the run was interrupted.
  auto end_of_step = [&]() {
    const bool checkpoint_now = tc.checkpoint_every > 0 && state.step % tc.checkpoint_every == 0;
    if (checkpoint_now && state.step < tc.steps) save("periodic");
    // A signal may reach the ranks at different steps: they stop together when any saw one.
    double stop[1] = {request.stop_requested && request.stop_requested() ? 1.0 : 0.0};
    if (distributed) comm->all_reduce_sum_host(stop);
    if (stop[0] > 0.0) {
      save("interrupted");
      summary.interrupted = true;
    }
    return summary.interrupted;
  };

  // The first parameter whose gradient is not finite (a host read per parameter: only after a
  // skipped step, to say where the run broke).
  auto first_non_finite_gradient = [&]() -> std::string {
    Tensor partial = backend->empty({1});
    for (Parameter* p : params) {
      backend->fill(partial, 0.0f);
      backend->sum_squares(p->grad, partial);
      float value = 0.0f;
      backend->copy_to_host(&value, partial);
      if (!std::isfinite(value)) return p->name;
    }
    return "";
  };

  // CUDA Graphs: a step whose shapes do not depend on the data (no MoE layer, or MoE layers with
  // a capacity, which then use the padded expert layout from the first step on) is recorded
  // once, after one ordinary step has created everything that lives across steps (optimizer
  // moments, staged batches), and replayed from then on: one graph for forward, backward and
  // the norm, one for the update, with the loss read in between. The recording is redone when
  // what is baked into it changes (the fp16 loss scale, the count of non-ignored targets).
  // Dropless MoE runs uncaptured: its per-expert products are sized by each step's routing.
  // Several ranks: the collectives between backward and the update are not recorded.
  bool graphs_possible =
      model.has_static_shapes() && optimizer->capturable() && backend->captures() && !distributed;
  model.set_static_shapes(graphs_possible);
  if (!graphs_possible && backend->captures() && optimizer->capturable()) {
    log->info(
        "the training step runs uncaptured (no CUDA Graph): dropless MoE layers size their "
        "expert products from each step's routing; set model.moe.router.capacity_factor (e.g. "
        "1.25) to record it");
  }
  // Test hook: NNKIT_GRAPHS_NO_REPLAY=1 keeps the static layout but runs every step uncaptured,
  // the baseline a replayed step must equal bit for bit.
  const bool replay_disabled = std::getenv("NNKIT_GRAPHS_NO_REPLAY") != nullptr;
  int64_t graph_step = -1, graph_update = -1;
  std::vector<int64_t> graph_key;  // loss scale bits + valid targets per micro-batch
  auto release_graphs = [&] {
    if (graph_step >= 0) backend->release_graph(graph_step);
    if (graph_update >= 0) backend->release_graph(graph_update);
    graph_step = graph_update = -1;
  };

  while (state.step < tc.steps) {
    const int64_t step = state.step;
    const float loss_scale = scaler.scale();
    inject_rank_fault(rank, step + 1);
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      loader.next_train_batch(tc.batch_size, inputs, targets);
      take_rank_rows(inputs, tc.seq_len, rank, ranks, rank_inputs);
      take_rank_rows(targets, tc.seq_len, rank, ranks, rank_targets);
      model.stage_batch(static_cast<size_t>(micro), rank_inputs, rank_targets, local_batch,
                        tc.seq_len);
    }
    // Forward, backward and the squared gradient norm: device work only (recordable).
    auto forward_backward = [&] {
      backend->fill(loss_sum, 0.0f);
      for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
        model.forward_loss_staged(static_cast<size_t>(micro), tc.activation_checkpointing, loss_sum,
                                  1.0f / static_cast<float>(tc.grad_accum));
        const float scale = loss_scale / static_cast<float>(tc.grad_accum * ranks);
        if (overlap && micro == tc.grad_accum - 1) {
          gradients.begin_overlap();
          model.backward(scale, gradients_ready);
        } else {
          model.backward(scale);
        }
      }
      if (distributed) {
        // Each rank's loss and gradients are its share's: the sums over ranks are the global
        // batch's (the loss after dividing by the ranks, each having taken as many rows).
        gradients.reduce();  // with overlap: waits for the buckets started during backward
        comm->all_reduce_sum(*backend, loss_sum);
        backend->scale(loss_sum, 1.0f / static_cast<float>(ranks));
      }
      gradients.squared_norm(norm_accumulator);
    };
    float host_loss = 0.0f, host_sum_squares = 0.0f;
    auto read_loss_and_norm = [&] {
      backend->copy_to_host_async(&host_loss, loss_sum);
      backend->copy_to_host_async(&host_sum_squares, norm_accumulator);
    };
    const double lr = optimizer->base_lr() * schedule->factor(step, tc.steps);
    const int64_t optimizer_steps_before = optimizer->step_count();
    const float max_norm = static_cast<float>(tc.grad_clip);
    std::vector<int64_t> key = {static_cast<int64_t>(std::bit_cast<uint32_t>(loss_scale))};
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      key.push_back(model.staged_valid_targets(static_cast<size_t>(micro)));
    }
    const bool recordable = graphs_possible && !nan_steps.count(step) && !replay_disabled &&
                            step > summary.first_step;  // one ordinary step first
    if (recordable && graph_step >= 0 && key != graph_key) release_graphs();
    if (recordable && graph_step < 0) {
      // Record (nothing runs while recording), then replay below.
      try {
        if (backend->begin_capture()) {
          forward_backward();
          graph_step = backend->end_capture();
          if (!backend->begin_capture()) throw Error("train", "the backend stopped recording");
          optimizer->enqueue_device_step(*backend, params, norm_accumulator, max_norm);
          graph_update = backend->end_capture();
          graph_key = key;
          log->info("training step recorded in a CUDA Graph (replayed from step {})", step + 1);
        } else {
          graphs_possible = false;  // the backend does not capture (or cuda_graphs is off)
          model.set_static_shapes(false);
        }
      } catch (const Error& e) {
        backend->abort_capture();
        release_graphs();
        graphs_possible = false;
        model.set_static_shapes(false);
        log->warn(
            "could not record the training step in a CUDA Graph ({}); running it "
            "uncaptured",
            e.what());
      }
    }
    if (recordable && graph_step >= 0) {
      optimizer->prepare_device_step(*backend, params, lr, 1.0f / loss_scale);
      backend->replay(graph_step);
      read_loss_and_norm();
      backend->replay(graph_update);
    } else {
      forward_backward();
      // Test hook: a poisoned norm makes the device skip the update like a real overflow would.
      if (nan_steps.count(step)) backend->fill(norm_accumulator, std::nanf(""));
      read_loss_and_norm();
      optimizer->step_on_device(*backend, shards ? shards->owned() : params, lr, norm_accumulator,
                                max_norm, 1.0f / loss_scale);
    }
    backend->await_host_copies();
    if (distributed && step == summary.first_step) {
      log->info(
          "gradients summed in {} bucket(s) over every rank; {} of them started while the "
          "backward pass was still running (parallel.overlap: {})",
          gradients.bucket_count(), gradients.started_during_backward(), overlap);
    }
    double loss = nan_steps.count(step) ? std::nan("") : static_cast<double>(host_loss);
    const double grad_norm =
        std::sqrt(static_cast<double>(host_sum_squares)) / static_cast<double>(loss_scale);

    if (!std::isfinite(host_sum_squares)) {
      // The device skipped the update (parameters and moments untouched); undo the count.
      optimizer->set_step_count(optimizer_steps_before);
      const std::string culprit = nan_steps.count(step) ? "" : first_non_finite_gradient();
      model.zero_grads();
      nlohmann::json skipped{{"step", step + 1}, {"skipped", true}};
      if (fp16) {
        scaler.update(true);
        skipped["loss_scale"] = scaler.scale();
        skipped["skipped_steps"] = scaler.skipped_steps();
      }
      metrics << skipped.dump() << "\n";
      metrics.flush();
      const std::string where = culprit.empty() ? "" : " (first in " + culprit + ")";
      if (fp16 && scaler.scale() >= 1.0f) {
        // An fp16 overflow: the scaler halves the scale and the step is retried on new data.
        log->info("step {}: fp16 gradients overflowed{}; loss scale lowered to {}", step + 1, where,
                  scaler.scale());
      } else {
        ++state.bad_steps_in_a_row;
        log->warn(
            "step {}: non-finite loss ({}) or gradient norm ({}){}; update skipped ({} in "
            "a row)",
            step + 1, loss, grad_norm, where, state.bad_steps_in_a_row);
        if (state.bad_steps_in_a_row >= tc.max_bad_steps) {
          throw Error("train",
                      std::to_string(state.bad_steps_in_a_row) +
                          " consecutive steps had a non-finite loss or gradient (last at step " +
                          std::to_string(step + 1) + where +
                          "); the run is diverging. Lower train.optimizer.lr, raise "
                          "train.schedule.warmup_steps or tighten train.grad_clip, then "
                          "--resume from the last checkpoint");
        }
      }
      ++state.step;  // the data was consumed; the step counts as taken but changes nothing
      if (end_of_step()) break;
      continue;
    }
    state.bad_steps_in_a_row = 0;
    if (shards) shards->share_updated_parameters();
    scaler.update(false);
    ++state.step;
    state.tokens_seen += tokens_per_step;
    window_tokens += tokens_per_step;

    const auto now = std::chrono::steady_clock::now();
    const double window_seconds = std::chrono::duration<double>(now - window_start).count();
    if (window_seconds > 0.5 || tokens_per_second == 0.0) {
      tokens_per_second = static_cast<double>(window_tokens) / std::max(window_seconds, 1e-9);
      window_start = now;
      window_tokens = 0;
    }
    nlohmann::json line{{"step", state.step},
                        {"loss", loss},
                        {"lr", lr},
                        {"grad_norm", grad_norm},
                        {"tokens_per_s", tokens_per_second},
                        {"tokens", state.tokens_seen},
                        {"elapsed_s", std::chrono::duration<double>(now - run_start).count()}};
    if (fp16) line["loss_scale"] = loss_scale;
    const bool eval_now =
        (tc.eval_every > 0 && state.step % tc.eval_every == 0) || state.step == tc.steps;
    const bool logged_step =
        state.step % tc.log_every == 0 || eval_now || state.step == summary.first_step + 1;
    // The auxiliary losses and the expert load live on the device: read on logged steps.
    double aux = std::nan("");
    if (logged_step) {
      // One read per MoE layer: the weighted sum comes from the same statistics.
      auto stats = model.aux_stats();
      if (distributed && !stats.empty()) {
        // Each rank's losses are over its own tokens (with the load f_i of the global batch):
        // their mean over the ranks is the one-rank value, and so is the dropped share's.
        std::vector<double> sums;
        for (const AuxStats& st : stats) {
          sums.insert(sums.end(), {st.aux_loss, st.z_loss, st.dropped_fraction});
        }
        comm->all_reduce_sum_host(sums);
        for (size_t i = 0; i < stats.size(); ++i) {
          stats[i].aux_loss = sums[3 * i] / ranks;
          stats[i].z_loss = sums[3 * i + 1] / ranks;
          stats[i].dropped_fraction = sums[3 * i + 2] / ranks;
        }
      }
      aux = 0.0;
      for (const AuxStats& s : stats) aux += s.aux_weight * s.aux_loss + s.z_weight * s.z_loss;
      line["aux_loss"] = aux;
      if (!stats.empty()) {
        nlohmann::json load = nlohmann::json::array(), aux_layers = nlohmann::json::array(),
                       dropped = nlohmann::json::array();
        for (const AuxStats& s : stats) {
          load.push_back(s.expert_fraction);
          aux_layers.push_back(s.aux_loss);
          dropped.push_back(s.dropped_fraction);
        }
        line["expert_load"] = load;
        line["aux_loss_per_layer"] = aux_layers;
        line["dropped_fraction"] = dropped;
      }
    }
    summary.last_loss = loss;
    if (eval_now) {
      summary.last_val_loss = validation_loss(model, loader, tc.batch_size, tc.eval_batches, *comm);
      line["val_loss"] = summary.last_val_loss;
    }
    metrics << line.dump() << "\n";
    metrics.flush();

    const double remaining = static_cast<double>(tc.steps - state.step) *
                             static_cast<double>(tokens_per_step) /
                             std::max(tokens_per_second, 1e-9);
    if (request.progress_bar && writer) {
      const int width = 24;
      const int filled = static_cast<int>(width * state.step / tc.steps);
      std::string bar(static_cast<size_t>(filled), '=');
      bar.resize(static_cast<size_t>(width), ' ');
      std::fprintf(stderr, "\r step %lld/%lld [%s] loss %.4f lr %.2e %.0f tok/s ETA %s   ",
                   static_cast<long long>(state.step), static_cast<long long>(tc.steps),
                   bar.c_str(), loss, lr, tokens_per_second, format_duration(remaining).c_str());
      if (eval_now)
        std::fprintf(stderr, "\n val_loss %.4f at step %lld\n", summary.last_val_loss,
                     static_cast<long long>(state.step));
      std::fflush(stderr);
    } else if (logged_step) {
      log->info(
          "step {}/{} loss {:.4f} aux {:.4f} lr {:.2e} grad_norm {:.3f} {:.0f} tok/s ETA {}{}",
          state.step, tc.steps, loss, aux, lr, grad_norm, tokens_per_second,
          format_duration(remaining),
          eval_now ? fmt::format(" val_loss {:.4f}", summary.last_val_loss) : "");
    }
    if (end_of_step()) break;
  }
  if (!summary.interrupted && tc.final_checkpoint) save("final");
  summary.last_step = state.step;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  summary.tokens_per_second =
      static_cast<double>((state.step - summary.first_step) * tokens_per_step) /
      std::max(elapsed, 1e-9);
  return summary;
}

}  // namespace

TrainSummary train(const TrainRequest& request) {
  std::shared_ptr<Communicator> comm;
  try {
    return train_rank(request, comm);
  } catch (const std::exception& e) {
    // The other ranks would wait for this one in their next collective until it times out.
    if (comm && comm->size() > 1) comm->abort(e.what());
    throw;
  }
}

}  // namespace nnkit
