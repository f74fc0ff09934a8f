// Purpose: backend/cpu moe_sort_by_expert (stable order, offsets, load, already-dropped slots,
// capacity drops with gate zeroing and index rewrite, bad indices), its padded (static) layout,
// logsumexp_rows, moe_combine_rows (against a double reference, padding skipped, rows without a
// source zeroed, bad slots refused), sum_squares_multi (against
// per-tensor sum_squares and a double reference, mixed dtypes, thread-count independence) and
// adamw_update_multi (against per-tensor adamw_update with the clip folded into grad_scale,
// skipped non-finite steps, grad reset, compute copies). Owned by the backend/cpu tests.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/io/half.h"
#include "reference.h"

namespace nnkit::test {
namespace {

using BackendMoeSort = CpuBackendTest;
using BackendMultiTensor = CpuBackendTest;

// What moe_sort_by_expert must produce, computed the slow way: for each expert, scan all slots.
struct SortResult {
  std::vector<int32_t> index;  // expert_index after the call
  std::vector<float> gate;
  std::vector<int32_t> token, slot, offsets;
  std::vector<float> load;
};

SortResult sort_reference(std::vector<int32_t> index, std::vector<float> gate, int64_t E, int64_t k,
                          int64_t capacity) {
  const auto S = static_cast<int64_t>(index.size());
  SortResult r;
  r.token.assign(size_t(S), 0);
  r.slot.assign(size_t(S), -1);
  int64_t row = 0;
  for (int64_t e = 0; e < E; ++e) {
    r.offsets.push_back(int32_t(row));
    int64_t chosen = 0;
    for (int64_t s = 0; s < S; ++s) {
      if (index[size_t(s)] != e) continue;
      if (capacity < 0 || chosen < capacity) {
        r.token[size_t(row)] = int32_t(s / k);
        r.slot[size_t(row)] = int32_t(s);
        ++row;
      } else {
        index[size_t(s)] = -1;
        if (!gate.empty()) gate[size_t(s)] = 0.0f;
      }
      ++chosen;
    }
    r.load.push_back(S > 0 ? float(chosen) / float(S) : 0.0f);
  }
  r.offsets.push_back(int32_t(row));
  r.index = std::move(index);
  r.gate = std::move(gate);
  return r;
}

// Runs the op on `index` (and `gate` when not empty) and returns everything it wrote.
SortResult run_sort(Backend& be, const std::vector<int32_t>& index, const std::vector<float>& gate,
                    int64_t E, int64_t k, int64_t capacity) {
  const auto S = static_cast<int64_t>(index.size());
  Tensor ti = tensor_from_i32(be, index, {S / k, k});  // the (N, k) view the router produces
  Tensor tg = gate.empty() ? Tensor() : tensor_from(be, gate, {S});
  Tensor token = tensor_from_i32(be, std::vector<int32_t>(size_t(S), 99), {S});
  Tensor slot = tensor_from_i32(be, std::vector<int32_t>(size_t(S), 99), {S});
  Tensor offsets = be.empty({E + 1}, DType::kI32);
  Tensor load = be.empty({E});
  be.moe_sort_by_expert(ti, E, k, capacity, tg, token, slot, offsets, load);
  SortResult r;
  r.index = to_vector_i32(be, ti);
  if (tg.defined()) r.gate = to_vector(be, tg);
  r.token = to_vector_i32(be, token);
  r.slot = to_vector_i32(be, slot);
  r.offsets = to_vector_i32(be, offsets);
  r.load = to_vector(be, load);
  return r;
}

void expect_same(const SortResult& got, const SortResult& want, const std::string& what) {
  EXPECT_EQ(got.index, want.index) << what << ": expert_index";
  EXPECT_EQ(got.gate, want.gate) << what << ": gate";
  EXPECT_EQ(got.token, want.token) << what << ": token";
  EXPECT_EQ(got.slot, want.slot) << what << ": slot";
  EXPECT_EQ(got.offsets, want.offsets) << what << ": offsets";
  EXPECT_EQ(got.load, want.load) << what << ": load";
}

TEST_F(BackendMoeSort, DroplessIsAStableSortWithOffsetsAndLoad) {
  // N = 5 tokens, k = 2, E = 4; slot 5 (token 2, rank 1) was already dropped by the router.
  const std::vector<int32_t> index = {2, 0, 0, 2, 3, -1, 0, 2, 2, 0};
  const std::vector<float> gate = {.6f, .4f, .7f, .3f, .9f, .1f, .5f, .5f, .8f, .2f};
  const SortResult got = run_sort(be(), index, gate, 4, 2, -1);
  EXPECT_EQ(got.offsets, (std::vector<int32_t>{0, 4, 4, 8, 9}));
  // Expert 0: slots 1, 2, 6, 9; expert 1: none; expert 2: slots 0, 3, 7, 8; expert 3: slot 4.
  EXPECT_EQ(got.slot, (std::vector<int32_t>{1, 2, 6, 9, 0, 3, 7, 8, 4, -1}));
  EXPECT_EQ(got.token, (std::vector<int32_t>{0, 1, 3, 4, 0, 1, 3, 4, 2, 0}));
  // load = chosen / (N*k): the -1 slot counts in the denominator only.
  EXPECT_EQ(got.load, (std::vector<float>{0.4f, 0.0f, 0.4f, 0.1f}));
  EXPECT_EQ(got.index, index);  // nothing dropped, nothing rewritten
  EXPECT_EQ(got.gate, gate);
  expect_same(got, sort_reference(index, gate, 4, 2, -1), "dropless");
  // Dropless calls may leave the gate out.
  const SortResult no_gate = run_sort(be(), index, {}, 4, 2, -1);
  EXPECT_EQ(no_gate.slot, got.slot);
  EXPECT_EQ(no_gate.offsets, got.offsets);
}

TEST_F(BackendMoeSort, CapacityKeepsTheFirstSlotsAndDropsTheRest) {
  const std::vector<int32_t> index = {2, 0, 0, 2, 3, -1, 0, 2, 2, 0};
  const std::vector<float> gate = {.6f, .4f, .7f, .3f, .9f, .1f, .5f, .5f, .8f, .2f};
  const SortResult got = run_sort(be(), index, gate, 4, 2, 2);
  EXPECT_EQ(got.offsets, (std::vector<int32_t>{0, 2, 2, 4, 5}));
  EXPECT_EQ(got.slot, (std::vector<int32_t>{1, 2, 0, 3, 4, -1, -1, -1, -1, -1}));
  EXPECT_EQ(got.token, (std::vector<int32_t>{0, 1, 0, 1, 2, 0, 0, 0, 0, 0}));
  // Slots 6, 9 (expert 0) and 7, 8 (expert 2) are dropped; slot 5 stays as the router left it.
  EXPECT_EQ(got.index, (std::vector<int32_t>{2, 0, 0, 2, 3, -1, -1, -1, -1, -1}));
  EXPECT_EQ(got.gate, (std::vector<float>{.6f, .4f, .7f, .3f, .9f, .1f, 0, 0, 0, 0}));
  // The load is counted before dropping.
  EXPECT_EQ(got.load, (std::vector<float>{0.4f, 0.0f, 0.4f, 0.1f}));
  expect_same(got, sort_reference(index, gate, 4, 2, 2), "capacity 2");

  const SortResult none = run_sort(be(), index, gate, 4, 2, 0);
  EXPECT_EQ(none.offsets, (std::vector<int32_t>(5, 0)));
  EXPECT_EQ(none.slot, (std::vector<int32_t>(10, -1)));
  EXPECT_EQ(none.index, (std::vector<int32_t>(10, -1)));
  EXPECT_EQ(none.load, got.load);
  expect_same(none, sort_reference(index, gate, 4, 2, 0), "capacity 0");
}

// Random expert choices skewed towards low experts (so capacity bites), with some slots already
// dropped by the router.
std::vector<int32_t> skewed_routing(int64_t slots, int64_t E, uint64_t seed) {
  std::vector<int32_t> index(static_cast<size_t>(slots));
  const std::vector<float> draw = random_values(index.size(), seed);
  for (size_t s = 0; s < index.size(); ++s) {
    const float u = (draw[s] + 1.0f) * 0.5f;
    index[s] = s % 17 == 5 ? -1 : std::min<int32_t>(int32_t(E - 1), int32_t(u * u * E));
  }
  return index;
}

TEST_F(BackendMoeSort, RandomRoutingMatchesTheReference) {
  const int64_t N = 3001, k = 3, E = 13;
  const std::vector<int32_t> index = skewed_routing(N * k, E, 400);
  const std::vector<float> gate = random_values(index.size(), 401);
  for (int64_t capacity : {-1, 0, 1, 500, 100000}) {
    expect_same(run_sort(be(), index, gate, E, k, capacity),
                sort_reference(index, gate, E, k, capacity),
                "capacity " + std::to_string(capacity));
  }
}

TEST_F(BackendMoeSort, EmptyInputWritesZeroOffsetsAndLoads) {
  const SortResult got = run_sort(be(), {}, {}, 3, 2, -1);
  EXPECT_EQ(got.offsets, (std::vector<int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(got.load, (std::vector<float>{0, 0, 0}));
}

// The message of the ShapeError `fn` throws ("" and a failure when it throws none).
std::string shape_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ShapeError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ShapeError";
  return "";
}

TEST_F(BackendMoeSort, BadIndexIsAShapeErrorNamingTheSlotAndLeavesEverythingUntouched) {
  for (int32_t bad : {4, -2}) {
    const std::vector<int32_t> index = {2, 0, 0, bad, 3, 1};
    Tensor ti = tensor_from_i32(be(), index, {6});
    Tensor gate = tensor_from(be(), std::vector<float>(6, 0.5f), {6});
    Tensor token = be().zeros({6}, DType::kI32), slot = be().zeros({6}, DType::kI32);
    Tensor offsets = be().zeros({5}, DType::kI32), load = be().zeros({4});
    const std::string message = shape_error(
        [&] { be().moe_sort_by_expert(ti, 4, 2, 0, gate, token, slot, offsets, load); });
    EXPECT_NE(message.find("[backend/cpu] moe_sort_by_expert:"), std::string::npos) << message;
    EXPECT_NE(message.find("expert_index[3] = " + std::to_string(bad)), std::string::npos)
        << message;
    EXPECT_NE(message.find("[-1, 4)"), std::string::npos) << message;
    EXPECT_EQ(to_vector_i32(be(), ti), index);  // checked before anything was written
    EXPECT_EQ(to_vector(be(), gate), std::vector<float>(6, 0.5f));
    EXPECT_EQ(to_vector_i32(be(), offsets), std::vector<int32_t>(5, 0));
  }
}

TEST_F(BackendMoeSort, ArgumentsAreChecked) {
  Tensor ti = tensor_from_i32(be(), {0, 1, 1, 0, 0, 1}, {6});
  Tensor token = be().zeros({6}, DType::kI32), slot = be().zeros({6}, DType::kI32);
  Tensor offsets = be().zeros({3}, DType::kI32), load = be().zeros({2});
  Tensor gate = be().zeros({6});
  auto sort = [&](int64_t k, int64_t capacity, const Tensor& g, const Tensor& off) {
    be().moe_sort_by_expert(ti, 2, k, capacity, g, token, slot, off, load);
  };
  EXPECT_NE(shape_error([&] { sort(4, -1, gate, offsets); }).find("top_k = 4"), std::string::npos);
  EXPECT_NE(shape_error([&] { sort(2, 1, Tensor(), offsets); }).find("gate"), std::string::npos);
  EXPECT_NE(shape_error([&] { sort(2, -1, gate, be().zeros({2}, DType::kI32)); }).find("offsets"),
            std::string::npos);
  EXPECT_NE(shape_error([&] { sort(2, -1, be().zeros({5}), offsets); }).find("gate"),
            std::string::npos);
}

// ---- moe_sort_by_expert_padded: the static layout of CUDA Graph steps -----------------------

// The padded op's outputs, with token/slot of E * capacity rows.
SortResult run_padded_sort(Backend& be, const std::vector<int32_t>& index,
                           const std::vector<float>& gate, int64_t E, int64_t k, int64_t capacity) {
  const auto S = static_cast<int64_t>(index.size());
  Tensor ti = tensor_from_i32(be, index, {S / k, k});
  Tensor tg = tensor_from(be, gate, {S});
  Tensor token =
      tensor_from_i32(be, std::vector<int32_t>(size_t(E * capacity), 99), {E * capacity});
  Tensor slot = tensor_from_i32(be, std::vector<int32_t>(size_t(E * capacity), 99), {E * capacity});
  Tensor offsets = be.empty({E + 1}, DType::kI32);
  Tensor load = be.empty({E});
  be.moe_sort_by_expert_padded(ti, E, k, capacity, tg, token, slot, offsets, load);
  SortResult r;
  r.index = to_vector_i32(be, ti);
  r.gate = to_vector(be, tg);
  r.token = to_vector_i32(be, token);
  r.slot = to_vector_i32(be, slot);
  r.offsets = to_vector_i32(be, offsets);
  r.load = to_vector(be, load);
  return r;
}

// The compact reference moved into blocks: expert e's kept rows first in its block, then -1.
SortResult padded_reference(const std::vector<int32_t>& index, const std::vector<float>& gate,
                            int64_t E, int64_t k, int64_t capacity) {
  SortResult r = sort_reference(index, gate, E, k, capacity);
  std::vector<int32_t> token(size_t(E * capacity), -1), slot(size_t(E * capacity), -1);
  for (int64_t e = 0; e < E; ++e) {
    for (int32_t row = r.offsets[size_t(e)]; row < r.offsets[size_t(e) + 1]; ++row) {
      const size_t at = size_t(e * capacity + (row - r.offsets[size_t(e)]));
      token[at] = r.token[size_t(row)];
      slot[at] = r.slot[size_t(row)];
    }
  }
  r.token = std::move(token);
  r.slot = std::move(slot);
  return r;
}

TEST_F(BackendMoeSort, PaddedLayoutGivesEachExpertAFixedBlock) {
  const std::vector<int32_t> index = {2, 0, 0, 2, 3, -1, 0, 2, 2, 0};
  const std::vector<float> gate = {.6f, .4f, .7f, .3f, .9f, .1f, .5f, .5f, .8f, .2f};
  const SortResult got = run_padded_sort(be(), index, gate, 4, 2, 2);
  // Expert 0 keeps slots 1, 2; expert 1 nothing; expert 2 slots 0, 3; expert 3 slot 4.
  EXPECT_EQ(got.slot, (std::vector<int32_t>{1, 2, -1, -1, 0, 3, 4, -1}));
  EXPECT_EQ(got.token, (std::vector<int32_t>{0, 1, -1, -1, 0, 1, 2, -1}));
  EXPECT_EQ(got.offsets, (std::vector<int32_t>{0, 2, 2, 4, 5}));  // compact: 5 kept
  EXPECT_EQ(got.index, (std::vector<int32_t>{2, 0, 0, 2, 3, -1, -1, -1, -1, -1}));
  EXPECT_EQ(got.gate, (std::vector<float>{.6f, .4f, .7f, .3f, .9f, .1f, 0, 0, 0, 0}));
  EXPECT_EQ(got.load, (std::vector<float>{0.4f, 0.0f, 0.4f, 0.1f}));
  expect_same(got, padded_reference(index, gate, 4, 2, 2), "padded capacity 2");
}

TEST_F(BackendMoeSort, PaddedRandomRoutingMatchesTheReference) {
  const int64_t N = 1001, k = 3, E = 13;
  const std::vector<int32_t> index = skewed_routing(N * k, E, 410);
  const std::vector<float> gate = random_values(index.size(), 411);
  for (int64_t capacity : {int64_t(1), int64_t(50), int64_t(300), N}) {
    expect_same(run_padded_sort(be(), index, gate, E, k, capacity),
                padded_reference(index, gate, E, k, capacity),
                "padded capacity " + std::to_string(capacity));
  }
}

TEST_F(BackendMoeSort, PaddedArgumentsAreChecked) {
  Tensor ti = tensor_from_i32(be(), {0, 1, 1, 0, 0, 1}, {6});
  Tensor offsets = be().zeros({3}, DType::kI32), load = be().zeros({2});
  Tensor gate = be().zeros({6});
  Tensor rows4 = be().zeros({4}, DType::kI32), rows6 = be().zeros({6}, DType::kI32);
  EXPECT_NE(shape_error([&] {
              be().moe_sort_by_expert_padded(ti, 2, 2, 0, gate, rows4, rows4, offsets, load);
            }).find("capacity >= 1"),
            std::string::npos);
  // capacity 2 needs E * 2 = 4 rows, not 6.
  EXPECT_NE(shape_error([&] {
              be().moe_sort_by_expert_padded(ti, 2, 2, 2, gate, rows6, rows6, offsets, load);
            }).find("token"),
            std::string::npos);
}

// ---- logsumexp_rows -------------------------------------------------------------------------

TEST_F(BackendMoeSort, CombineRowsWeightsBySlotZeroesUnchosenRowsAndSkipsPadding) {
  const int64_t T = 4, k = 2, C = 5, N = 6;
  // Rows routed to tokens 2, 0, padding, 2, 0, 1 (token 3 gets none); slots into (T * k) gates.
  const std::vector<int32_t> token = {2, 0, -1, 2, 0, 1};
  const std::vector<int32_t> slot = {4, 0, -1, 5, 1, 3};
  std::vector<float> hsrc;
  Tensor src = random({N, C}, 87, 1.0f, &hsrc);
  std::vector<float> hgate;
  Tensor gate = random({T * k}, 88, 1.0f, &hgate);
  Tensor dst = random({T, C}, 89);  // stale values: every row must be written
  be().moe_combine_rows(src, tensor_from_i32(be(), token, {N}), tensor_from_i32(be(), slot, {N}),
                        gate, dst);
  std::vector<double> want(size_t(T * C), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (token[size_t(n)] < 0) continue;
    for (int64_t c = 0; c < C; ++c) {
      want[size_t(token[size_t(n)] * C + c)] +=
          double(hgate[size_t(slot[size_t(n)])]) * hsrc[size_t(n * C + c)];
    }
  }
  expect_close(host(dst), want, 1e-6, 1e-6, "moe_combine_rows");
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(host(dst)[size_t(3 * C + c)], 0.0f);
  // A slot outside the gates is refused with the op's name.
  try {
    be().moe_combine_rows(src, tensor_from_i32(be(), token, {N}),
                          tensor_from_i32(be(), {4, 0, -1, 5, 1, 99}, {N}), gate, dst);
    ADD_FAILURE() << "expected a ShapeError for slot 99";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("moe_combine_rows"), std::string::npos) << e.what();
  }
}

TEST_F(BackendMoeSort, LogsumexpRowsIsStableAndMatchesADoubleReference) {
  // Rows of ordinary values, values that overflow exp() without the max, and -inf entries.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {0.5f, -1.0f, 2.0f, 0.0f, 1000.0f, 999.0f, 998.0f, -50.0f,
                                -inf, 3.0f,  -inf, -inf, -inf,    -inf,   -inf,   -inf};
  Tensor out = be().empty({4});
  be().logsumexp_rows(tensor_from(be(), x, {4, 4}), out);
  const std::vector<float> got = to_vector(be(), out);
  for (size_t n = 0; n < 3; ++n) {
    double top = -INFINITY;
    for (size_t c = 0; c < 4; ++c) top = std::max(top, double(x[n * 4 + c]));
    double sum = 0.0;
    for (size_t c = 0; c < 4; ++c) sum += std::exp(double(x[n * 4 + c]) - top);
    const double want = top + std::log(sum);
    EXPECT_NEAR(got[n], want, 1e-6 * std::max(1.0, std::fabs(want))) << "row " << n;
  }
  EXPECT_EQ(got[3], -inf) << "log(0) of an all -inf row";
  EXPECT_NE(shape_error([&] {
              be().logsumexp_rows(be().zeros({4, 4}), be().zeros({3}));
            }).find("out"),
            std::string::npos);
}

// ---- sum_squares_multi ----------------------------------------------------------------------

// A bf16 or f16 host tensor holding `values` rounded, and the rounded values widened back.
Tensor half_tensor(Backend& be, const std::vector<float>& values, DType dtype,
                   std::vector<float>* widened) {
  std::vector<uint16_t> bits(values.size());
  widened->resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    bits[i] = dtype == DType::kBF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
    (*widened)[i] = dtype == DType::kBF16 ? bf16_to_f32(bits[i]) : f16_to_f32(bits[i]);
  }
  Tensor t = be.empty({int64_t(values.size())}, dtype);
  be.copy_from_host(t, bits.data());
  return t;
}

