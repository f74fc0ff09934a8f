// Purpose: backend/cuda gather_rows and scatter_add_rows (index -1 skipped, repeated destinations,
// weight given or not), cross-entropy forward/backward (ignored negative targets) and the AdamW
// step against backend/cpu on the same inputs (contracts: plugins/backend/cpu/gather_loss.cpp).
// Owned by the backend/cuda tests.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_parity.h"

namespace nnkit::test {
namespace {

using CudaGatherParity = CudaParityTest;
using CudaLossParity = CudaParityTest;
using CudaOptimizerParity = CudaParityTest;

// A -1 index gives a zero row; every other row is a copy.
TEST_F(CudaGatherParity, GatherRowsWithSkippedIndex) {
  struct Case {
    int64_t rows, cols;
    std::vector<int32_t> index;
  };
  std::vector<int32_t> large(4096);
  for (size_t n = 0; n < large.size(); ++n) large[n] = n % 17 == 5 ? -1 : int32_t((n * 131) % 1000);
  for (const Case& c : {Case{5, 13, {4, 0, -1, 4, 2, 1, 3}}, Case{1000, 256, large}}) {
    const int64_t N = static_cast<int64_t>(c.index.size());
    const std::string what = "gather_rows " + std::to_string(N) + " of " + std::to_string(c.rows);
    TensorPair src = same_random({c.rows, c.cols}, 200);
    TensorPair index = same_ints(c.index, {N});
    TensorPair dst = poisoned({N, c.cols});
    cpu().gather_rows(src.cpu, index.cpu, dst.cpu);
    cuda().gather_rows(src.cuda, index.cuda, dst.cuda);
    expect_matches_cpu(dst, kExact, what);
  }
}

// dst[index[n]] += weight[n] * src[n] with many rows per destination and -1 rows skipped.
TEST_F(CudaGatherParity, ScatterAddRowsWeightedOrNotWithRepeatsAndSkips) {
  for (bool weighted : {false, true}) {
    for (int64_t cols : {13, 300}) {
      const int64_t N = 200, R = 5;
      const std::string what = std::string("scatter_add_rows ") +
                               (weighted ? "weighted" : "unweighted") +
                               " cols=" + std::to_string(cols);
      std::vector<int32_t> idx(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n) idx[size_t(n)] = n % 11 == 3 ? -1 : int32_t((n * 7) % R);
      TensorPair src = same_random({N, cols}, 210);
      TensorPair dst = same_random({R, cols}, 211);  // accumulates onto these values
      TensorPair index = same_ints(idx, {N});
      TensorPair weight;
      if (weighted) weight = same_random({N}, 212);
      cpu().scatter_add_rows(src.cpu, index.cpu, weight.cpu, dst.cpu);
      cuda().scatter_add_rows(src.cuda, index.cuda, weight.cuda, dst.cuda);
      expect_matches_cpu(dst, kReduction, what);
    }
  }
}

TEST_F(CudaLossParity, CrossEntropyForwardBackwardWithIgnoredTargets) {
  struct Case {
    int64_t rows, vocab;
    float range;
    std::vector<int32_t> targets;
  };
  std::vector<int32_t> many(64);
  for (size_t n = 0; n < many.size(); ++n) many[n] = n % 9 == 4 ? -1 : int32_t((n * 37) % 1000);
  many[10] = -100;  // Hugging Face's ignore index: any negative target is ignored
  for (const Case& c :
       {Case{7, 13, 8.0f, {3, -1, 0, 12, -100, 5, 5}}, Case{64, 1000, 6.0f, many}}) {
    const std::string what =
        "cross_entropy " + std::to_string(c.rows) + "x" + std::to_string(c.vocab);
    TensorPair logits = same_random({c.rows, c.vocab}, 220, c.range);
    TensorPair targets = same_ints(c.targets, {c.rows});
    TensorPair losses = poisoned({c.rows}), dlogits = poisoned({c.rows, c.vocab});
    cpu().cross_entropy_forward(logits.cpu, targets.cpu, losses.cpu);
    cuda().cross_entropy_forward(logits.cuda, targets.cuda, losses.cuda);
    // loss = log(sum exp) - (x_t - max): a loss near 0 is a difference of O(1) terms.
    expect_matches_cpu(losses, {4e-6, 2e-6}, what + " losses");
    cpu().cross_entropy_backward(logits.cpu, targets.cpu, 0.25f, dlogits.cpu);
    cuda().cross_entropy_backward(logits.cuda, targets.cuda, 0.25f, dlogits.cuda);
    // scale * (p - 1) at the target cancels; elsewhere scale * p is relative.
    expect_matches_cpu(dlogits, {4e-6, 1e-7}, what + " dlogits");
  }
}

struct AdamWCase {
  const char* name;
  AdamWStep step;
  bool zero_state;
};

TEST_F(CudaOptimizerParity, AdamwUpdateMatchesCpu) {
  AdamWStep later;
  later.lr = 1e-2f;
  later.beta1 = 0.9f;
  later.beta2 = 0.95f;
  later.eps = 1e-8f;
  later.weight_decay = 0.1f;
  later.grad_scale = 0.5f;
  later.step = 3;
  AdamWStep first;
  first.lr = 0.1f;
  for (const AdamWCase& c : {AdamWCase{"step 3 with decay and grad scale", later, false},
                             AdamWCase{"step 1 from zero state", first, true}}) {
    for (const Shape& shape : {Shape{7, 13}, Shape{1000, 37}}) {
      const std::string what = std::string("adamw ") + c.name + " " + to_string(shape);
      TensorPair p = same_random(shape, 230);
      TensorPair g = same_random(shape, 231);
      TensorPair m = same_random(shape, 232, 0.1f);
      std::vector<float> hv = random_values(size_t(shape_numel(shape)), 233, 0.1f);
      for (float& x : hv) x = std::abs(x);  // second moments are non-negative
      TensorPair v = same_values(hv, shape);
      if (c.zero_state) {
        cpu().fill(m.cpu, 0.0f);
        cpu().fill(v.cpu, 0.0f);
        cuda().fill(m.cuda, 0.0f);
        cuda().fill(v.cuda, 0.0f);
      }
      cpu().adamw_update(p.cpu, g.cpu, m.cpu, v.cpu, c.step);
      cuda().adamw_update(p.cuda, g.cuda, m.cuda, v.cuda, c.step);
      // A few roundings each (bias corrections, sqrt, division).
      expect_matches_cpu(m, {1e-5, 1e-7}, what + " m");
      expect_matches_cpu(v, {1e-5, 1e-7}, what + " v");
      expect_matches_cpu(p, {1e-5, 1e-6}, what + " param");
    }
  }
}

}  // namespace
}  // namespace nnkit::test
