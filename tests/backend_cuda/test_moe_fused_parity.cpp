// Purpose: backend/cuda moe_sort_by_expert, sum_squares_multi and adamw_update_multi against the
// CPU backend on large random inputs: the sort bit for bit (one-block and multi-tile paths,
// capacities, already-dropped slots), the multi-tensor ops over many tensors of odd sizes and
// addresses (1 element, non-multiples of 4, misaligned slices, more tensors than one launch
// takes), determinism, the skipped non-finite step, and the device fault for a bad expert index.
// Owned by the backend/cuda tests.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "nnkit/error.h"

namespace nnkit::test {
namespace {

using CudaMoeSort = CudaParityTest;

// Everything moe_sort_by_expert writes, read back.
struct SortOutputs {
  std::vector<int32_t> index, token, slot, offsets;
  std::vector<float> gate, load;
};

SortOutputs run_sort(Backend& be, const std::vector<int32_t>& index, const std::vector<float>& gate,
                     int64_t E, int64_t k, int64_t capacity) {
  const auto S = static_cast<int64_t>(index.size());
  Tensor ti = tensor_from_i32(be, index, {S / k, k});
  Tensor tg = gate.empty() ? Tensor() : tensor_from(be, gate, {S});
  // Poisoned outputs: an element the op fails to write cannot match.
  Tensor token = tensor_from_i32(be, std::vector<int32_t>(size_t(S), 12345), {S});
  Tensor slot = tensor_from_i32(be, std::vector<int32_t>(size_t(S), 12345), {S});
  Tensor offsets = tensor_from_i32(be, std::vector<int32_t>(size_t(E + 1), 12345), {E + 1});
  Tensor load = tensor_from(be, std::vector<float>(size_t(E), -1.0f), {E});
  be.moe_sort_by_expert(ti, E, k, capacity, tg, token, slot, offsets, load);
  SortOutputs r;
  r.index = to_vector_i32(be, ti);
  if (tg.defined()) r.gate = to_vector(be, tg);
  r.token = to_vector_i32(be, token);
  r.slot = to_vector_i32(be, slot);
  r.offsets = to_vector_i32(be, offsets);
  r.load = to_vector(be, load);
  return r;
}

void expect_same_sort(const SortOutputs& cuda, const SortOutputs& cpu, const std::string& what) {
  EXPECT_EQ(cuda.offsets, cpu.offsets) << what << ": offsets";
  EXPECT_EQ(cuda.token, cpu.token) << what << ": token";
  EXPECT_EQ(cuda.slot, cpu.slot) << what << ": slot";
  EXPECT_EQ(cuda.index, cpu.index) << what << ": expert_index";
  EXPECT_EQ(float_bits(cuda.gate), float_bits(cpu.gate)) << what << ": gate";
  EXPECT_EQ(float_bits(cuda.load), float_bits(cpu.load)) << what << ": load";
}

// Skewed routing (low experts popular, so a capacity drops slots) with some -1 slots.
std::vector<int32_t> random_routing(int64_t slots, int64_t E, uint64_t seed) {
  std::vector<int32_t> index(static_cast<size_t>(slots));
  const std::vector<float> draw = random_values(index.size(), seed);
  for (size_t s = 0; s < index.size(); ++s) {
    const float u = (draw[s] + 1.0f) * 0.5f;
    index[s] = s % 29 == 11 ? -1 : std::min<int32_t>(int32_t(E - 1), int32_t(u * u * float(E)));
  }
  return index;
}

TEST_F(CudaMoeSort, MatchesTheCpuBitForBit) {
  struct Case {
    int64_t tokens, k, experts;
  };
  // Decode-sized (one block), the one-block limit, just past it, the training size the op is
  // tuned for, many experts with few slots (multi-tile path), and ~1M slots.
  for (const Case& c :
       {Case{2, 2, 64}, Case{1, 1, 16}, Case{2048, 2, 16}, Case{4097, 1, 16}, Case{32768, 2, 16},
        Case{16384, 4, 64}, Case{500, 2, 300}, Case{262144, 4, 64}}) {
    const int64_t S = c.tokens * c.k;
    const std::vector<int32_t> index = random_routing(S, c.experts, 700 + uint64_t(S));
    const std::vector<float> gate = random_values(size_t(S), 701);
    const int64_t fair = S / c.experts;
    for (int64_t capacity : {int64_t(-1), int64_t(0), fair, 2 * fair, S}) {
      const std::string what = "N*k " + std::to_string(S) + " E " + std::to_string(c.experts) +
                               " capacity " + std::to_string(capacity);
      const SortOutputs cuda_out = run_sort(cuda(), index, gate, c.experts, c.k, capacity);
      expect_same_sort(cuda_out, run_sort(cpu(), index, gate, c.experts, c.k, capacity), what);
      if (capacity < 0) {  // dropless calls may leave the gate out
        const SortOutputs no_gate = run_sort(cuda(), index, {}, c.experts, c.k, capacity);
        EXPECT_EQ(no_gate.slot, cuda_out.slot) << what << " without gate";
      }
      if (::testing::Test::HasFailure()) return;  // one failing case says enough
    }
  }
}

// The padded (static) layout: token/slot of E * capacity rows, poisoned before the call.
SortOutputs run_padded_sort(Backend& be, const std::vector<int32_t>& index,
                            const std::vector<float>& gate, int64_t E, int64_t k,
                            int64_t capacity) {
  const auto S = static_cast<int64_t>(index.size());
  const int64_t rows = E * capacity;
  Tensor ti = tensor_from_i32(be, index, {S / k, k});
  Tensor tg = tensor_from(be, gate, {S});
  Tensor token = tensor_from_i32(be, std::vector<int32_t>(size_t(rows), 12345), {rows});
  Tensor slot = tensor_from_i32(be, std::vector<int32_t>(size_t(rows), 12345), {rows});
  Tensor offsets = tensor_from_i32(be, std::vector<int32_t>(size_t(E + 1), 12345), {E + 1});
  Tensor load = tensor_from(be, std::vector<float>(size_t(E), -1.0f), {E});
  be.moe_sort_by_expert_padded(ti, E, k, capacity, tg, token, slot, offsets, load);
  SortOutputs r;
  r.index = to_vector_i32(be, ti);
  r.gate = to_vector(be, tg);
  r.token = to_vector_i32(be, token);
  r.slot = to_vector_i32(be, slot);
  r.offsets = to_vector_i32(be, offsets);
  r.load = to_vector(be, load);
  return r;
}

TEST_F(CudaMoeSort, PaddedLayoutMatchesTheCpuBitForBit) {
  struct Case {
    int64_t tokens, k, experts;
  };
  // Decode-sized, the one-block kernel, the multi-tile path and the seed model's training size.
  for (const Case& c : {Case{2, 2, 64}, Case{2048, 2, 16}, Case{16384, 4, 16}}) {
    const int64_t S = c.tokens * c.k;
    const std::vector<int32_t> index = random_routing(S, c.experts, 730 + uint64_t(S));
    const std::vector<float> gate = random_values(size_t(S), 731);
    const int64_t fair = std::max<int64_t>(1, S / c.experts);
    for (int64_t capacity : {int64_t(1), fair, (5 * fair) / 4, c.tokens}) {
      const std::string what =
          "padded N*k " + std::to_string(S) + " capacity " + std::to_string(capacity);
      expect_same_sort(run_padded_sort(cuda(), index, gate, c.experts, c.k, capacity),
                       run_padded_sort(cpu(), index, gate, c.experts, c.k, capacity), what);
      if (::testing::Test::HasFailure()) return;
    }
  }
}

TEST_F(CudaMoeSort, LogsumexpRowsMatchesTheCpu) {
  // The router's shape (N, E) and a wide one; values large enough that exp() needs the max.
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{4096, 16}, {37, 1000}}) {
    std::vector<float> x = random_values(size_t(rows * cols), 740, 30.0f);
    x[0] = 500.0f;
    Tensor out_cuda = cuda().empty({rows}), out_cpu = cpu().empty({rows});
    cuda().logsumexp_rows(tensor_from(cuda(), x, {rows, cols}), out_cuda);
    cpu().logsumexp_rows(tensor_from(cpu(), x, {rows, cols}), out_cpu);
    // Both sum in double from the same f32 max: within a few f32 ulps.
    expect_close_to_cpu(to_vector(cuda(), out_cuda), to_vector(cpu(), out_cpu),
                        Tolerance{1e-6, 1e-6}, "logsumexp_rows");
  }
}

