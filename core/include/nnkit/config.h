// Purpose: the YAML model/run description. ConfigDocument holds the parsed YAML (the file merged
// with the files it includes, plus dotted command-line overrides, with ${...} references resolved
// against the result) and remembers where every value came from; resolve_config() validates
// it against the core schema and each named plugin's declared options and returns a typed
// RunConfig. Errors are ConfigError with file:line:col and, for unknown keys, the nearest valid
// key ("did you mean 'top_k'?").
// Slots decide plugin kinds: model.norm -> norm/*, model.attention -> attention/*,
// model.moe.router / model.moe.experts -> moe/*, model.ffn -> ffn/*, backend -> backend/*,
// tokenizer -> tokenizer/*, train.optimizer -> optim/*, train.schedule -> schedule/*,
// decode[i] -> decode/*.
// Ownership: ConfigDocument owns its YAML tree (yaml-cpp stays behind a pimpl); RunConfig is a
// plain value. Thread-safety: a ConfigDocument is used by one thread at a time (its const
// methods resolve references on first use).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/export.h"
#include "nnkit/options.h"

namespace nnkit {

class Registry;

class NNKIT_API ConfigDocument {
 public:
  // Reads the file and the files its `include:` names (relative to the including file, merged in
  // order, the including file's keys last). Throws ConfigError (missing file, YAML syntax error,
  // duplicate key, merge key, nesting deeper than 64 levels, each with file:line:col; a missing
  // or cyclic include, with the include's position).
  static ConfigDocument load_file(const std::filesystem::path& path);
  // The same from text; relative includes resolve against the working directory.
  static ConfigDocument parse(const std::string& text, const std::string& source_name);
  ConfigDocument(ConfigDocument&&) noexcept;
  ConfigDocument& operator=(ConfigDocument&&) noexcept;
  ~ConfigDocument();

  // "model.n_layers=2"; the value is parsed as YAML (so lists and maps work) under the same
  // rules as the file (no duplicate or merge keys, bounded nesting). `argument_number`, when
  // > 0, is the override's position on the command line, named in messages ("command-line
  // override 'model.n_layers=abc' (argument 3)"). Throws UsageError for a malformed assignment
  // (no '=', an empty key segment, a value that is not valid YAML, an `include` key).
  // ${...} references are resolved after the last override, so they see overridden values; the
  // methods below (and resolve_config) throw ConfigError for a reference that names nothing or
  // a reference cycle.
  void apply_override(const std::string& assignment, int argument_number = 0);
  // The `plugin_paths:` list (relative paths resolve against the folder of the file that sets
  // them: the config file, or the included file).
  std::vector<std::filesystem::path> plugin_paths() const;
  // The `plugin_prefer:` mapping, "kind/name" -> library file (relative paths resolve like
  // plugin_paths): which library provides a kind/name that several provide.
  std::map<std::string, std::filesystem::path> plugin_prefer() const;
  const std::string& source_name() const;
  // The document as YAML text (overrides applied, references resolved, vars: dropped).
  std::string dump() const;
  // Where the value at dotted `path` ("model.attention.n_heads", "decode[0].k") came from:
  // "configs/base.yaml:7", "command-line override 'model.n_layers=2' (argument 3)", or "default"
  // when the document does not set it. A value a ${...} reference copied names the reference:
  // "configs/base.yaml:4, via ${vars.dim} at configs/exp.yaml:9".
  std::string origin_of(const std::string& path) const;

  struct Impl;
  // The resolved document (references resolved on first use after a change).
  const Impl& impl() const;

 private:
  ConfigDocument();
  std::unique_ptr<Impl> impl_;
};

// A slot filled by a plugin: which one, with its validated options.
struct PluginChoice {
  std::string kind;
  std::string name;
  Options options;
  std::string id() const { return kind + "/" + name; }
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_dim = 0;
  int64_t n_layers = 0;
  int64_t max_seq_len = 0;
  double init_std = 0.02;
  PluginChoice norm;
  PluginChoice attention;
  bool is_moe = false;
  PluginChoice router;   // moe only
  PluginChoice experts;  // moe only
  PluginChoice ffn;      // dense only
};

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 8;
  int64_t seq_len = 256;
  int64_t grad_accum = 1;
  int64_t checkpoint_every = 100;
  int64_t eval_every = 100;
  int64_t eval_batches = 8;
  int64_t log_every = 10;
  double grad_clip = 1.0;  // 0 disables clipping
  bool activation_checkpointing = false;
  bool final_checkpoint = true;  // checkpoint when training ends (benchmarks turn it off)
  int64_t max_bad_steps = 5;     // consecutive non-finite losses before training stops
  double val_fraction = 0.05;
  std::string data;  // token file; empty = the CLI's --data or the demo corpus
  PluginChoice optimizer;
  PluginChoice schedule;
};

// Data- and expert-parallel training (docs/parallel.md). The job has data x expert ranks.
struct ParallelConfig {
  int64_t data = 1;    // replicas that each take train.batch_size / data rows of every batch
  int64_t expert = 1;  // ranks the experts of each MoE layer are sharded over
  int64_t zero = 0;    // ZeRO stage: 0 (every rank holds the optimizer state), 1 (sharded)
  PluginChoice comm;   // comm/* plugin; empty name: built-in single-process communicator
  // Start each gradient bucket's all-reduce during backward, as soon as its gradients are
  // final (appended in ABI 5); false: all of them after backward. The same bits either way.
  bool overlap = true;
  int64_t world_size() const { return data * expert; }
  bool is_default() const {
    return data == 1 && expert == 1 && zero == 0 && comm.name.empty() && overlap;
  }
};

struct RunConfig {
  int64_t seed = 1234;
  ModelConfig model;
  PluginChoice backend;
  PluginChoice tokenizer;
  TrainConfig train;
  std::vector<PluginChoice> decode;
  std::vector<std::filesystem::path> plugin_paths;
  std::map<std::string, std::filesystem::path> plugin_prefer;  // appended in ABI 3
  std::string source_name;
  ParallelConfig parallel;  // appended in ABI 4

  // Every resolved value, defaults included, as YAML (stored in checkpoints).
  NNKIT_API std::string to_yaml() const;
};

// Validates the document against the core schema and the plugins in `registry`.
NNKIT_API RunConfig resolve_config(const ConfigDocument& document, const Registry& registry);

// One value of a resolved configuration and where it came from (`nnkit validate --show-origin`).
struct ValueOrigin {
  std::string path;    // "model.attention.n_heads", "decode[0].k"
  std::string value;   // as YAML text: "4", "null", "[]"
  std::string origin;  // ConfigDocument::origin_of(path)
};

// Every value of config.to_yaml(), in its order, with its origin in `document` (the document
// `config` was resolved from).
NNKIT_API std::vector<ValueOrigin> value_origins(const RunConfig& config,
                                                 const ConfigDocument& document);

// Levenshtein distance; used for "did you mean" suggestions.
NNKIT_API size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace nnkit