TEST_F(BackendMultiTensor, SumSquaresMultiEqualsTheSumOfPerTensorSums) {
  // Odd sizes: 1 element, empty, non-multiples of 4, and one spanning several 2^15 chunks.
  std::vector<Tensor> xs;
  Tensor per_tensor = tensor_from(be(), {0.25f}, {1});
  double want = 0.25;
  uint64_t seed = 410;
  for (int64_t n : {1, 0, 7, 1023, 100003, 5, 32768}) {
    std::vector<float> h;
    xs.push_back(random({n}, seed++, 2.0f, &h));
    be().sum_squares(xs.back(), per_tensor);
    for (float x : h) want += double(x) * x;
  }
  Tensor out = tensor_from(be(), {0.25f}, {1});  // accumulates
  be().sum_squares_multi(xs, out);
  expect_close(host(out), {want}, 1e-6, 0.0, "sum_squares_multi vs double");
  expect_close(host(out), to_double(host(per_tensor)), 1e-6, 0.0, "vs per-tensor sum_squares");
}

TEST_F(BackendMultiTensor, SumSquaresMultiTakesHalfPrecisionAndIgnoresThreadCount) {
  std::vector<float> wide_bf16, wide_f16, h32;
  Tensor bf16 = half_tensor(be(), random_values(70001, 420, 3.0f), DType::kBF16, &wide_bf16);
  Tensor f16 = half_tensor(be(), random_values(333, 421, 3.0f), DType::kF16, &wide_f16);
  Tensor f32 = random({65537}, 422, 1.0f, &h32);
  double want = 0.0;
  for (const auto* v : {&wide_bf16, &wide_f16, &h32}) {
    for (float x : *v) want += double(x) * x;
  }
  Tensor out = be().zeros({1});
  be().sum_squares_multi({bf16, f32, f16}, out);
  expect_close(host(out), {want}, 1e-6, 0.0, "mixed dtypes");
  // Fixed chunks added in order: one thread gives the same bits as two.
  std::shared_ptr<Backend> one_thread = cpu_backend(1);
  Tensor out1 = one_thread->zeros({1});
  one_thread->sum_squares_multi({bf16, f32, f16}, out1);
  EXPECT_EQ(std::bit_cast<uint32_t>(host(out)[0]),
            std::bit_cast<uint32_t>(to_vector(*one_thread, out1)[0]));
}