TEST_F(CudaMoeSort, RepeatsBitForBit) {
  const std::vector<int32_t> index = random_routing(65536, 16, 710);
  const std::vector<float> gate = random_values(index.size(), 711);
  const SortOutputs first = run_sort(cuda(), index, gate, 16, 2, 3000);
  const SortOutputs second = run_sort(cuda(), index, gate, 16, 2, 3000);
  expect_same_sort(first, second, "rerun");
}

std::string shape_error_message(const std::function<void()>& fn, const std::string& what) {
  try {
    fn();
  } catch (const ShapeError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": expected a ShapeError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << what << ": nothing was thrown";
  return "";
}

TEST_F(CudaMoeSort, BadExpertIndexIsReportedBySynchronize) {
  for (int64_t S : {8, 65536}) {  // the one-block and the multi-tile kernels
    std::vector<int32_t> index = random_routing(S, 16, 720);
    index[size_t(S - 3)] = 16;
    index[size_t(S - 2)] = -7;
    Tensor ti = tensor_from_i32(cuda(), index, {S});
    Tensor token = cuda().empty({S}, DType::kI32), slot = cuda().empty({S}, DType::kI32);
    Tensor offsets = cuda().empty({17}, DType::kI32), load = cuda().empty({16});
    EXPECT_NO_THROW(cuda().moe_sort_by_expert(ti, 16, 2, -1, Tensor(), token, slot, offsets, load));
    const std::string message =
        shape_error_message([&] { cuda().synchronize(); }, "synchronize after moe_sort");
    EXPECT_NE(message.find("moe_sort_by_expert"), std::string::npos) << message;
    // The first fault recorded wins: either bad value, with its slot, against 16 experts.
    const bool names_one =
        message.find("index 16 at row " + std::to_string(S - 3)) != std::string::npos ||
        message.find("index -7 at row " + std::to_string(S - 2)) != std::string::npos;
    EXPECT_TRUE(names_one) << message;
    EXPECT_NE(message.find("16)"), std::string::npos) << message;
    EXPECT_NO_THROW(cuda().synchronize()) << "the fault is reported once";
  }
  // The backend still sorts correctly afterwards.
  const std::vector<int32_t> index = random_routing(1000, 8, 721);
  expect_same_sort(run_sort(cuda(), index, {}, 8, 1, -1), run_sort(cpu(), index, {}, 8, 1, -1),
                   "after the fault");
}

// ---- multi-tensor ops -----------------------------------------------------------------------

// One tensor's optimizer state on both backends.
struct StatePair {
  TensorPair p, g, m, v;
  TensorPair copy;  // undefined pair when there is none
};

class CudaMultiTensor : public CudaParityTest {
 protected:
  // n f32 values on both backends; `misaligned` puts them one float past an aligned start, so
  // the kernels must take their scalar path.
  TensorPair same_vector(std::vector<float> values, bool misaligned) {
    const auto n = static_cast<int64_t>(values.size());
    if (!misaligned) return same_values(values, {n});
    values.insert(values.begin(), 0.0f);
    TensorPair p = same_values(values, {n + 1, 1});
    return {p.cpu.slice_rows(1, n + 1).view({n}), p.cuda.slice_rows(1, n + 1).view({n})};
  }

  // Random state (second moments non-negative) and, unless `copy` is kI32, a compute copy.
  StatePair make_state(int64_t n, uint64_t seed, bool misaligned, DType copy) {
    std::vector<float> hv = random_values(size_t(n), seed + 3, 0.1f);
    for (float& x : hv) x = std::abs(x);
    StatePair s{same_vector(random_values(size_t(n), seed), misaligned),
                same_vector(random_values(size_t(n), seed + 1, 3.0f), misaligned),
                same_vector(random_values(size_t(n), seed + 2, 0.1f), misaligned),
                same_vector(hv, misaligned),
                {}};
    if (copy != DType::kI32) {
      s.copy = {cpu().empty({n}, copy), cuda().empty({n}, copy)};
      cpu().convert(s.copy.cpu, s.p.cpu);
      cuda().convert(s.copy.cuda, s.p.cuda);
    }
    return s;
  }
};

// Odd sizes, a few misaligned, a few large enough for many chunks.
const std::vector<int64_t> kSizes = {1, 3, 4, 5, 17, 1023, 4096, 65537, 1000003, 2, 777, 16384};

TEST_F(CudaMultiTensor, SumSquaresMultiMatchesTheCpuAndRepeats) {
  std::vector<Tensor> on_cpu, on_cuda;
  for (size_t t = 0; t < kSizes.size(); ++t) {
    TensorPair p = same_vector(random_values(size_t(kSizes[t]), 730 + t, 2.0f), t % 3 == 1);
    on_cpu.push_back(p.cpu);
    on_cuda.push_back(p.cuda);
    // bf16 and f16 copies of some (one element past an aligned start for every other tensor),
    // widened the same way on both sides.
    if (t % 2 == 0) {
      const int64_t n = kSizes[t], skip = t % 4 == 0 ? 1 : 0;
      for (DType dtype : {DType::kBF16, DType::kF16}) {
        Tensor hc = cpu().empty({n + skip, 1}, dtype).slice_rows(skip, n + skip).view({n});
        Tensor dc = cuda().empty({n + skip, 1}, dtype).slice_rows(skip, n + skip).view({n});
        cpu().convert(hc, p.cpu);
        cuda().convert(dc, p.cuda);
        on_cpu.push_back(hc);
        on_cuda.push_back(dc);
      }
    }
  }
  on_cpu.push_back(cpu().empty({0}));  // empty tensors add nothing
  on_cuda.push_back(cuda().empty({0}));
  for (int tiny = 0; tiny < 1100; ++tiny) {  // more tensors than one launch's table holds
    TensorPair p = same_random({tiny % 5 + 1}, 800 + uint64_t(tiny));
    on_cpu.push_back(p.cpu);
    on_cuda.push_back(p.cuda);
  }
  TensorPair out = same_values({1.5f}, {1});  // accumulates
  cpu().sum_squares_multi(on_cpu, out.cpu);
  cuda().sum_squares_multi(on_cuda, out.cuda);
  expect_matches_cpu(out, kPositiveSum, "sum_squares_multi");

  Tensor again = tensor_from(cuda(), {1.5f}, {1});
  cuda().sum_squares_multi(on_cuda, again);
  EXPECT_EQ(float_bits(cuda_values(out)), float_bits(to_vector(cuda(), again))) << "rerun";
}

// The widened values of a float tensor of any dtype.
std::vector<float> widened(Backend& be, const Tensor& t) {
  Tensor wide = be.empty(t.shape());
  be.convert(wide, t);
  return to_vector(be, wide);
}

AdamWTensor cuda_side(const StatePair& s, float wd) {
  return {s.p.cuda, s.g.cuda, s.m.cuda, s.v.cuda, s.copy.cuda, wd};
}
AdamWTensor cpu_side(const StatePair& s, float wd) {
  return {s.p.cpu, s.g.cpu, s.m.cpu, s.v.cpu, s.copy.cpu, wd};
}

// The largest ulp distance between two float vectors (both finite).
int64_t max_ulp(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, ulp_distance(a[i], b[i]));
  return a.size() == b.size() ? worst : std::numeric_limits<int64_t>::max();
}

