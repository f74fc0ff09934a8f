// Purpose: export-hf / import-hf round trips (f32 exact, bf16 within rounding, sharded, bf16
// imports kept bf16), the transformers-5 fused expert layout, tied embeddings, and refusals that
// name the tensor.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "hf_test_util.h"
#include "nnkit/checkpoint.h"
#include "nnkit/error.h"
#include "nnkit/hf.h"
#include "nnkit/io/half.h"
#include "nnkit/io/run_lock.h"
#include "nnkit/io/safetensors.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::vector<int32_t> kIds = {2, 17, 255, 4, 99, 123, 7, 299, 3, 42, 42, 5};

// Exports a random run of `yaml`, imports it back and compares the logits.
float round_trip_diff(const std::string& yaml, const HfExportOptions& options, TempDir& tmp) {
  make_random_run(tmp / "run", yaml, 7);
  export_hf(tmp / "run", tmp / "hf", registry(), options);
  import_hf(tmp / "hf", tmp / "back", registry());
  LoadedRun original = load_run(tmp / "run");
  LoadedRun back = load_run(tmp / "back");
  return max_abs_diff(logits_of(*original.model, kIds), logits_of(*back.model, kIds));
}

TEST(HfConvert, MoeRoundTripGivesIdenticalLogits) {
  TempDir tmp;
  EXPECT_EQ(round_trip_diff(small_moe_yaml(), {}, tmp), 0.0f);
  const json config = json::parse(read_text(tmp / "hf" / "config.json"));
  EXPECT_EQ(config["architectures"][0], "MixtralForCausalLM");
  EXPECT_EQ(config["num_key_value_heads"], 1);
  EXPECT_FALSE(fs::exists(tmp / "hf" / "model.safetensors.index.json"));
  // The checkpoint names save_pretrained writes: per-expert w1/w2/w3 under block_sparse_moe.
  SafetensorsFile weights(tmp / "hf" / "model.safetensors");
  EXPECT_TRUE(weights.has("model.layers.1.block_sparse_moe.experts.3.w2.weight"));
  EXPECT_TRUE(weights.has("model.layers.0.block_sparse_moe.gate.weight"));
  EXPECT_EQ(weights.metadata().at("format"), "pt");
}

TEST(HfConvert, DenseRoundTripGivesIdenticalLogits) {
  TempDir tmp;
  EXPECT_EQ(round_trip_diff(small_dense_yaml(), {}, tmp), 0.0f);
  const json config = json::parse(read_text(tmp / "hf" / "config.json"));
  EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(config["intermediate_size"], 64);
  EXPECT_EQ(config["rope_theta"], 500000.0);
  // The imported run is an ordinary run: its stored config names the same model.
  EXPECT_TRUE(fs::exists(tmp / "back" / "config.yaml"));
}