// ---- adamw_update_multi ---------------------------------------------------------------------

struct OptimState {
  std::vector<float> p, g, m, v;
};

// n-element param/grad/moment values from `seed` (second moments non-negative).
OptimState random_state(int64_t n, uint64_t seed) {
  OptimState s{random_values(size_t(n), seed), random_values(size_t(n), seed + 1, 3.0f),
               random_values(size_t(n), seed + 2, 0.1f), random_values(size_t(n), seed + 3, 0.1f)};
  for (float& x : s.v) x = std::abs(x);
  return s;
}

struct DeviceState {
  Tensor p, g, m, v, copy;
};

DeviceState upload(Backend& be, const OptimState& s, DType copy_dtype) {
  const Shape shape{int64_t(s.p.size())};
  DeviceState d{tensor_from(be, s.p, shape), tensor_from(be, s.g, shape),
                tensor_from(be, s.m, shape), tensor_from(be, s.v, shape), Tensor()};
  if (copy_dtype != DType::kI32) {         // kI32 = no compute copy
    d.copy = be.empty(shape, copy_dtype);  // 7 everywhere: a value the update never produces
    be.convert(d.copy, tensor_from(be, std::vector<float>(s.p.size(), 7.0f), shape));
  }
  return d;
}

// The clip in the contract's order, in f32 (what both backends compute on their side).
float effective_scale(float sum_squares, float grad_scale, float max_norm) {
  float clip = 1.0f;
  if (max_norm > 0.0f) clip = std::min(1.0f, max_norm / (std::sqrt(sum_squares) * grad_scale));
  return grad_scale * clip;
}

