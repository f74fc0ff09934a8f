// Purpose: validation of a ConfigDocument against the core schema and the plugins' declared
// options, producing a typed RunConfig (see config.h for the slot -> plugin-kind rules).
#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>

#include "config/document_impl.h"
#include "config/references.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"
#include "nnkit/registry.h"

namespace nnkit {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitution = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, substitution});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

namespace {

using Impl = ConfigDocument::Impl;

std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string node_kind(const YAML::Node& node) {
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  if (node.IsNull()) return "null";
  return "'" + node.Scalar() + "'";
}

[[noreturn]] void fail_at(const std::string& component, const std::string& message,
                          const SourceLocation& where) {
  throw ConfigError(component, message + " (at " + where.str() + ")");
}

// Rejects keys of `node` that are neither first segments of `names` nor in `extra`; recurses into
// nested maps declared by dotted names ("rope.base").
void check_keys(const Impl& doc, const YAML::Node& node, const std::string& path,
                const std::string& component, const std::vector<std::string>& names,
                const std::set<std::string>& extra) {
  std::set<std::string> allowed(extra.begin(), extra.end());
  for (const std::string& n : names) allowed.insert(n.substr(0, n.find('.')));
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = it->first.Scalar();
    if (allowed.count(key) == 0) {
      std::string best;
      size_t best_distance = SIZE_MAX;
      for (const std::string& candidate : allowed) {
        const size_t d = edit_distance(key, candidate);
        if (d < best_distance) best_distance = d, best = candidate;
      }
      std::string message =
          "unknown key '" + key + "' in " + (path.empty() ? "the top level" : path);
      if (!best.empty() && best_distance <= std::max<size_t>(2, key.size() / 3)) {
        message += "; did you mean '" + best + "'?";
      } else if (!allowed.empty()) {
        message += "; valid keys:";
        for (const std::string& a : allowed) message += " " + a;
      }
      fail_at(component, message, doc.location(it->first, join(path, key)));
    }
    std::vector<std::string> nested;
    for (const std::string& n : names) {
      if (n.rfind(key + ".", 0) == 0) nested.push_back(n.substr(key.size() + 1));
    }
    if (!nested.empty()) {
      if (!it->second.IsMap()) {
        fail_at(component, join(path, key) + " must be a mapping, got " + node_kind(it->second),
                doc.location(it->second, join(path, key)));
      }
      check_keys(doc, it->second, join(path, key), component, nested, {});
    }
  }
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string format_number(double value) {
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

Options::Value parse_value(const YAML::Node& node, const OptionSpec& spec, const std::string& key,
                           const std::string& component, const SourceLocation& where) {
  Options::Value v;
  v.type = spec.type;
  v.location = where;
  if (node.IsNull()) {
    if (spec.default_value != "null") {
      fail_at(component, key + " must not be null; expected " + option_type_name(spec.type), where);
    }
    v.is_null = true;
    return v;
  }
  if (!node.IsScalar()) {
    fail_at(
        component,
        key + " expects " + std::string(option_type_name(spec.type)) + ", got " + node_kind(node),
        where);
  }
  const std::string text = node.Scalar();
  auto wrong = [&]() {
    fail_at(component,
            key + " expects " + std::string(option_type_name(spec.type)) + ", got '" + text + "'",
            where);
  };
  double number = 0.0;
  switch (spec.type) {
    case OptionType::kInt: {
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v.int_value);
      if (ec != std::errc() || ptr != text.data() + text.size()) wrong();
      number = static_cast<double>(v.int_value);
      break;
    }
    case OptionType::kFloat: {
      char* end = nullptr;
      v.float_value = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v.float_value)) {
        wrong();
      }
      number = v.float_value;
      break;
    }
    case OptionType::kBool: {
      const std::string t = lower(text);
      if (t == "true" || t == "yes" || t == "on")
        v.bool_value = true;
      else if (t == "false" || t == "no" || t == "off")
        v.bool_value = false;
      else
        wrong();
      break;
    }
    case OptionType::kString:
      v.string_value = text;
      break;
  }
  if (spec.type == OptionType::kInt || spec.type == OptionType::kFloat) {
    const bool below = spec.min && number < *spec.min;
    const bool above = spec.max && number > *spec.max;
    if (below || above) {
      std::string range;
      if (spec.min && spec.max) {
        range = "between " + format_number(*spec.min) + " and " + format_number(*spec.max);
      } else if (spec.min) {
        range = ">= " + format_number(*spec.min);
      } else {
        range = "<= " + format_number(*spec.max);
      }
      fail_at(component, key + " = " + text + " is out of range; it must be " + range, where);
    }
  }
  return v;
}

