// Purpose: `decode/top_p` (nucleus): keeps the smallest set of most likely tokens whose softmax
// mass reaches p (at least one token) and filters the rest to -inf.
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

// Probabilities come from float logits, so a distribution whose top tokens hold exactly p in
// exact arithmetic may sum to p - 1e-8 here; without this slack such a set would pull in one
// extra token depending on rounding.
constexpr double kMassTolerance = 1e-6;

class TopPSampler final : public Sampler {
 public:
  explicit TopPSampler(const Options& options) : p_(options.get_float("p")) {
    // The declared range [0, 1] is inclusive; 0 would keep "the smallest set reaching 0", which
    // silently degenerates to greedy, so it is refused with a pointer to the real thing.
    if (!(p_ > 0.0 && p_ <= 1.0)) {
      options.fail("p",
                   "must be in (0, 1] (the probability mass kept); use decode/greedy to keep "
                   "only the most likely token");
    }
  }

  void apply(std::span<float> logits, const std::vector<int32_t>&) const override {
    if (p_ >= 1.0) return;  // everything reaches mass 1; skip the sort
    const std::vector<double> probs = probabilities(logits);
    const std::vector<int32_t> ids = ranked_ids(logits, logits.size());
    double mass = 0.0;
    size_t kept = 0;
    while (kept < ids.size()) {
      mass += probs[static_cast<size_t>(ids[kept])];
      ++kept;
      if (mass >= p_ - kMassTolerance) break;
    }
    for (size_t i = kept; i < ids.size(); ++i) logits[static_cast<size_t>(ids[i])] = kFiltered;
  }

  // The op keeps the same set with the same kMassTolerance (Backend::top_p_filter_rows).
  bool apply_device(Backend& backend, const Tensor& logits,
                    const DeviceSamplingContext&) const override {
    backend.top_p_filter_rows(logits, p_);
    return true;
  }

 private:
  double p_;
};

std::vector<OptionSpec> top_p_options() {
  return {{"p", OptionType::kFloat, "0.9", 0.0, 1.0,
           "probability mass kept, in (0, 1]; 1 keeps every token"}};
}

Component* create_top_p(const CreateArgs& args) {
  return new TopPSampler(args.options);
}

}  // namespace
}  // namespace nnkit::decode

NNKIT_PLUGIN(decode, top_p, "0.1.0", "nucleus sampling: keeps the most likely tokens up to mass p",
             &nnkit::decode::top_p_options, &nnkit::decode::create_top_p)
