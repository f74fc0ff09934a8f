// Purpose: backend/cpu device-sampling ops (temperature_rows, top_k/top_p/min_p_filter_rows,
// repetition_penalty_rows, sample_rows, append_tokens): the sampler chain of issue 10 on whole
// (B, V) rows. Owned by backend/cpu.
// Parity: these compute what backend/cuda's sampling.cu computes, decision for decision. Top-k
// and the elementwise filters are exact by construction; top-p and the draw depend on sums of
// softmax weights, which both backends form with the arithmetic and summation layout of
// ../common/sampling_math.h (kLanes lanes, fixed trees, IEEE-only exp). This file is compiled
// with -ffp-contract=off so that the host compiler cannot fuse what the kernels keep separate.
// Rows run in parallel under OpenMP; each row is one sequential emulation of its CUDA block.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../common/sampling_math.h"
#include "checks.h"
#include "cpu_backend.h"

namespace nnkit::cpu {

namespace {

using sampling::kBins;
using sampling::kLanes;
using sampling::rank_key;
using sampling::row_weight;

constexpr float kFiltered = -std::numeric_limits<float>::infinity();

// (B, V) f32 logits; returns the shape.
RowShape expect_logits(const char* op, const Tensor& logits) {
  const RowShape s = expect_rows(op, "logits", logits, DType::kF32);
  if (logits.shape().size() != 2) {
    shape_fail(op, "logits is " + describe(logits) + "; expected (B, V)");
  }
  return s;
}

// The largest non-NaN logit (-inf when there is none); a zero max is +0 (the kernels' fmaxf may
// return either zero, and x - max must not depend on which).
float row_max(const float* x, int64_t cols) {
  float mx = kFiltered;
  for (int64_t c = 0; c < cols; ++c) {
    if (x[c] > mx) mx = x[c];  // NaN compares false
  }
  return mx == 0.0f ? 0.0f : mx;
}

// The first-ranked token (larger key first, lower index on ties).
int32_t row_argmax(const float* x, int64_t cols) {
  int64_t best = 0;
  uint32_t best_key = rank_key(x[0]);
  for (int64_t c = 1; c < cols; ++c) {
    const uint32_t key = rank_key(x[c]);
    if (key > best_key) {
      best = c;
      best_key = key;
    }
  }
  return static_cast<int32_t>(best);
}

// Runs body(row) for every row, in parallel when the rows are large enough to pay for it.
template <typename Body>
void for_rows(int64_t rows, int64_t cols, Body&& body) {
#pragma omp parallel for if (rows > 1 && rows * cols > kParallelGrain) schedule(static)
  for (int64_t n = 0; n < rows; ++n) body(n);
}

// The kept set of a radix selection: a token is kept when its key, masked, is above `prefix`,
// or equal to it and (all_tied or it is among the first `keep_tied` such tokens by index).
struct Selection {
  uint32_t prefix = 0;
  uint32_t mask = 0;
  bool all_tied = true;
  int64_t keep_tied = 0;
};

void apply_selection(float* x, int64_t cols, const Selection& sel) {
  int64_t tied_seen = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const uint32_t key = rank_key(x[c]) & sel.mask;
    if (key > sel.prefix) continue;
    if (key == sel.prefix && (sel.all_tied || tied_seen++ < sel.keep_tied)) continue;
    x[c] = kFiltered;
  }
}

// top-p's selection over one row, the emulation of sampling.cu's top_p kernel: kPasses digits,
// each a histogram of weight (per lane, then lane_tree) and of counts over the tokens matching
// the prefix so far. Returns false when the row keeps everything (no weight).
bool top_p_selection(const float* x, int64_t cols, double p, std::vector<double>& lanes,
                     Selection& sel) {
  const float mx = row_max(x, cols);
  const int used = static_cast<int>(std::min<int64_t>(cols, kLanes));
  double above = 0.0, target = 0.0;
  for (int pass = 0; pass < sampling::kPasses; ++pass) {
    const int shift = 32 - sampling::kDigitBits * (pass + 1);
    for (int b = 0; b < kBins; ++b) std::fill_n(lanes.begin() + b * kLanes, used, 0.0);
    int32_t counts[kBins] = {};
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t key = rank_key(x[c]);
      if ((key & sel.mask) != sel.prefix) continue;
      const int bin = static_cast<int>((key >> shift) & (kBins - 1));
      double& lane = lanes[static_cast<size_t>(bin * kLanes + (c % kLanes))];
      lane = sampling::add_rn(lane, row_weight(x[c], mx));
      ++counts[bin];
    }
    sampling::lane_tree(lanes.data(), kBins, used);
    double weight[kBins];
    for (int b = 0; b < kBins; ++b) weight[b] = lanes[static_cast<size_t>(b * kLanes)];
    if (pass == 0) {
      double total = 0.0;
      for (int b = kBins - 1; b >= 0; --b) total = sampling::add_rn(total, weight[b]);
      if (!(total > 0.0)) return false;
      target = sampling::mul_rn(p - sampling::kTopPTolerance, total);
    }
    const int bin = sampling::choose_bin(weight, counts, target, above);
    sel.prefix |= static_cast<uint32_t>(bin) << shift;
    sel.mask |= static_cast<uint32_t>(kBins - 1) << shift;
    if (counts[bin] == 1) return true;
    if (pass == sampling::kPasses - 1) {
      const double w = row_weight(sampling::key_float(sel.prefix), mx);
      sel.keep_tied = sampling::ties_needed(above, w, target, counts[bin]);
      sel.all_tied = sel.keep_tied == counts[bin];
    }
  }
  return true;
}

}  // namespace