// Reads every declared option of the map `node` (defaults for absent ones).
// `library` names the plugin's file in messages that blame the plugin.
Options read_options(const Impl& doc, const YAML::Node& node, const std::string& path,
                     const std::string& component, const std::vector<OptionSpec>& specs,
                     const std::set<std::string>& extra, const std::string& library = "") {
  const SourceLocation map_location = doc.location(node, path);
  if (node.IsDefined() && !node.IsNull() && !node.IsMap()) {
    fail_at(component, path + " must be a mapping, got " + node_kind(node), map_location);
  }
  std::vector<std::string> names;
  for (const OptionSpec& s : specs) names.push_back(s.name);
  if (node.IsDefined() && node.IsMap()) check_keys(doc, node, path, component, names, extra);

  Options options(component, path, map_location);
  for (const OptionSpec& spec : specs) {
    // reset() throws on an absent (invalid) node, so only bind to a real map.
    bool present = node.IsDefined() && node.IsMap();
    YAML::Node value;
    if (present) value.reset(node);
    size_t start = 0;
    while (present) {
      const size_t dot = spec.name.find('.', start);
      const std::string segment = spec.name.substr(start, dot - start);
      YAML::Node child = value[segment];
      if (!child.IsDefined()) {
        present = false;
        break;
      }
      value.reset(child);
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    const std::string key = join(path, spec.name);
    if (present) {
      options.set(spec.name, parse_value(value, spec, key, component, doc.location(value, key)));
    } else if (spec.default_value.empty()) {
      std::string message = "missing required key '" + key + "'";
      if (!spec.help.empty()) message += " (" + spec.help + ")";
      fail_at(component, message, map_location);
    } else {
      // A default the plugin declared outside its own range (or of the wrong type) is the
      // plugin's bug: say so instead of pointing at the user's YAML.
      if (const std::string problem = declared_default_problem(spec); !problem.empty()) {
        throw PluginError(component, "the plugin declares option '" + spec.name + "' with " +
                                         problem + "; this is a bug in the plugin" +
                                         (library.empty() ? "" : " (" + library + ")") +
                                         ", not in the config (set " + key +
                                         " explicitly to work around it)");
      }
      options.set(spec.name, parse_value(YAML::Load(spec.default_value), spec, key, component,
                                         SourceLocation{"<default>", 0, 0}));
    }
  }
  return options;
}

OptionSpec int_spec(const std::string& name, const std::string& def, double min,
                    const std::string& help) {
  return OptionSpec{name, OptionType::kInt, def, min, std::nullopt, help};
}

const std::vector<OptionSpec>& model_specs() {
  static const std::vector<OptionSpec> specs = {
      int_spec("vocab_size", "", 1, "tokens in the vocabulary"),
      int_spec("hidden_dim", "", 1, "model width"),
      int_spec("n_layers", "", 1, "transformer blocks"),
      int_spec("max_seq_len", "", 1, "training context length"),
      {"init_std", OptionType::kFloat, "0.02", 0.0, 1.0, "std of Normal init for weights"},
  };
  return specs;
}

const std::vector<OptionSpec>& train_specs() {
  static const std::vector<OptionSpec> specs = {
      int_spec("steps", "1000", 1, "optimizer steps"),
      int_spec("batch_size", "8", 1, "sequences per micro-batch"),
      int_spec("seq_len", "256", 1, "tokens per sequence"),
      int_spec("grad_accum", "1", 1, "micro-batches per optimizer step"),
      int_spec("checkpoint_every", "100", 0, "steps between checkpoints (0: only at the end)"),
      int_spec("eval_every", "100", 0, "steps between validation passes (0: only at the end)"),
      int_spec("eval_batches", "8", 1, "validation batches per pass"),
      int_spec("log_every", "10", 1, "steps between log lines"),
      {"grad_clip", OptionType::kFloat, "1.0", 0.0, std::nullopt, "global-norm clip (0: off)"},
      {"activation_checkpointing", OptionType::kBool, "false", {}, {}, "recompute blocks"},
      {"final_checkpoint",
       OptionType::kBool,
       "true",
       {},
       {},
       "write a checkpoint when training ends (false for benchmarks of big models)"},
      int_spec("max_bad_steps", "5", 1, "consecutive non-finite losses before stopping"),
      {"val_fraction", OptionType::kFloat, "0.05", 0.0, 0.5, "held-out tail of the data"},
      {"data", OptionType::kString, "null", {}, {}, "token file (nnkit data prepare)"},
  };
  return specs;
}

// A value as one line of YAML, for log lines.
std::string yaml_text(const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  YAML::Emitter out;
  out << YAML::Flow << node;
  return out.c_str();
}

// The plugin the file itself (before overrides) put in the top-level slot `path`: its `type`, or
// `default_type` when the file leaves the slot or its type out; "" when the file's slot is not a
// mapping (resolution reports that, if the overrides did not replace it).
std::string file_type_of(const Impl& doc, const std::string& path,
                         const std::string& default_type) {
  const YAML::Node& file_root = doc.file_root;
  const YAML::Node slot = file_root[path];
  if (!slot.IsDefined() || slot.IsNull()) return default_type;
  if (!slot.IsMap()) return "";
  const YAML::Node type = slot["type"];
  if (!type.IsDefined()) return default_type;
  return type.IsScalar() ? type.Scalar() : "";
}

// A slot whose plugin an override switched (`backend.type=cuda` on a file written for the CPU)
// still holds the file's options for the previous plugin. Each one the new plugin does not
// declare is dropped, with one log line, so that a file stays usable with another backend.
// Options typed on the command line are kept whatever they are: they were written for the new
// plugin, and one it does not declare is still an unknown key.
std::set<std::string> options_left_behind(const Impl& doc, const YAML::Node& node,
                                          const std::string& path, const PluginInfo& now,
                                          const std::string& before_id) {
  std::set<std::string> dropped;
  if (!node.IsDefined() || !node.IsMap()) return dropped;
  std::set<std::string> declared = {"type"};
  for (const OptionSpec& spec : now.options) {
    declared.insert(spec.name.substr(0, spec.name.find('.')));
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = it->first.Scalar();
    const std::string key_path = join(path, key);
    if (declared.count(key) != 0 || doc.override_for(key_path) != nullptr) continue;
    logger()->info("{}={} dropped: {} has no option '{}' (set for {} at {})", key_path,
                   yaml_text(it->second), now.id(), key, before_id,
                   doc.location(it->first, key_path).str());
    dropped.insert(key);
  }
  return dropped;
}

// `file_type`, when given, is the plugin the file chose for this slot (see file_type_of); when
// the overrides chose another, options_left_behind applies.
PluginChoice resolve_slot(const Impl& doc, const Registry& registry, const YAML::Node& node,
                          const std::string& path, const std::string& kind,
                          const std::string& default_type, const std::string* role = nullptr,
                          const std::string* file_type = nullptr) {
  std::string type = default_type;
  SourceLocation type_location{"<default>", 0, 0};
  if (node.IsDefined() && !node.IsNull()) {
    if (!node.IsMap()) {
      fail_at("config", path + " must be a mapping with a 'type' key, got " + node_kind(node),
              doc.location(node, path));
    }
    const YAML::Node type_node = node["type"];
    if (type_node.IsDefined()) {
      if (!type_node.IsScalar()) {
        fail_at("config", path + ".type must be a plugin name",
                doc.location(type_node, path + ".type"));
      }
      type = type_node.Scalar();
      type_location = doc.location(type_node, path + ".type");
    }
  }
  if (type.empty()) {
    fail_at("config",
            "missing required key '" + path + ".type' (which " + kind +
                " plugin to use; `nnkit plugins` lists them)",
            doc.location(node, path));
  }
  if (!is_plain_plugin_name(type)) {
    fail_at("config",
            path + ".type '" + type +
                "' is not a plugin name (plugin names have no path separators or '..'; load a "
                "library with --plugin-path or plugin_paths:)",
            type_location);
  }
  const PluginInfo& info = registry.require(kind, type, path + ".type at " + type_location.str());
  if (role != nullptr) {
    // model.moe.router and model.moe.experts both take moe/* plugins: a plugin of the other
    // role would otherwise fail on the first option it does not know.
    const std::string actual = registry.role_of(info);
    if (!actual.empty() && actual != *role) {
      std::string message =
          path + ".type: " + type + " is " +
          (actual == "router" ? "a router" : "an experts plugin") + " (" + info.id() + " from " +
          info.path + "), not " + (*role == "router" ? "a router" : "an experts plugin") +
          "; put it in " + (actual == "router" ? "model.moe.router" : "model.moe.experts");
      const std::vector<std::string> fitting = registry.names_with_role(kind, *role);
      if (!fitting.empty()) {
        message += ". Available " + *role + ":";
        for (const std::string& n : fitting) message += " " + n;
      }
      fail_at("config", message, type_location);
    }
  }
  std::set<std::string> ignored = {"type"};
  if (file_type != nullptr && !file_type->empty() && *file_type != type) {
    ignored.merge(options_left_behind(doc, node, path, info, kind + "/" + *file_type));
  }
  PluginChoice choice;
  choice.kind = kind;
  choice.name = type;
  choice.options = read_options(doc, node, path, info.id(), info.options, ignored, info.path);
  return choice;
}

// A check that relates several values (n_heads and n_kv_heads, seq_len and max_seq_len) reports
// at one of them. When another one came from a command-line override, the file position alone
// sends the user to a line that did not change: name the override too.
[[noreturn]] void rethrow_naming_overrides(const ConfigError& error,
                                           const std::vector<const Options*>& involved) {
  std::string message = error.detail();
  std::set<std::string> named;
  for (const Options* options : involved) {
    for (const auto& [name, value] : options->values()) {
      const std::string& origin = value.location.file;
      if (origin.rfind("command-line override", 0) != 0) continue;
      if (message.find(origin) != std::string::npos || !named.insert(origin).second) continue;
      message += "; " + join(options->path(), name) + " was set by " + origin;
    }
  }
  throw ConfigError(error.component(), message);
}

// The `parallel:` section (docs/parallel.md). Checks what the config alone can tell; the world
// size is checked against the launch by the trainer.
ParallelConfig resolve_parallel(const Impl& doc, const Registry& registry, const YAML::Node& node,
                                const RunConfig& cfg) {
  static const std::vector<OptionSpec> specs = {
      int_spec("data", "1", 1, "data-parallel replicas (each takes batch_size / data rows)"),
      int_spec("expert", "1", 1, "ranks the experts of every MoE layer are sharded over"),
      {"zero", OptionType::kInt, "0", 0.0, 1.0,
       "ZeRO stage: 0 (optimizer state on every rank) or 1 (sharded)"},
      {"overlap",
       OptionType::kBool,
       "true",
       {},
       {},
       "start each gradient bucket's all-reduce during backward, once its gradients are final"},
  };
  const Options po = read_options(doc, node, "parallel", "config", specs, {"comm"});
  ParallelConfig p;
  p.data = po.get_int("data");
  p.expert = po.get_int("expert");
  p.zero = po.get_int("zero");
  p.overlap = po.get_bool("overlap");
  // The backend decides which transport fits when the config does not name one.
  const std::string& backend = cfg.backend.name;
  const std::string fitting = backend == "cuda" ? "nccl" : backend == "cpu" ? "mpi" : "";
  const YAML::Node comm = node.IsDefined() && node.IsMap() ? node["comm"] : YAML::Node();
  if (comm.IsDefined() && !comm.IsNull()) {
    p.comm = resolve_slot(doc, registry, comm, "parallel.comm", "comm", fitting);
  } else if (p.world_size() > 1) {
    if (fitting.empty()) {
      po.fail("data", "needs a communicator for backend '" + backend +
                          "': set parallel.comm.type (`nnkit plugins` lists the comm plugins)");
    }
    p.comm = resolve_slot(doc, registry, YAML::Node(), "parallel.comm", "comm", fitting);
  }
  if (p.expert > 1) {
    const ModelConfig& m = cfg.model;
    if (!m.is_moe) {
      po.fail("expert", "is " + std::to_string(p.expert) +
                            " but the model has no MoE layers (model.ffn); set parallel.expert=1");
    }
    const int64_t n_experts =
        m.experts.options.has("n_experts") ? m.experts.options.get_int("n_experts") : 0;
    if (n_experts % p.expert != 0) {
      po.fail("expert", "(" + std::to_string(p.expert) +
                            ") does not divide model.moe.experts.n_experts (" +
                            std::to_string(n_experts) +
                            "); every expert rank holds the same number of experts");
    }
  }
  if (cfg.train.batch_size % p.data != 0) {
    po.fail("data", "(" + std::to_string(p.data) + ") does not divide train.batch_size (" +
                        std::to_string(cfg.train.batch_size) +
                        "), the global batch every rank takes an equal share of");
  }
  // Expert ranks take their own rows too (only the experts are sharded among them).
  if (p.expert > 1 && cfg.train.batch_size % p.world_size() != 0) {
    po.fail("expert", "(" + std::to_string(p.expert) + ") x parallel.data (" +
                          std::to_string(p.data) + ") = " + std::to_string(p.world_size()) +
                          " ranks do not divide train.batch_size (" +
                          std::to_string(cfg.train.batch_size) +
                          "), the global batch every rank takes an equal share of");
  }
  if (p.expert > 1 && p.zero == 1) {
    po.fail("zero", "is 1 with parallel.expert = " + std::to_string(p.expert) +
                        ": ZeRO-1 does not shard the optimizer state of sharded experts yet; set "
                        "parallel.zero=0 (the experts' state is already split over the expert "
                        "ranks)");
  }
  return p;
}

// Creates each configured component once and drops it, so that checks only a plugin can make
// (n_heads divisible by n_kv_heads, top_k <= n_experts, temperature > 0, ...) fail at config
// time with their YAML position. Layers allocate nothing when created; backends are skipped
// because creating one may claim a device.
void probe_plugins(const RunConfig& cfg, const Registry& registry) {
  const ModelConfig& m = cfg.model;
  ModelDims dims{m.vocab_size, m.hidden_dim, m.n_layers, m.max_seq_len, 0, 0};
  auto probe = [&](const PluginChoice& c, const ModelDims& d) {
    try {
      registry.create<Component>(c.kind, c.name, CreateArgs{c.options, d, nullptr});
    } catch (const ConfigError& e) {
      rethrow_naming_overrides(e, {&c.options});
    }
  };
  probe(m.norm, dims);
  probe(m.attention, dims);
  if (m.is_moe) {
    probe(m.experts, dims);
    const Options& experts = m.experts.options;
    ModelDims router_dims = dims;
    router_dims.n_experts = experts.has("n_experts") ? experts.get_int("n_experts") : 0;
    probe(m.router, router_dims);
  } else {
    probe(m.ffn, dims);
  }
  probe(cfg.tokenizer, dims);
  probe(cfg.train.optimizer, dims);
  probe(cfg.train.schedule, dims);
  for (const PluginChoice& d : cfg.decode) probe(d, dims);
}

}  // namespace