TEST(HfConvert, ShardedExportWritesAnIndexAndReadsBack) {
  TempDir tmp;
  HfExportOptions options;
  options.shard_bytes = 40000;  // the model is ~170 KB in f32
  EXPECT_EQ(round_trip_diff(small_moe_yaml(), options, tmp), 0.0f);
  EXPECT_FALSE(fs::exists(tmp / "hf" / "model.safetensors"));
  const json index = json::parse(read_text(tmp / "hf" / "model.safetensors.index.json"));
  std::set<std::string> shards;
  uint64_t total = 0;
  for (const auto& [name, file] : index["weight_map"].items()) {
    shards.insert(file.get<std::string>());
    SafetensorsFile shard(tmp / "hf" / file.get<std::string>());
    ASSERT_TRUE(shard.has(name)) << name;
    total += shard.info(name).nbytes();
  }
  EXPECT_GT(shards.size(), 2u);
  EXPECT_TRUE(shards.count("model-00001-of-0000" + std::to_string(shards.size()) + ".safetensors"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  LoadedRun run = load_run(tmp / "run");
  EXPECT_EQ(index["weight_map"].size(), run.model->parameters().size());
}

TEST(HfConvert, Bf16ExportRoundsEachWeightOnce) {
  TempDir tmp;
  HfExportOptions options;
  options.dtype = DType::kBF16;
  const float diff = round_trip_diff(small_moe_yaml(), options, tmp);
  LoadedRun original = load_run(tmp / "run");
  LoadedRun back = load_run(tmp / "back");
  const float scale = max_abs(logits_of(*original.model, kIds));
  EXPECT_GT(diff, 0.0f);
  EXPECT_LT(diff, 0.02f * scale + 1e-4f) << "logit scale " << scale;
  SafetensorsFile weights(tmp / "hf" / "model.safetensors");
  EXPECT_EQ(weights.info("lm_head.weight").dtype, DType::kBF16);
  EXPECT_EQ(json::parse(read_text(tmp / "hf" / "config.json"))["torch_dtype"], "bfloat16");
  // Every imported weight is exactly its bf16 rounding.
  for (Parameter* p : original.model->parameters()) {
    const std::vector<float> a = parameter_values(*original.model, p->name);
    const std::vector<float> b = parameter_values(*back.model, p->name);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(b[i], bf16_to_f32(f32_to_bf16(a[i]))) << p->name << "[" << i << "]";
    }
  }
}

// Importing a bf16 folder keeps the weights bf16: the checkpoint holds the HF file's bytes (no
// f32 copy of the model is made on the way), a bf16 export of it writes them back unchanged, an
// f32 export widens them exactly, and the run loads for training and for inference alike.
TEST(HfConvert, Bf16ImportKeepsTheBf16BytesThroughCheckpointAndExport) {
  TempDir tmp;
  HfExportOptions bf16;
  bf16.dtype = DType::kBF16;
  make_random_run(tmp / "run", small_moe_yaml(), 13);
  export_hf(tmp / "run", tmp / "hf", registry(), bf16);
  import_hf(tmp / "hf", tmp / "back", registry());
  export_hf(tmp / "back", tmp / "again", registry(), bf16);
  export_hf(tmp / "back", tmp / "wide", registry(), {});
  const SafetensorsFile hf(tmp / "hf" / "model.safetensors");
  const SafetensorsFile checkpoint(CheckpointStore(tmp / "back").require_latest().dir /
                                   "model.safetensors");
  const SafetensorsFile again(tmp / "again" / "model.safetensors");
  const SafetensorsFile wide(tmp / "wide" / "model.safetensors");
  LoadedRun back = load_run(tmp / "back");
  for (Parameter* p : back.model->parameters()) {
    SCOPED_TRACE(p->name);
    ASSERT_EQ(checkpoint.info(p->name).dtype, DType::kBF16);
    const auto bytes = hf.bytes(p->name);
    const std::vector<std::byte> want(bytes.begin(), bytes.end());
    const auto stored = checkpoint.bytes(p->name);
    EXPECT_EQ(std::vector<std::byte>(stored.begin(), stored.end()), want);
    const auto exported = again.bytes(p->name);
    EXPECT_EQ(std::vector<std::byte>(exported.begin(), exported.end()), want);
    std::vector<float> widened(want.size() / 2);
    bf16_to_f32(want.data(), widened.data(), widened.size());
    ASSERT_EQ(wide.info(p->name).dtype, DType::kF32);
    const auto f32 = wide.bytes(p->name);
    EXPECT_EQ(std::memcmp(f32.data(), widened.data(), f32.size()), 0);
    EXPECT_EQ(parameter_values(*back.model, p->name), widened);  // masters: widened exactly
  }
  // An inference-only model of the run computes what the model with masters computes.
  const RunConfig& config = back.config;
  auto inference = std::make_unique<Transformer>(config, registry(), cpu_backend());
  inference->allocate_inference_only();
  CheckpointStore::load(CheckpointStore(tmp / "back").require_latest(), *inference, nullptr);
  EXPECT_EQ(logits_of(*inference, kIds), logits_of(*back.model, kIds));
}

TEST(HfConvert, F16ExportIsCloseToo) {
  TempDir tmp;
  HfExportOptions options;
  options.dtype = DType::kF16;
  const float diff = round_trip_diff(small_dense_yaml(), options, tmp);
  EXPECT_LT(diff, 1e-3f);
}

TEST(HfConvert, ImportsTheFusedExpertLayoutOfTransformers5) {
  TempDir tmp;
  make_random_run(tmp / "run", small_moe_yaml(), 11);
  export_hf(tmp / "run", tmp / "hf", registry());
  // Rewrite the experts as gate_up_proj (E, 2F, H) and down_proj (E, H, F) under .mlp.
  SafetensorsFile in(tmp / "hf" / "model.safetensors");
  std::vector<NamedHostTensor> out;
  std::vector<std::vector<float>> storage;
  storage.reserve(16);
  const int64_t E = 4, F = 48, H = 32;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".block_sparse_moe.";
    std::vector<float> gate_up, down;
    for (int e = 0; e < E; ++e) {
      for (const char* w : {"w1", "w3"}) {
        const auto bytes = in.bytes(p + "experts." + std::to_string(e) + "." + w + ".weight");
        const float* f = reinterpret_cast<const float*>(bytes.data());
        gate_up.insert(gate_up.end(), f, f + F * H);  // expert e: its w1 rows, then its w3 rows
      }
      const auto bytes = in.bytes(p + "experts." + std::to_string(e) + ".w2.weight");
      const float* f = reinterpret_cast<const float*>(bytes.data());
      down.insert(down.end(), f, f + H * F);
    }
    storage.push_back(std::move(gate_up));
    out.push_back({"model.layers." + std::to_string(layer) + ".mlp.experts.gate_up_proj",
                   DType::kF32,
                   {E, 2 * F, H},
                   storage.back().data()});
    storage.push_back(std::move(down));
    out.push_back({"model.layers." + std::to_string(layer) + ".mlp.experts.down_proj",
                   DType::kF32,
                   {E, H, F},
                   storage.back().data()});
  }
  for (const std::string& name : in.names()) {
    if (name.find(".experts.") != std::string::npos) continue;
    std::string renamed = name;
    const size_t at = renamed.find(".block_sparse_moe.");
    if (at != std::string::npos) renamed.replace(at, 18, ".mlp.");
    const TensorInfo& info = in.info(name);
    out.push_back({renamed, info.dtype, info.shape, in.bytes(name).data()});
  }
  fs::create_directories(tmp / "fused");
  write_safetensors(tmp / "fused" / "model.safetensors", out, {{"format", "pt"}});
  fs::copy_file(tmp / "hf" / "config.json", tmp / "fused" / "config.json");
  import_hf(tmp / "fused", tmp / "back", registry());
  LoadedRun original = load_run(tmp / "run");
  LoadedRun back = load_run(tmp / "back");
  EXPECT_EQ(max_abs_diff(logits_of(*original.model, kIds), logits_of(*back.model, kIds)), 0.0f);
}

