// Purpose: see device_sampling.h.
#include "nnkit/device_sampling.h"

#include <algorithm>
#include <string>

#include "nnkit/error.h"

namespace nnkit {

DeviceSamplingContext make_device_sampling_context(
    Backend& backend, const std::vector<std::vector<int32_t>>& histories, int64_t capacity,
    bool step_counter, int32_t first_step) {
  const auto rows = static_cast<int64_t>(histories.size());
  if (rows == 0 || capacity < 1) {
    throw UsageError("generate", "a device sampling history needs at least one row and capacity " +
                                     std::string(">= 1 (got ") + std::to_string(rows) +
                                     " rows, capacity " + std::to_string(capacity) + ")");
  }
  std::vector<int32_t> flat(static_cast<size_t>(rows * capacity), 0);
  std::vector<int32_t> lengths(static_cast<size_t>(rows));
  for (int64_t b = 0; b < rows; ++b) {
    const auto& h = histories[static_cast<size_t>(b)];
    if (static_cast<int64_t>(h.size()) > capacity) {
      throw UsageError("generate", "history " + std::to_string(b) + " has " +
                                       std::to_string(h.size()) +
                                       " tokens, more than the device history's capacity of " +
                                       std::to_string(capacity));
    }
    std::copy(h.begin(), h.end(), flat.begin() + b * capacity);
    lengths[static_cast<size_t>(b)] = static_cast<int32_t>(h.size());
  }
  DeviceSamplingContext ctx;
  ctx.history = backend.from_host(flat.data(), {rows, capacity}, DType::kI32);
  ctx.lengths = backend.from_host(lengths.data(), {rows}, DType::kI32);
  if (step_counter) ctx.step = backend.from_host(&first_step, {1}, DType::kI32);
  return ctx;
}

void append_device_history(Backend& backend, const DeviceSamplingContext& ctx, const Tensor& ids) {
  backend.append_tokens(ctx.history, ctx.lengths, ids, ctx.step);
}

bool sample_on_device(Backend& backend, const std::vector<std::shared_ptr<Sampler>>& chain,
                      const Tensor& logits, const DeviceSamplingContext& ctx, uint64_t seed,
                      int64_t step, const Tensor& out_ids) {
  if (logits.shape().size() != 2) {
    throw ShapeError("generate", "sample_on_device: logits must be (B, V), got rank " +
                                     std::to_string(logits.shape().size()));
  }
  // The filters work in place; the caller's logits stay as they were (and a declined chain has
  // touched nothing the caller sees).
  Tensor work = backend.empty(logits.shape(), DType::kF32);
  if (logits.dtype() == DType::kF32) {
    backend.copy(work, logits);
  } else {
    backend.convert(work, logits);
  }
  bool argmax = false;
  for (const auto& sampler : chain) {
    if (!sampler->apply_device(backend, work, ctx)) return false;
    argmax = argmax || sampler->selects_argmax();
  }
  backend.sample_rows(work, seed, step, ctx.step, argmax, out_ids);
  return true;
}

}  // namespace nnkit
