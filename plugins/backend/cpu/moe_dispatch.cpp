// Purpose: backend/cpu MoE dispatch (moe_sort_by_expert): a stable counting sort of the N*k
// routed slots by expert, with the optional per-expert capacity and the load statistics the
// load-balancing loss reads. Owned by backend/cpu.
// One sequential pass to count, one to place: the work is O(N*k) integer steps on a few hundred
// thousand slots at most, far below the cost of the expert products it feeds, and a sequential
// pass is the stable order by construction (the CUDA backend reproduces it bit for bit).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../common/composed_ops.h"
#include "checks.h"
#include "cpu_backend.h"

namespace nnkit::cpu {

namespace {

// `t` holds `numel` elements of `dtype` on the host (any shape: the op reads tensors flat).
void expect_flat(const char* op, const char* name, const Tensor& t, DType dtype, int64_t numel) {
  expect_dtype(op, name, t, dtype);
  if (t.numel() != numel) {
    shape_fail(op, std::string(name) + " is " + describe(t) + "; expected " +
                       std::to_string(numel) + " elements");
  }
}

}  // namespace

void CpuBackend::moe_sort_by_expert(const Tensor& expert_index, int64_t n_experts, int64_t top_k,
                                    int64_t capacity, const Tensor& gate, const Tensor& token,
                                    const Tensor& slot, const Tensor& offsets, const Tensor& load) {
  const char* op = "moe_sort_by_expert";
  expect_dtype(op, "expert_index", expert_index, DType::kI32);
  const int64_t slots = expert_index.numel();  // N * k
  if (n_experts < 1) shape_fail(op, "n_experts = " + std::to_string(n_experts) + "; expected >= 1");
  if (top_k < 1 || slots % top_k != 0) {
    shape_fail(op, "top_k = " + std::to_string(top_k) + " does not divide the " +
                       std::to_string(slots) + " slots of expert_index " + describe(expert_index));
  }
  if (slots > INT32_MAX) {
    shape_fail(op, std::to_string(slots) + " slots do not fit the i32 outputs");
  }
  if (capacity >= 0 && !gate.defined()) {
    shape_fail(op, "capacity = " + std::to_string(capacity) +
                       " drops slots, so gate (N*k) f32 must be given to zero them");
  }
  if (gate.defined()) expect_flat(op, "gate", gate, DType::kF32, slots);
  expect_flat(op, "token", token, DType::kI32, slots);
  expect_flat(op, "slot", slot, DType::kI32, slots);
  expect_flat(op, "offsets", offsets, DType::kI32, n_experts + 1);
  expect_flat(op, "load", load, DType::kF32, n_experts);

  int32_t* index = ptr<int32_t>(expert_index);
  // Every index is checked before anything is written, so a fault leaves the outputs untouched.
  std::vector<int64_t> chosen(static_cast<size_t>(n_experts), 0);  // (E) before dropping
  for (int64_t s = 0; s < slots; ++s) {
    const int32_t e = index[s];
    if (e < -1 || e >= n_experts) {
      shape_fail(op, "expert_index[" + std::to_string(s) + "] = " + std::to_string(e) +
                         " is outside [-1, " + std::to_string(n_experts) +
                         "); the router chose an expert outside [0, n_experts)");
    }
    if (e >= 0) ++chosen[static_cast<size_t>(e)];
  }

  // offsets: exclusive prefix of the kept counts (min(chosen, capacity)).
  int32_t* off = ptr<int32_t>(offsets);
  float* pl = ptr<float>(load);
  int64_t running = 0;
  for (int64_t e = 0; e < n_experts; ++e) {
    off[e] = static_cast<int32_t>(running);
    const int64_t c = chosen[static_cast<size_t>(e)];
    running += capacity >= 0 ? std::min(c, capacity) : c;
    // float / float of exact integers: the correctly rounded quotient, as on the device.
    pl[e] = slots > 0 ? static_cast<float>(c) / static_cast<float>(slots) : 0.0f;
  }
  off[n_experts] = static_cast<int32_t>(running);

  // Place in slot order: the rank of a slot within its expert is how many earlier slots chose
  // the same expert, which is what makes the sort stable and the capacity keep the first ones.
  int32_t* pt = ptr<int32_t>(token);
  int32_t* ps = ptr<int32_t>(slot);
  float* pg = gate.defined() ? ptr<float>(gate) : nullptr;
  std::vector<int64_t> rank(static_cast<size_t>(n_experts), 0);
  for (int64_t s = 0; s < slots; ++s) {
    const int32_t e = index[s];
    if (e < 0) continue;  // already dropped by the router: not routed, left as it is
    const int64_t r = rank[static_cast<size_t>(e)]++;
    if (capacity >= 0 && r >= capacity) {
      index[s] = -1;
      pg[s] = 0.0f;
      continue;
    }
    const int64_t row = off[e] + r;
    pt[row] = static_cast<int32_t>(s / top_k);
    ps[row] = static_cast<int32_t>(s);
  }
  for (int64_t row = running; row < slots; ++row) {
    pt[row] = 0;
    ps[row] = -1;
  }
}

}  // namespace nnkit::cpu