void CpuBackend::temperature_rows(const Tensor& logits, double temperature) {
  const char* op = "temperature_rows";
  const RowShape s = expect_logits(op, logits);
  if (!(temperature > 0.0)) {
    shape_fail(op, "temperature " + std::to_string(temperature) + " must be > 0");
  }
  float* px = ptr<float>(logits);
  for_rows(s.rows, s.cols, [&](int64_t n) {
    float* x = px + n * s.cols;
    constexpr double kFloatMax = std::numeric_limits<float>::max();
    double max_logit = -std::numeric_limits<double>::infinity();
    bool overflows = false;
    for (int64_t c = 0; c < s.cols; ++c) {
      if (!std::isfinite(x[c])) continue;
      max_logit = std::max(max_logit, static_cast<double>(x[c]));
      overflows = overflows || std::fabs(static_cast<double>(x[c]) / temperature) > kFloatMax;
    }
    if (max_logit == 0.0) max_logit = 0.0;  // +0, as row_max
    const double shift = overflows ? max_logit : 0.0;
    for (int64_t c = 0; c < s.cols; ++c) {
      if (!std::isfinite(x[c])) continue;
      const double scaled = (static_cast<double>(x[c]) - shift) / temperature;
      x[c] = scaled < -kFloatMax ? kFiltered : static_cast<float>(scaled);
    }
  });
}

void CpuBackend::top_k_filter_rows(const Tensor& logits, int64_t k) {
  const char* op = "top_k_filter_rows";
  const RowShape s = expect_logits(op, logits);
  if (k < 1) shape_fail(op, "k = " + std::to_string(k) + " must be >= 1");
  if (k >= s.cols) return;
  float* px = ptr<float>(logits);
  // The kept set is a pure function of the ranking, so any exact selection matches the kernel.
#pragma omp parallel if (s.rows > 1 && s.rows * s.cols > kParallelGrain)
  {
    std::vector<int32_t> order(static_cast<size_t>(s.cols));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.rows; ++n) {
      float* x = px + n * s.cols;
      for (int64_t c = 0; c < s.cols; ++c) order[static_cast<size_t>(c)] = static_cast<int32_t>(c);
      const auto before = [x](int32_t a, int32_t b) {
        const uint32_t ka = rank_key(x[a]), kb = rank_key(x[b]);
        return ka > kb || (ka == kb && a < b);
      };
      std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
      const int32_t last = order[static_cast<size_t>(k - 1)];
      Selection sel;
      sel.mask = 0xFFFFFFFFu;
      sel.prefix = rank_key(x[last]);
      sel.all_tied = false;
      // Tokens tied with the k-th and ranked before it (lower index) are kept with it.
      sel.keep_tied = 0;
      for (int64_t c = 0; c <= last; ++c) sel.keep_tied += rank_key(x[c]) == sel.prefix ? 1 : 0;
      apply_selection(x, s.cols, sel);
    }
  }
}

void CpuBackend::top_p_filter_rows(const Tensor& logits, double p) {
  const char* op = "top_p_filter_rows";
  const RowShape s = expect_logits(op, logits);
  if (!(p < 1.0) || s.cols == 0) return;
  float* px = ptr<float>(logits);
#pragma omp parallel if (s.rows > 1 && s.rows * s.cols > kParallelGrain)
  {
    std::vector<double> lanes(static_cast<size_t>(kBins * kLanes));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.rows; ++n) {
      float* x = px + n * s.cols;
      Selection sel;
      if (top_p_selection(x, s.cols, p, lanes, sel)) apply_selection(x, s.cols, sel);
    }
  }
}

void CpuBackend::min_p_filter_rows(const Tensor& logits, double p) {
  const char* op = "min_p_filter_rows";
  const RowShape s = expect_logits(op, logits);
  if (!(p > 0.0)) return;
  float* px = ptr<float>(logits);
  for_rows(s.rows, s.cols, [&](int64_t n) {
    float* x = px + n * s.cols;
    const float mx = row_max(x, s.cols);
    for (int64_t c = 0; c < s.cols; ++c) {
      if (row_weight(x[c], mx) < p) x[c] = kFiltered;
    }
  });
}