TEST(HfConvert, TiedEmbeddingsFillTheHead) {
  TempDir tmp;
  make_random_run(tmp / "run", small_dense_yaml(), 3);
  export_hf(tmp / "run", tmp / "hf", registry());
  json config = json::parse(read_text(tmp / "hf" / "config.json"));
  config["tie_word_embeddings"] = true;
  write_text(tmp / "hf" / "config.json", config.dump());
  // A tied folder stores no lm_head.
  SafetensorsFile in(tmp / "hf" / "model.safetensors");
  std::vector<NamedHostTensor> out;
  for (const std::string& name : in.names()) {
    if (name == "lm_head.weight") continue;
    out.push_back({name, in.info(name).dtype, in.info(name).shape, in.bytes(name).data()});
  }
  fs::create_directories(tmp / "tied");
  write_safetensors(tmp / "tied" / "model.safetensors", out, {{"format", "pt"}});
  fs::copy_file(tmp / "hf" / "config.json", tmp / "tied" / "config.json");
  import_hf(tmp / "tied", tmp / "back", registry());
  LoadedRun back = load_run(tmp / "back");
  EXPECT_EQ(parameter_values(*back.model, "lm_head.weight"),
            parameter_values(*back.model, "model.embed_tokens.weight"));
}

// An exported dense folder whose model.safetensors is rewritten by `edit`.
void expect_import_fails_naming(const std::string& what,
                                const std::function<void(std::vector<NamedHostTensor>&)>& edit) {
  TempDir tmp;
  make_random_run(tmp / "run", small_dense_yaml(), 5);
  export_hf(tmp / "run", tmp / "hf", registry());
  std::vector<NamedHostTensor> tensors;
  std::vector<float> extra(32, 0.5f);
  {
    SafetensorsFile in(tmp / "hf" / "model.safetensors");
    for (const std::string& name : in.names()) {
      tensors.push_back({name, in.info(name).dtype, in.info(name).shape, in.bytes(name).data()});
    }
    edit(tensors);
    for (NamedHostTensor& t : tensors) {
      if (t.data == nullptr) t.data = extra.data();
    }
    write_safetensors(tmp / "hf" / "edited.safetensors", tensors, {{"format", "pt"}});
  }
  fs::rename(tmp / "hf" / "edited.safetensors", tmp / "hf" / "model.safetensors");
  try {
    import_hf(tmp / "hf", tmp / "back", registry());
    FAIL() << "import accepted a folder with " << what;
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(HfConvert, WrongShapeNamesTheTensor) {
  expect_import_fails_naming("model.layers.1.self_attn.k_proj.weight", [](auto& tensors) {
    for (NamedHostTensor& t : tensors) {
      if (t.name == "model.layers.1.self_attn.k_proj.weight") t.shape = {t.shape[1], t.shape[0]};
    }
  });
}

TEST(HfConvert, MissingTensorIsNamed) {
  expect_import_fails_naming("model.layers.0.mlp.up_proj.weight", [](auto& tensors) {
    std::erase_if(tensors, [](const NamedHostTensor& t) {
      return t.name == "model.layers.0.mlp.up_proj.weight";
    });
  });
}

TEST(HfConvert, UnknownTensorSuchAsABiasIsNamed) {
  expect_import_fails_naming("model.layers.0.self_attn.q_proj.bias", [](auto& tensors) {
    tensors.push_back({"model.layers.0.self_attn.q_proj.bias", DType::kF32, {32}, nullptr});
  });
}

TEST(HfConvert, ImportRefusesARunThatHasCheckpoints) {
  TempDir tmp;
  make_random_run(tmp / "run", small_dense_yaml(), 5);
  export_hf(tmp / "run", tmp / "hf", registry());
  EXPECT_THROW(import_hf(tmp / "hf", tmp / "run", registry()), IoError);
}

// A killed import leaves only checkpoints/step-00000000.tmp-PID/; the next import removes it
// instead of refusing the run as one that "already holds checkpoints".
TEST(HfConvert, ImportAfterAKilledImportRemovesItsTempFolder) {
  TempDir tmp;
  make_random_run(tmp / "run", small_dense_yaml(), 5);
  export_hf(tmp / "run", tmp / "hf", registry());
  const fs::path leftover = tmp / "back" / "checkpoints" / "step-00000000.tmp-4242";
  fs::create_directories(leftover);
  write_text(leftover / "model.safetensors", "half written");
  const HfImportReport report = import_hf(tmp / "hf", tmp / "back", registry());
  EXPECT_FALSE(fs::exists(leftover));
  EXPECT_TRUE(fs::exists(report.checkpoint / "MANIFEST.json"));
  EXPECT_FALSE(fs::exists(tmp / "back" / ".lock")) << "the import kept its lock file";
}

TEST(HfConvert, ImportRefusesARunDirectoryInUse) {
  TempDir tmp;
  make_random_run(tmp / "run", small_dense_yaml(), 5);
  export_hf(tmp / "run", tmp / "hf", registry());
  fs::create_directories(tmp / "back");
  const RunLock writer(tmp / "back", "nnkit train");
  try {
    import_hf(tmp / "hf", tmp / "back", registry());
    ADD_FAILURE() << "imported into a run directory another writer holds";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("already holds the run lock"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp / "back" / "checkpoints"));
}

TEST(HfConvert, ExportRefusesWhatHfCannotExpress) {
  TempDir tmp;
  std::string yaml = small_moe_yaml();
  yaml.replace(yaml.find("aux_loss_weight: 0.01"), 21,
               "aux_loss_weight: 0.01, capacity_factor: 1.5");
  make_random_run(tmp / "run", yaml, 5);
  try {
    export_hf(tmp / "run", tmp / "hf", registry());
    FAIL() << "exported a model with a capacity factor";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("capacity_factor"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace nnkit::test