TEST_F(CudaMultiTensor, AdamwUpdateMultiMatchesTheCpuAndThePerTensorStep) {
  const std::vector<DType> copies = {DType::kBF16, DType::kI32, DType::kF16, DType::kF32};
  AdamWStep step;
  step.lr = 1e-2f;
  step.step = 5;
  step.grad_scale = 0.5f;
  for (float max_norm : {0.0f, 1.0f, 1e9f}) {  // off, active, inactive
    std::vector<StatePair> fused, single;
    std::vector<AdamWTensor> on_cpu, on_cuda;
    std::vector<Tensor> cpu_grads, cuda_grads;
    // kSizes plus 500 tiny tensors: two launches' worth of tables.
    std::vector<int64_t> sizes = kSizes;
    for (int tiny = 0; tiny < 500; ++tiny) sizes.push_back(tiny % 7 + 1);
    for (size_t t = 0; t < sizes.size(); ++t) {
      const bool misaligned = t % 3 == 1;
      const DType copy = copies[t % copies.size()];
      fused.push_back(make_state(sizes[t], 900 + 10 * t, misaligned, copy));
      single.push_back(make_state(sizes[t], 900 + 10 * t, misaligned, copy));
      on_cpu.push_back(cpu_side(fused.back(), 0.01f * float(t % 5)));
      on_cuda.push_back(cuda_side(fused.back(), 0.01f * float(t % 5)));
      cpu_grads.push_back(fused.back().g.cpu);
      cuda_grads.push_back(fused.back().g.cuda);
    }
    // The same norm on both sides, so only the per-element arithmetic is compared.
    TensorPair gss = same_values({0.0f}, {1});
    cpu().sum_squares_multi(cpu_grads, gss.cpu);
    cuda().copy_from_host(gss.cuda, cpu_values(gss).data());
    cpu().adamw_update_multi(on_cpu, step, gss.cpu, max_norm);
    cuda().adamw_update_multi(on_cuda, step, gss.cuda, max_norm);

    // The per-tensor CUDA step with the clip folded in on the host, in the contract's order.
    const float sum_squares = cpu_values(gss)[0];
    float clip = 1.0f;
    if (max_norm > 0.0f)
      clip = std::min(1.0f, max_norm / (std::sqrt(sum_squares) * step.grad_scale));
    AdamWStep per_tensor = step;
    per_tensor.grad_scale = step.grad_scale * clip;
    for (size_t t = 0; t < sizes.size(); ++t) {
      const std::string what = "max_norm " + std::to_string(max_norm) + " tensor " +
                               std::to_string(t) + " (" + std::to_string(sizes[t]) + ")";
      const StatePair& f = fused[t];
      // A few roundings each (bias corrections, sqrt, division), as in the adamw_update parity.
      expect_matches_cpu(f.m, {1e-5, 1e-7}, what + " m");
      expect_matches_cpu(f.v, {1e-5, 1e-7}, what + " v");
      expect_matches_cpu(f.p, {1e-5, 1e-6}, what + " param");
      EXPECT_EQ(cuda_values(f.g), std::vector<float>(size_t(sizes[t]), 0.0f)) << what << " grad";
      const StatePair& s = single[t];
      per_tensor.weight_decay = on_cuda[t].weight_decay;
      cuda().adamw_update(s.p.cuda, s.g.cuda, s.m.cuda, s.v.cuda, per_tensor);
      // The same expressions on the same device: at most one ulp (contractions), usually none.
      EXPECT_LE(max_ulp(cuda_values(f.p), cuda_values(s.p)), 1) << what << " param vs per-tensor";
      EXPECT_LE(max_ulp(cuda_values(f.m), cuda_values(s.m)), 1) << what << " m vs per-tensor";
      EXPECT_LE(max_ulp(cuda_values(f.v), cuda_values(s.v)), 1) << what << " v vs per-tensor";
      if (f.copy.cuda.defined()) {
        // The copy is the updated f32 value rounded once (compare with convert on the device).
        Tensor rounded = cuda().empty(f.copy.cuda.shape(), f.copy.cuda.dtype());
        cuda().convert(rounded, f.p.cuda);
        EXPECT_EQ(float_bits(widened(cuda(), f.copy.cuda)), float_bits(widened(cuda(), rounded)))
            << what << " compute copy";
      }
      if (::testing::Test::HasFailure()) return;
    }
  }
}

