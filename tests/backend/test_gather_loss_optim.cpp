// Purpose: backend/cpu gather/scatter-add (skip index, weights, repeated targets), cross-entropy
// (ignored targets) and the AdamW step against double references. Owned by the backend/cpu tests.
#include <cmath>

#include "reference.h"

namespace nnkit::test {
namespace {

using BackendGather = CpuBackendTest;
using BackendLoss = CpuBackendTest;
using BackendOptim = CpuBackendTest;

TEST_F(BackendGather, GatherRowsWithSkip) {
  std::vector<float> hs;
  Tensor src = random({5, 13}, 200, 1.0f, &hs);
  const std::vector<int32_t> idx = {4, 0, -1, 4, 2, 1, 3};
  Tensor index = tensor_from_i32(be(), idx, {7});
  Tensor dst = be().empty({7, 13});
  be().gather_rows(src, index, dst);
  std::vector<double> want(7 * 13, 0.0);
  for (size_t n = 0; n < idx.size(); ++n) {
    for (size_t c = 0; c < 13; ++c)
      want[n * 13 + c] = idx[n] < 0 ? 0.0 : hs[size_t(idx[n]) * 13 + c];
  }
  expect_close(host(dst), want, 0.0, 0.0, "gather_rows");
}

TEST_F(BackendGather, ScatterAddRowsWeightedRepeatedAndSkipped) {
  for (bool weighted : {false, true}) {
    for (int64_t cols : {13, 300}) {  // 300 x 200 rows takes the column-split parallel path
      const int64_t N = 200, R = 5;
      std::vector<float> hs, hd, hw;
      Tensor src = random({N, cols}, 210, 1.0f, &hs);
      Tensor dst = random({R, cols}, 211, 1.0f, &hd);
      Tensor weight = weighted ? random({N}, 212, 1.0f, &hw) : Tensor();
      std::vector<int32_t> idx(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n) idx[size_t(n)] = n % 11 == 3 ? -1 : int32_t((n * 7) % R);
      be().scatter_add_rows(src, tensor_from_i32(be(), idx, {N}), weight, dst);
      std::vector<double> want(hd.begin(), hd.end());
      for (int64_t n = 0; n < N; ++n) {
        if (idx[size_t(n)] < 0) continue;
        const double w = weighted ? hw[size_t(n)] : 1.0;
        for (int64_t c = 0; c < cols; ++c) {
          want[size_t(idx[size_t(n)] * cols + c)] += w * hs[size_t(n * cols + c)];
        }
      }
      expect_close(host(dst), want, 1e-5, 1e-5, "scatter_add_rows");
    }
  }
}

TEST_F(BackendLoss, CrossEntropyForwardBackwardWithIgnoredTargets) {
  const int64_t N = 7, V = 13;
  std::vector<float> hx;
  Tensor logits = random({N, V}, 220, 8.0f, &hx);
  const std::vector<int32_t> targets = {3, -1, 0, 12, -100, 5, 5};
  Tensor t = tensor_from_i32(be(), targets, {N});
  Tensor losses = be().empty({N}), dlogits = be().empty({N, V});
  be().cross_entropy_forward(logits, t, losses);
  be().cross_entropy_backward(logits, t, 0.25f, dlogits);
  std::vector<double> wl(size_t(N), 0.0), wd(size_t(N * V), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (targets[size_t(n)] < 0) continue;
    double mx = -1e300, sum = 0.0;
    for (int64_t c = 0; c < V; ++c) mx = std::max(mx, double(hx[size_t(n * V + c)]));
    for (int64_t c = 0; c < V; ++c) sum += std::exp(hx[size_t(n * V + c)] - mx);
    wl[size_t(n)] = std::log(sum) + mx - hx[size_t(n * V + targets[size_t(n)])];
    for (int64_t c = 0; c < V; ++c) {
      const double p = std::exp(hx[size_t(n * V + c)] - mx) / sum;
      wd[size_t(n * V + c)] = 0.25 * (p - (c == targets[size_t(n)] ? 1.0 : 0.0));
    }
  }
  expect_close(host(losses), wl, 1e-5, 1e-6, "cross_entropy losses");
  expect_close(host(dlogits), wd, 1e-5, 1e-7, "cross_entropy dlogits");
}

TEST_F(BackendOptim, AdamwMatchesFormula) {
  std::vector<float> hp, hg, hm, hv;
  Tensor p = random({7, 13}, 230, 1.0f, &hp);
  Tensor g = random({7, 13}, 231, 1.0f, &hg);
  Tensor m = random({7, 13}, 232, 0.1f, &hm);
  Tensor v = random({7, 13}, 233, 0.1f, &hv);
  for (float& x : hv) x = std::abs(x);
  be().copy_from_host(v, hv.data());
  AdamWStep step;
  step.lr = 1e-2f;
  step.beta1 = 0.9f;
  step.beta2 = 0.95f;
  step.eps = 1e-8f;
  step.weight_decay = 0.1f;
  step.grad_scale = 0.5f;
  step.step = 3;
  be().adamw_update(p, g, m, v, step);
  std::vector<double> wp(hp.size()), wm(hp.size()), wv(hp.size());
  const double b1 = step.beta1, b2 = step.beta2;
  for (size_t i = 0; i < hp.size(); ++i) {
    const double gi = 0.5 * hg[i];
    wm[i] = b1 * hm[i] + (1 - b1) * gi;
    wv[i] = b2 * hv[i] + (1 - b2) * gi * gi;
    const double mhat = wm[i] / (1 - std::pow(b1, 3)), vhat = wv[i] / (1 - std::pow(b2, 3));
    wp[i] = hp[i] - double(step.lr) * (mhat / (std::sqrt(vhat) + double(step.eps)) +
                                       double(step.weight_decay) * hp[i]);
  }
  expect_close(host(m), wm, 1e-5, 1e-7, "adamw m");
  expect_close(host(v), wv, 1e-5, 1e-7, "adamw v");
  expect_close(host(p), wp, 1e-5, 1e-6, "adamw param");
}

TEST_F(BackendOptim, AdamwFirstStepFromZeroState) {
  Tensor p = tensor_from(be(), {1.0f, -2.0f}, {2});
  Tensor g = tensor_from(be(), {0.5f, -3.0f}, {2});
  Tensor m = be().zeros({2}), v = be().zeros({2});
  AdamWStep step;
  step.lr = 0.1f;
  be().adamw_update(p, g, m, v, step);
  // Step 1 with zero state: m_hat = g, v_hat = g^2, so the update is lr * sign(g).
  expect_close(host(p), {0.9, -1.9}, 1e-6, 1e-6, "adamw step 1");
}

}  // namespace
}  // namespace nnkit::test