RunConfig resolve_config(const ConfigDocument& document, const Registry& registry) {
  const Impl& doc = document.impl();
  const YAML::Node& root = doc.root;
  check_keys(doc, root, "", "config", {},
             {"seed", "model", "backend", "tokenizer", "train", "decode", "plugin_paths",
              "plugin_prefer", "parallel"});
  RunConfig cfg;
  cfg.source_name = doc.source_name;
  cfg.plugin_paths = document.plugin_paths();
  cfg.plugin_prefer = document.plugin_prefer();

  const Options top =
      read_options(doc, root, "", "config", {int_spec("seed", "1234", 0, "random seed")},
                   {"model", "backend", "tokenizer", "train", "decode", "plugin_paths",
                    "plugin_prefer", "parallel"});
  cfg.seed = top.get_int("seed");

  // ---- model
  const YAML::Node model = root["model"];
  if (!model.IsDefined() || !model.IsMap()) {
    fail_at("config", "missing the 'model' section (see configs/tiny.yaml for the schema)",
            doc.location(root, ""));
  }
  const Options mo = read_options(doc, model, "model", "config", model_specs(),
                                  {"norm", "attention", "moe", "ffn"});
  ModelConfig& m = cfg.model;
  m.vocab_size = mo.get_int("vocab_size");
  m.hidden_dim = mo.get_int("hidden_dim");
  m.n_layers = mo.get_int("n_layers");
  m.max_seq_len = mo.get_int("max_seq_len");
  m.init_std = mo.get_float("init_std");
  m.norm = resolve_slot(doc, registry, model["norm"], "model.norm", "norm", "rmsnorm");
  if (!model["attention"].IsDefined()) {
    fail_at("config", "missing required key 'model.attention'", doc.location(model, "model"));
  }
  m.attention = resolve_slot(doc, registry, model["attention"], "model.attention", "attention", "");
  const bool has_moe = model["moe"].IsDefined() && !model["moe"].IsNull();
  const bool has_ffn = model["ffn"].IsDefined() && !model["ffn"].IsNull();
  if (has_moe == has_ffn) {
    fail_at("config",
            has_moe ? "model has both 'moe' and 'ffn'; a block uses one of them"
                    : "model needs a feed-forward: either 'moe' (router + experts) or "
                      "'ffn' (dense)",
            doc.location(model, "model"));
  }
  m.is_moe = has_moe;
  if (has_moe) {
    const YAML::Node moe = model["moe"];
    if (!moe.IsMap()) {
      fail_at("config", "model.moe must be a mapping with 'router' and 'experts'",
              doc.location(moe, "model.moe"));
    }
    check_keys(doc, moe, "model.moe", "config", {}, {"router", "experts"});
    const std::string experts_role = "experts";
    const std::string router_role = "router";
    m.experts =
        resolve_slot(doc, registry, moe["experts"], "model.moe.experts", "moe", "", &experts_role);
    m.router =
        resolve_slot(doc, registry, moe["router"], "model.moe.router", "moe", "topk", &router_role);
  } else {
    m.ffn = resolve_slot(doc, registry, model["ffn"], "model.ffn", "ffn", "");
  }

  // ---- runtime components
  // The backend may be switched from the command line; see options_left_behind.
  const std::string file_backend = file_type_of(doc, "backend", "cpu");
  cfg.backend = resolve_slot(doc, registry, root["backend"], "backend", "backend", "cpu", nullptr,
                             &file_backend);
  cfg.tokenizer = resolve_slot(doc, registry, root["tokenizer"], "tokenizer", "tokenizer", "byte");

  // ---- training
  const YAML::Node train = root["train"];
  const Options to =
      read_options(doc, train, "train", "config", train_specs(), {"optimizer", "schedule"});
  TrainConfig& t = cfg.train;
  t.steps = to.get_int("steps");
  t.batch_size = to.get_int("batch_size");
  t.seq_len = to.get_int("seq_len");
  t.grad_accum = to.get_int("grad_accum");
  t.checkpoint_every = to.get_int("checkpoint_every");
  t.eval_every = to.get_int("eval_every");
  t.eval_batches = to.get_int("eval_batches");
  t.log_every = to.get_int("log_every");
  t.grad_clip = to.get_float("grad_clip");
  t.activation_checkpointing = to.get_bool("activation_checkpointing");
  t.final_checkpoint = to.get_bool("final_checkpoint");
  t.max_bad_steps = to.get_int("max_bad_steps");
  t.val_fraction = to.get_float("val_fraction");
  t.data = to.is_null("data") ? "" : to.get_string("data");
  const YAML::Node none;
  const bool train_map = train.IsDefined() && train.IsMap();
  t.optimizer = resolve_slot(doc, registry, train_map ? train["optimizer"] : none,
                             "train.optimizer", "optim", "adamw");
  t.schedule = resolve_slot(doc, registry, train_map ? train["schedule"] : none, "train.schedule",
                            "schedule", "warmup_cosine");
  if (t.seq_len > m.max_seq_len) {
    try {
      to.fail("seq_len", "(" + std::to_string(t.seq_len) + ") exceeds model.max_seq_len (" +
                             std::to_string(m.max_seq_len) + ")");
    } catch (const ConfigError& e) {
      rethrow_naming_overrides(e, {&to, &mo});
    }
  }

  cfg.parallel = resolve_parallel(doc, registry, root["parallel"], cfg);

  // ---- decoding chain
  const YAML::Node decode = root["decode"];
  if (decode.IsDefined() && !decode.IsNull()) {
    if (!decode.IsSequence()) {
      fail_at("config",
              "decode must be a list of samplers, e.g. [{type: top_k, k: 50}, "
              "{type: temperature, value: 0.8}]",
              doc.location(decode, "decode"));
    }
    for (size_t i = 0; i < decode.size(); ++i) {
      cfg.decode.push_back(resolve_slot(doc, registry, decode[i],
                                        "decode[" + std::to_string(i) + "]", "decode", ""));
    }
  }
  if (cfg.decode.empty()) {
    cfg.decode.push_back(resolve_slot(doc, registry, none, "decode[0]", "decode", "greedy"));
  }
  probe_plugins(cfg, registry);
  return cfg;
}