TEST_F(CudaMultiTensor, AdamwUpdateMultiRepeatsBitForBit) {
  AdamWStep step;
  std::vector<std::vector<float>> results;
  for (int run = 0; run < 2; ++run) {
    std::vector<StatePair> states;
    std::vector<AdamWTensor> tensors;
    std::vector<Tensor> grads;
    for (size_t t = 0; t < kSizes.size(); ++t) {
      states.push_back(make_state(kSizes[t], 950 + t, t % 3 == 1, DType::kBF16));
      tensors.push_back(cuda_side(states.back(), 0.1f));
      grads.push_back(states.back().g.cuda);
    }
    Tensor gss = cuda().zeros({1});
    cuda().sum_squares_multi(grads, gss);
    cuda().adamw_update_multi(tensors, step, gss, 1.0f);
    std::vector<float> all = to_vector(cuda(), gss);
    for (const StatePair& s : states) {
      for (const Tensor* x : {&s.p.cuda, &s.m.cuda, &s.v.cuda}) {
        const std::vector<float> v = to_vector(cuda(), *x);
        all.insert(all.end(), v.begin(), v.end());
      }
      const std::vector<float> c = widened(cuda(), s.copy.cuda);
      all.insert(all.end(), c.begin(), c.end());
    }
    results.push_back(std::move(all));
  }
  EXPECT_EQ(float_bits(results[0]), float_bits(results[1]));
}