// The widened values of a bf16/f16/f32 tensor.
std::vector<float> widened(Backend& be, const Tensor& t) {
  Tensor wide = be.empty(t.shape());
  be.convert(wide, t);
  return to_vector(be, wide);
}

TEST_F(BackendMultiTensor, AdamwUpdateMultiEqualsPerTensorAdamwWithTheClip) {
  const std::vector<int64_t> sizes = {1, 7, 4096, 33, 100001};
  const std::vector<DType> copies = {DType::kBF16, DType::kI32, DType::kF16, DType::kF32,
                                     DType::kBF16};
  AdamWStep step;
  step.lr = 1e-2f;
  step.step = 3;
  step.grad_scale = 0.5f;                      // e.g. removing a loss scale of 2
  step.weight_decay = 123.0f;                  // ignored: the per-tensor weight_decay applies
  for (float max_norm : {0.0f, 1.0f, 1e9f}) {  // off, active, inactive
    std::vector<OptimState> host_states;
    std::vector<DeviceState> fused, single;
    std::vector<AdamWTensor> tensors;
    std::vector<Tensor> grads;
    for (size_t t = 0; t < sizes.size(); ++t) {
      host_states.push_back(random_state(sizes[t], 500 + 10 * t));
      fused.push_back(upload(be(), host_states.back(), copies[t]));
      single.push_back(upload(be(), host_states.back(), copies[t]));
      const DeviceState& d = fused.back();
      tensors.push_back({d.p, d.g, d.m, d.v, d.copy, 0.1f * float(t)});
      grads.push_back(d.g);
    }
    Tensor gss = be().zeros({1});
    be().sum_squares_multi(grads, gss);
    const float sum_squares = host(gss)[0];
    be().adamw_update_multi(tensors, step, gss, max_norm);

    AdamWStep per_tensor = step;
    per_tensor.grad_scale = effective_scale(sum_squares, step.grad_scale, max_norm);
    if (max_norm == 1.0f) {
      EXPECT_LT(per_tensor.grad_scale, step.grad_scale);  // the clip is active
    } else {
      EXPECT_EQ(per_tensor.grad_scale, step.grad_scale);
    }
    for (size_t t = 0; t < sizes.size(); ++t) {
      const std::string what =
          "max_norm " + std::to_string(max_norm) + " tensor " + std::to_string(t);
      per_tensor.weight_decay = 0.1f * float(t);
      const DeviceState& s = single[t];
      be().adamw_update(s.p, s.g, s.m, s.v, per_tensor);
      const DeviceState& f = fused[t];
      EXPECT_EQ(host(f.p), host(s.p)) << what << " param";
      EXPECT_EQ(host(f.m), host(s.m)) << what << " m";
      EXPECT_EQ(host(f.v), host(s.v)) << what << " v";
      EXPECT_NE(host(f.p), host_states[t].p) << what << " param moved";
      EXPECT_EQ(host(f.g), std::vector<float>(size_t(sizes[t]), 0.0f)) << what << " grad reset";
      if (f.copy.defined()) {
        // The copy is the updated f32 value rounded once.
        Tensor rounded = be().empty(s.p.shape(), f.copy.dtype());
        be().convert(rounded, s.p);
        EXPECT_EQ(widened(be(), f.copy), widened(be(), rounded)) << what << " compute copy";
      }
    }
  }
}

