// Purpose: inference-only models (Transformer::allocate_inference_only): they hold only what
// inference reads, load one tensor at a time, compute exactly what a model with f32 masters
// computes, and refuse what needs the masters (training, saving, optimizer state).
// On the CPU backend (f32 compute) the masters are the weights that compute, so the comparison
// checks the loading paths; the stage/commit pair is also checked against a 16-bit compute copy
// on the CPU, and the same model-level comparisons run on backend/cuda at bf16, where the masters
// are released (skipped with the reason when no CUDA device is usable).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "nnkit/checkpoint.h"
#include "nnkit/error.h"
#include "nnkit/generator.h"
#include "nnkit/io/half.h"
#include "nnkit/io/safetensors.h"
#include "nnkit/optim.h"
#include "nnkit/sampler.h"
#include "nnkit/tokenizer.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

namespace fs = std::filesystem;

// A folder under the system temp directory, removed with its contents.
class ScratchDir {
 public:
  ScratchDir() {
    path_ = fs::temp_directory_path() / ("nnkit-inference-weights-" + std::to_string(::getpid()) +
                                         "-" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

ModelSpec byte_spec() {
  ModelSpec spec;
  spec.vocab_size = 260;  // tokenizer/byte
  spec.hidden_dim = 32;
  spec.max_seq_len = 32;
  return spec;
}

std::unique_ptr<Transformer> make_model(std::shared_ptr<Backend> backend, bool inference_only) {
  auto model = std::make_unique<Transformer>(resolve_spec(byte_spec()), registry(), backend);
  if (inference_only) {
    model->allocate_inference_only();
  } else {
    model->allocate(false);
  }
  return model;
}

// The bytes of the tensor every forward reads for each parameter (Layer::value's choice).
std::vector<std::vector<uint8_t>> compute_weight_bytes(Transformer& model) {
  std::vector<std::vector<uint8_t>> out;
  for (Parameter* p : model.parameters()) {
    const Tensor& t = p->compute.defined() ? p->compute : p->value;
    std::vector<uint8_t> bytes(t.nbytes());
    model.backend().copy_to_host(bytes.data(), t);
    out.push_back(std::move(bytes));
  }
  return out;
}

std::vector<float> logits_of(Transformer& model, const std::vector<int32_t>& ids) {
  return host_values(model, model.logits(ids, 1, static_cast<int64_t>(ids.size())));
}

std::vector<int32_t> greedy_ids(Transformer& model) {
  auto tokenizer = create<Tokenizer>("tokenizer", "byte");
  const std::vector<std::shared_ptr<Sampler>> chain = {create<Sampler>("decode", "greedy")};
  GenerateOptions options;
  options.max_new_tokens = 16;
  const auto results = generate(model, *tokenizer, chain, {"inference only"}, options);
  return results.at(0).generated_ids;
}

int64_t parameter_elements(Transformer& model) {
  int64_t n = 0;
  for (Parameter* p : model.parameters()) n += shape_numel(p->shape);
  return n;
}

// Saves a model with masters and test-scale weights as run_dir's checkpoint.
void save_test_run(const fs::path& run_dir, std::shared_ptr<Backend> backend) {
  auto model = make_model(backend, false);
  model->init_random(3);
  overwrite_with_test_weights(*model, 3);
  CheckpointStore(run_dir).save(TrainerState{}, *model, nullptr, "", 1);
}

// The comparisons every backend must pass: the same compute bits, logits and greedy tokens from
// an inference-only model as from a model with masters, after random init and after loading a
// checkpoint; and the weight memory each holds.
void expect_inference_only_matches_masters(const std::shared_ptr<Backend>& backend) {
  const std::vector<int32_t> ids = random_ids(12, 260, 5);
  {
    SCOPED_TRACE("init_random");
    auto masters = make_model(backend, false);
    auto inference = make_model(backend, true);
    masters->init_random(11);
    inference->init_random(11);
    EXPECT_EQ(compute_weight_bytes(*inference), compute_weight_bytes(*masters));
    EXPECT_EQ(logits_of(*inference, ids), logits_of(*masters, ids));
  }
  SCOPED_TRACE("checkpoint");
  ScratchDir dir;
  save_test_run(dir.path(), backend);
  const CheckpointRef ref = CheckpointStore(dir.path()).require_latest();
  auto masters = make_model(backend, false);
  auto inference = make_model(backend, true);
  CheckpointStore::load(ref, *masters, nullptr);
  CheckpointStore::load(ref, *inference, nullptr);
  EXPECT_EQ(compute_weight_bytes(*inference), compute_weight_bytes(*masters));
  EXPECT_EQ(logits_of(*inference, ids), logits_of(*masters, ids));
  EXPECT_EQ(greedy_ids(*inference), greedy_ids(*masters));

  const int64_t n = parameter_elements(*masters);
  const DType compute = backend->compute_dtype();
  if (compute == DType::kF32) {
    // The f32 weights are what computes: both hold exactly them.
    EXPECT_EQ(inference->weight_bytes(), 4 * n);
    EXPECT_EQ(masters->weight_bytes(), 4 * n);
  } else {
    EXPECT_EQ(inference->weight_bytes(), 2 * n);  // only the 16-bit copies
    EXPECT_EQ(masters->weight_bytes(), 6 * n);    // masters and copies
    for (Parameter* p : inference->parameters()) {
      EXPECT_FALSE(p->value.defined()) << p->name << " kept its f32 master";
      EXPECT_EQ(p->compute.dtype(), compute) << p->name;
    }
  }
  for (Parameter* p : inference->parameters()) EXPECT_FALSE(p->grad.defined()) << p->name;
}

TEST(InferenceWeights, CpuInferenceOnlyModelComputesWhatTheMastersModelComputes) {
  expect_inference_only_matches_masters(cpu_backend());
}

TEST(InferenceWeights, CudaBf16InferenceOnlyModelReleasesMastersAndComputesTheSameBits) {
  std::shared_ptr<Backend> backend;
  try {
    backend = cuda_backend();
  } catch (const std::exception& e) {
    GTEST_SKIP() << "no CUDA device: " << e.what();
  }
  ASSERT_EQ(backend->compute_dtype(), DType::kBF16) << "backend/cuda's default precision";
  expect_inference_only_matches_masters(backend);
}

// stage_weights/commit_weights with a 16-bit compute copy and no master, on the CPU backend:
// the copy is Backend::convert of the staged f32 numbers (what refresh_compute_copies writes),
// and the master stays unallocated.
TEST(InferenceWeights, StageAndCommitRoundsIntoTheComputeCopyOnly) {
  auto backend = cpu_backend();
  auto model = make_model(backend, true);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    Parameter p;
    p.name = "probe.weight";
    p.shape = {3, 5};
    p.compute = backend->empty(p.shape, dtype);
    const std::vector<float> values = random_values(15, 9, 3.0f);
    const Tensor staged = model->stage_weights(p);
    EXPECT_EQ(staged.dtype(), DType::kF32);
    EXPECT_EQ(staged.shape(), p.shape);
    backend->copy_from_host(staged, values.data());
    model->commit_weights(p, staged);
    EXPECT_FALSE(p.value.defined());
    std::vector<uint16_t> got(15), want(15);
    backend->copy_to_host(got.data(), p.compute);
    if (dtype == DType::kBF16) {
      f32_to_bf16(values.data(), want.data(), 15);
    } else {
      f32_to_f16(values.data(), want.data(), 15);
    }
    EXPECT_EQ(got, want) << dtype_name(dtype);
  }
  Parameter p;
  p.name = "probe.weight";
  p.shape = {3, 5};
  p.compute = backend->empty(p.shape, DType::kBF16);
  EXPECT_THROW(model->commit_weights(p, backend->empty({5, 3})), ShapeError);
  EXPECT_THROW(model->commit_weights(p, backend->empty({3, 5}, DType::kBF16)), ShapeError);
}

TEST(InferenceWeights, TrainingSavingAndOptimizerStateAreRefusedWithTheReason) {
  auto backend = cpu_backend();
  auto model = make_model(backend, true);
  model->init_random(1);
  EXPECT_TRUE(model->inference_only());
  const std::vector<int32_t> ids = random_ids(8, 260, 2);
  const std::vector<int32_t> targets = shifted_targets(ids, 1, 8, 260, 3);
  try {
    model->forward_loss(ids, targets, 1, 8, /*training=*/true, false);
    FAIL() << "a training pass ran on an inference-only model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inference only"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("allocate(with_grads = true)"), std::string::npos);
  }
  // Evaluation passes are inference.
  EXPECT_TRUE(std::isfinite(model->forward_loss(ids, targets, 1, 8, false, false)));

  ScratchDir dir;
  try {
    CheckpointStore(dir.path()).save(TrainerState{}, *model, nullptr, "", 1);
    FAIL() << "an inference-only model was saved";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f32 master weights"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path() / "checkpoints" / "step-00000000"));

  save_test_run(dir.path(), backend);
  auto optimizer = create<Optimizer>("optim", "adamw");
  const CheckpointRef ref = CheckpointStore(dir.path()).require_latest();
  EXPECT_THROW(CheckpointStore::load(ref, *model, optimizer.get()), Error);
}

// A checkpoint holding bf16 weights (what `convert import-hf` writes from a bf16 HF folder)
// loads into f32 masters exactly widened, and into an inference-only model unchanged.
TEST(InferenceWeights, Bf16CheckpointLoadsWidenedIntoMastersAndAsItIsForInference) {
  auto backend = cpu_backend();
  auto source = make_model(backend, false);
  source->init_random(4);
  overwrite_with_test_weights(*source, 4);
  std::vector<std::vector<uint16_t>> bf16;
  std::vector<NamedHostTensor> tensors;
  bf16.reserve(source->parameters().size());
  for (Parameter* p : source->parameters()) {
    const std::vector<float> values = to_vector(*backend, p->value);
    bf16.emplace_back(values.size());
    f32_to_bf16(values.data(), bf16.back().data(), values.size());
    tensors.push_back({p->name, DType::kBF16, p->shape, bf16.back().data()});
  }
  ScratchDir dir;
  CheckpointStore(dir.path()).save(TrainerState{}, tensors, "", 1);
  const CheckpointRef ref = CheckpointStore(dir.path()).require_latest();
  EXPECT_EQ(SafetensorsFile(ref.dir / "model.safetensors").info("lm_head.weight").dtype,
            DType::kBF16);
  auto masters = make_model(backend, false);
  auto inference = make_model(backend, true);
  CheckpointStore::load(ref, *masters, nullptr);
  CheckpointStore::load(ref, *inference, nullptr);
  size_t i = 0;
  for (Parameter* p : masters->parameters()) {
    std::vector<float> want(bf16[i].size());
    bf16_to_f32(bf16[i].data(), want.data(), want.size());
    EXPECT_EQ(to_vector(*backend, p->value), want) << p->name;
    ++i;
  }
  const std::vector<int32_t> ids = random_ids(10, 260, 6);
  EXPECT_EQ(logits_of(*inference, ids), logits_of(*masters, ids));
}

}  // namespace
}  // namespace nnkit::test