namespace {

YAML::Node scalar_node(const Options::Value& v) {
  if (v.is_null) return YAML::Node(YAML::NodeType::Null);
  switch (v.type) {
    case OptionType::kInt:
      return YAML::Node(v.int_value);
    case OptionType::kFloat:
      return YAML::Node(format_number(v.float_value));
    case OptionType::kBool:
      return YAML::Node(v.bool_value);
    case OptionType::kString:
      // Stored configs are read back as configs: a literal ${ must stay literal.
      return YAML::Node(config::escape_references(v.string_value));
  }
  return YAML::Node();
}

YAML::Node options_node(const Options& options, const std::string& type) {
  YAML::Node node(YAML::NodeType::Map);
  if (!type.empty()) node["type"] = type;
  for (const auto& [name, value] : options.values()) {
    YAML::Node target;
    target.reset(node);
    size_t start = 0;
    size_t dot;
    while ((dot = name.find('.', start)) != std::string::npos) {
      const std::string segment = name.substr(start, dot - start);
      if (!target[segment].IsDefined()) target[segment] = YAML::Node(YAML::NodeType::Map);
      YAML::Node child = target[segment];
      target.reset(child);
      start = dot + 1;
    }
    target[name.substr(start)] = scalar_node(value);
  }
  return node;
}

}  // namespace