namespace nnkit::cpu {

// The compact sort into scratch rows, then each expert's rows moved to its fixed block: the same
// ranks and drops as moe_sort_by_expert by construction, and the CUDA layout bit for bit.
void CpuBackend::moe_sort_by_expert_padded(const Tensor& expert_index, int64_t n_experts,
                                           int64_t top_k, int64_t capacity, const Tensor& gate,
                                           const Tensor& token, const Tensor& slot,
                                           const Tensor& offsets, const Tensor& load) {
  const char* op = "moe_sort_by_expert_padded";
  if (capacity < 1) {
    shape_fail(op, "capacity = " + std::to_string(capacity) +
                       "; the static layout needs capacity >= 1 rows per expert");
  }
  if (n_experts < 1 || capacity > INT32_MAX / n_experts) {
    shape_fail(op, std::to_string(n_experts) + " experts x capacity " + std::to_string(capacity) +
                       " rows do not fit the i32 outputs");
  }
  const int64_t rows = n_experts * capacity;
  expect_flat(op, "token", token, DType::kI32, rows);
  expect_flat(op, "slot", slot, DType::kI32, rows);
  const int64_t slots = expert_index.numel();
  Tensor compact_token = empty({slots}, DType::kI32);
  Tensor compact_slot = empty({slots}, DType::kI32);
  moe_sort_by_expert(expert_index, n_experts, top_k, capacity, gate, compact_token, compact_slot,
                     offsets, load);
  const int32_t* off = ptr<int32_t>(offsets);
  const int32_t* ct = ptr<int32_t>(compact_token);
  const int32_t* cs = ptr<int32_t>(compact_slot);
  int32_t* pt = ptr<int32_t>(token);
  int32_t* ps = ptr<int32_t>(slot);
  for (int64_t e = 0; e < n_experts; ++e) {
    const int64_t kept = off[e + 1] - off[e];
    for (int64_t r = 0; r < capacity; ++r) {
      const int64_t row = e * capacity + r;
      pt[row] = r < kept ? ct[off[e] + r] : -1;
      ps[row] = r < kept ? cs[off[e] + r] : -1;
    }
  }
}

// The decode router by its ops (this backend has no launches to save).
void CpuBackend::moe_route_padded(const Tensor& x, const Tensor& weight, int64_t top_k,
                                  bool renormalize, int64_t capacity, const Tensor& expert_index,
                                  const Tensor& gate, const Tensor& token, const Tensor& slot,
                                  const Tensor& offsets, const Tensor& load) {
  const char* op = "moe_route_padded";
  const RowShape xs = expect_rows(op, "x", x, DType::kF32);
  const RowShape ws = expect_rows(op, "weight", weight, DType::kF32);
  if (ws.cols != xs.cols || top_k < 1 || top_k > ws.rows) {
    shape_fail(op, "x is " + describe(x) + ", weight " + describe(weight) + ", top_k " +
                       std::to_string(top_k) + "; expected (N, C), (E, C) and 1 <= top_k <= E");
  }
  expect_flat(op, "expert_index", expert_index, DType::kI32, xs.rows * top_k);
  expect_flat(op, "gate", gate, DType::kF32, xs.rows * top_k);
  backend_common::moe_route_padded_by_ops(*this, x, weight, top_k, renormalize, capacity,
                                          expert_index.view({xs.rows, top_k}),
                                          gate.view({xs.rows, top_k}), token, slot, offsets, load);
}

void CpuBackend::moe_swiglu_experts_padded(const Tensor& x, const Tensor& token, const Tensor& slot,
                                           const Tensor& gate, const std::vector<Tensor>& gate_w,
                                           const std::vector<Tensor>& up_w,
                                           const std::vector<Tensor>& down_w,
                                           const Tensor& kept_offsets, int64_t capacity,
                                           const Tensor& y) {
  static constexpr backend_common::OpChecks kCpuChecks{"backend/cpu", DeviceType::kCpu};
  backend_common::check_swiglu_experts_padded(kCpuChecks, backend_common::DTypes{DType::kF32}, x,
                                              token, slot, gate, gate_w, up_w, down_w, kept_offsets,
                                              capacity, y);
  backend_common::moe_swiglu_experts_padded_by_ops(*this, x, token, slot, gate, gate_w, up_w,
                                                   down_w, kept_offsets, capacity, y);
}

}  // namespace nnkit::cpu