TEST_F(CudaMultiTensor, NonFiniteNormSkipsTheStepAndLeavesTheGrads) {
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    std::vector<StatePair> states;
    std::vector<AdamWTensor> tensors;
    for (size_t t = 0; t < 5; ++t) {
      states.push_back(make_state(kSizes[t * 2 + 1], 970 + t, t == 2, DType::kBF16));
      tensors.push_back(cuda_side(states.back(), 0.1f));
    }
    Tensor gss = tensor_from(cuda(), {bad}, {1});
    cuda().adamw_update_multi(tensors, AdamWStep{}, gss, 1.0f);
    for (size_t t = 0; t < states.size(); ++t) {
      const StatePair& s = states[t];
      const std::string what = "non-finite " + std::to_string(bad) + " tensor " + std::to_string(t);
      // Untouched: the CPU side still holds the initial values.
      EXPECT_EQ(float_bits(cuda_values(s.p)), float_bits(cpu_values(s.p))) << what;
      EXPECT_EQ(float_bits(cuda_values(s.m)), float_bits(cpu_values(s.m))) << what;
      EXPECT_EQ(float_bits(cuda_values(s.v)), float_bits(cpu_values(s.v))) << what;
      EXPECT_EQ(float_bits(widened(cuda(), s.copy.cuda)), float_bits(widened(cpu(), s.copy.cpu)))
          << what;
      EXPECT_EQ(float_bits(cuda_values(s.g)), float_bits(cpu_values(s.g))) << what;
    }
  }
}

}  // namespace
}  // namespace nnkit::test
