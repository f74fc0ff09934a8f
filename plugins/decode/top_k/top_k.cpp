// Purpose: `decode/top_k`: keeps the k highest logits and filters the rest to -inf. Ties at the
// boundary keep lower ids first, so exactly min(k, V) tokens survive.
// Ownership: stateless apart from its option; const and thread-safe.
#include <cstdint>
#include <span>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/plugin.h"
#include "nnkit/sampler.h"
#include "support/logit_row.h"

namespace nnkit::decode {
namespace {

class TopKSampler final : public Sampler {
 public:
  explicit TopKSampler(const Options& options) : k_(options.get_int("k")) {
    if (k_ < 1) options.fail("k", "must be >= 1 (the number of tokens kept)");
  }

  void apply(std::span<float> logits, const std::vector<int32_t>&) const override {
    const size_t keep = static_cast<size_t>(k_);
    if (keep >= logits.size()) return;
    const std::vector<int32_t> ids = ranked_ids(logits, keep);
    for (size_t i = keep; i < ids.size(); ++i) logits[static_cast<size_t>(ids[i])] = kFiltered;
  }

  bool apply_device(Backend& backend, const Tensor& logits,
                    const DeviceSamplingContext&) const override {
    backend.top_k_filter_rows(logits, k_);
    return true;
  }

 private:
  int64_t k_;
};

std::vector<OptionSpec> top_k_options() {
  return {{"k", OptionType::kInt, "50", 1.0, std::nullopt,
           "number of highest-scoring tokens kept (ties: lower ids first)"}};
}

Component* create_top_k(const CreateArgs& args) {
  return new TopKSampler(args.options);
}

}  // namespace
}  // namespace nnkit::decode

NNKIT_PLUGIN(decode, top_k, "0.1.0", "keeps the k most likely tokens",
             &nnkit::decode::top_k_options, &nnkit::decode::create_top_k)