void CpuBackend::repetition_penalty_rows(const Tensor& logits, const Tensor& history,
                                         const Tensor& lengths, float penalty) {
  const char* op = "repetition_penalty_rows";
  const RowShape s = expect_logits(op, logits);
  const RowShape h = expect_rows(op, "history", history, DType::kI32);
  if (history.shape().size() != 2 || h.rows != s.rows) {
    shape_fail(op, "history is " + describe(history) +
                       "; expected (B, L) with B = " + std::to_string(s.rows));
  }
  expect_tensor(op, "lengths", lengths, DType::kI32, {s.rows});
  if (!(penalty > 0.0f)) shape_fail(op, "penalty " + std::to_string(penalty) + " must be > 0");
  float* px = ptr<float>(logits);
  const int32_t* ph = ptr<int32_t>(history);
  const int32_t* pl = ptr<int32_t>(lengths);
  for (int64_t n = 0; n < s.rows; ++n) {
    float* x = px + n * s.cols;
    const int64_t len = std::clamp<int64_t>(pl[n], 0, h.cols);
    std::vector<bool> seen(static_cast<size_t>(s.cols), false);
    for (int64_t i = 0; i < len; ++i) {
      const int32_t id = ph[n * h.cols + i];
      if (id < 0 || id >= s.cols || seen[static_cast<size_t>(id)]) continue;
      seen[static_cast<size_t>(id)] = true;
      x[id] = x[id] > 0.0f ? x[id] / penalty : x[id] * penalty;
    }
  }
}

void CpuBackend::sample_rows(const Tensor& logits, uint64_t seed, int64_t step,
                             const Tensor& step_device, bool argmax, const Tensor& ids) {
  const char* op = "sample_rows";
  const RowShape s = expect_logits(op, logits);
  expect_tensor(op, "ids", ids, DType::kI32, {s.rows});
  if (s.cols == 0) shape_fail(op, "logits " + describe(logits) + " has no columns");
  if (step_device.defined()) {
    expect_tensor(op, "step_device", step_device, DType::kI32, {1});
    step = *ptr<int32_t>(step_device);
  }
  const float* px = ptr<float>(logits);
  int32_t* pi = ptr<int32_t>(ids);
  for_rows(s.rows, s.cols, [&](int64_t n) {
    const float* x = px + n * s.cols;
    const float mx = row_max(x, s.cols);
    if (argmax || !sampling::is_finite(mx)) {
      pi[n] = row_argmax(x, s.cols);
      return;
    }
    double lane_sum[kLanes] = {};
    for (int64_t c = 0; c < s.cols; ++c) {
      double& lane = lane_sum[c % kLanes];
      lane = sampling::add_rn(lane, row_weight(x[c], mx));
    }
    double group_sum[sampling::kGroups];
    double total = 0.0;
    for (int g = 0; g < sampling::kGroups; ++g) {
      double sum = 0.0;
      for (int t = g * sampling::kLaneGroup; t < (g + 1) * sampling::kLaneGroup; ++t) {
        sum = sampling::add_rn(sum, lane_sum[t]);
      }
      group_sum[g] = sum;
      total = sampling::add_rn(total, sum);
    }
    const double target = sampling::mul_rn(random::sampling_uniform(seed, n, step), total);
    double cum = 0.0;
    const int lane = sampling::locate_lane(group_sum, lane_sum, target, cum);
    int64_t pick = -1;
    for (int64_t c = lane; lane >= 0 && c < s.cols; c += kLanes) {
      const double w = row_weight(x[c], mx);
      const double next = sampling::add_rn(cum, w);
      if (w > 0.0 && target < next) {
        pick = c;
        break;
      }
      cum = next;
    }
    pi[n] = pick >= 0 ? static_cast<int32_t>(pick) : row_argmax(x, s.cols);
  });
}

void CpuBackend::append_tokens(const Tensor& history, const Tensor& lengths, const Tensor& ids,
                               const Tensor& step) {
  const char* op = "append_tokens";
  if (step.defined()) expect_tensor(op, "step", step, DType::kI32, {1});
  if (history.defined() || lengths.defined()) {
    const RowShape h = expect_rows(op, "history", history, DType::kI32);
    if (history.shape().size() != 2) {
      shape_fail(op, "history is " + describe(history) + "; expected (B, L)");
    }
    expect_tensor(op, "lengths", lengths, DType::kI32, {h.rows});
    expect_tensor(op, "ids", ids, DType::kI32, {h.rows});
    int32_t* ph = ptr<int32_t>(history);
    int32_t* pl = ptr<int32_t>(lengths);
    const int32_t* pi = ptr<int32_t>(ids);
    for (int64_t n = 0; n < h.rows; ++n) {
      if (pl[n] < 0 || pl[n] >= h.cols) continue;
      ph[n * h.cols + pl[n]] = pi[n];
      ++pl[n];
    }
  }
  if (step.defined()) ++*ptr<int32_t>(step);
}

}  // namespace nnkit::cpu