std::string RunConfig::to_yaml() const {
  YAML::Node root(YAML::NodeType::Map);
  root["seed"] = seed;
  YAML::Node mnode(YAML::NodeType::Map);
  mnode["vocab_size"] = model.vocab_size;
  mnode["hidden_dim"] = model.hidden_dim;
  mnode["n_layers"] = model.n_layers;
  mnode["max_seq_len"] = model.max_seq_len;
  mnode["init_std"] = format_number(model.init_std);
  mnode["norm"] = options_node(model.norm.options, model.norm.name);
  mnode["attention"] = options_node(model.attention.options, model.attention.name);
  if (model.is_moe) {
    YAML::Node moe(YAML::NodeType::Map);
    moe["router"] = options_node(model.router.options, model.router.name);
    moe["experts"] = options_node(model.experts.options, model.experts.name);
    mnode["moe"] = moe;
  } else {
    mnode["ffn"] = options_node(model.ffn.options, model.ffn.name);
  }
  root["model"] = mnode;
  root["backend"] = options_node(backend.options, backend.name);
  root["tokenizer"] = options_node(tokenizer.options, tokenizer.name);
  YAML::Node tnode(YAML::NodeType::Map);
  tnode["steps"] = train.steps;
  tnode["batch_size"] = train.batch_size;
  tnode["seq_len"] = train.seq_len;
  tnode["grad_accum"] = train.grad_accum;
  tnode["checkpoint_every"] = train.checkpoint_every;
  tnode["eval_every"] = train.eval_every;
  tnode["eval_batches"] = train.eval_batches;
  tnode["log_every"] = train.log_every;
  tnode["grad_clip"] = format_number(train.grad_clip);
  tnode["activation_checkpointing"] = train.activation_checkpointing;
  tnode["final_checkpoint"] = train.final_checkpoint;
  tnode["max_bad_steps"] = train.max_bad_steps;
  tnode["val_fraction"] = format_number(train.val_fraction);
  if (train.data.empty()) {
    tnode["data"] = YAML::Node(YAML::NodeType::Null);
  } else {
    tnode["data"] = config::escape_references(train.data);
  }
  tnode["optimizer"] = options_node(train.optimizer.options, train.optimizer.name);
  tnode["schedule"] = options_node(train.schedule.options, train.schedule.name);
  root["train"] = tnode;
  YAML::Node dnode(YAML::NodeType::Sequence);
  for (const PluginChoice& d : decode) dnode.push_back(options_node(d.options, d.name));
  root["decode"] = dnode;
  if (!parallel.is_default()) {
    YAML::Node pnode(YAML::NodeType::Map);
    pnode["data"] = parallel.data;
    pnode["expert"] = parallel.expert;
    pnode["zero"] = parallel.zero;
    pnode["overlap"] = parallel.overlap;
    if (!parallel.comm.name.empty()) {
      pnode["comm"] = options_node(parallel.comm.options, parallel.comm.name);
    }
    root["parallel"] = pnode;
  }
  if (!plugin_paths.empty()) {
    YAML::Node pnode(YAML::NodeType::Sequence);
    for (const auto& p : plugin_paths) {
      pnode.push_back(config::escape_references(p.string()));
    }
    root["plugin_paths"] = pnode;
  }
  if (!plugin_prefer.empty()) {
    YAML::Node prefer(YAML::NodeType::Map);
    for (const auto& [id, file] : plugin_prefer) {
      prefer[id] = config::escape_references(file.string());
    }
    root["plugin_prefer"] = prefer;
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}

}  // namespace nnkit