TEST_F(BackendMultiTensor, NonFiniteNormSkipsTheStepAndLeavesTheGrads) {
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    const OptimState a = random_state(37, 600), b = random_state(5, 610);
    DeviceState da = upload(be(), a, DType::kBF16), db = upload(be(), b, DType::kI32);
    const std::vector<float> copy_before = widened(be(), da.copy);
    Tensor gss = tensor_from(be(), {bad}, {1});
    AdamWStep step;
    be().adamw_update_multi(
        {{da.p, da.g, da.m, da.v, da.copy, 0.1f}, {db.p, db.g, db.m, db.v, Tensor(), 0.0f}}, step,
        gss, 1.0f);
    for (const auto& [d, s] : {std::pair{&da, &a}, std::pair{&db, &b}}) {
      EXPECT_EQ(host(d->p), s->p);
      EXPECT_EQ(host(d->m), s->m);
      EXPECT_EQ(host(d->v), s->v);
      EXPECT_EQ(host(d->g), s->g);  // left for the caller to inspect
    }
    EXPECT_EQ(widened(be(), da.copy), copy_before);
  }
}

TEST_F(BackendMultiTensor, MultiTensorArgumentsAreChecked) {
  const OptimState a = random_state(8, 620);
  DeviceState d = upload(be(), a, DType::kI32);
  Tensor gss = be().zeros({1});
  AdamWStep step;
  EXPECT_NE(shape_error([&] {
              be().adamw_update_multi({{d.p, be().zeros({9}), d.m, d.v, Tensor(), 0.0f}}, step, gss,
                                      1.0f);
            }).find("tensors[0].grad"),
            std::string::npos);
  EXPECT_NE(shape_error([&] {
              be().adamw_update_multi({{d.p, d.g, d.m, d.v, be().zeros({3}, DType::kBF16), 0.0f}},
                                      step, gss, 1.0f);
            }).find("compute_copy"),
            std::string::npos);
  EXPECT_EQ(host(d.p), a.p);  // nothing moved
  EXPECT_NE(shape_error([&] {
              be().sum_squares_multi({d.p, be().zeros({2}, DType::kI32)}, gss);
            }).find("xs[1]"),
            std::string::npos);
}

}  // namespace
}  // namespace nnkit::test
