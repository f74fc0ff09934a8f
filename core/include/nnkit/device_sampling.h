// Purpose: running a sampler chain on the backend's device (issue 10): the token history the
// device paths read (DeviceSamplingContext), kept on the device and advanced there, and the chain
// runner that ends in one Backend::sample_rows, so that a decode step copies only the sampled ids
// to the host. A chain with a host-only sampler is declined as a whole (the caller falls back to
// pick_token on host rows).
// Draws: row b at decode step s takes the Philox uniform of (seed, b, s) (nnkit/philox.h), so a
// seed reproduces the same ids on every run and on the CPU and CUDA backends alike; they differ
// from the host pick_token's draws (a different generator), not in distribution.
// Ownership: free functions; the context's tensors are the caller's (allocated here on the
// backend given). One thread drives the backend.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/export.h"
#include "nnkit/sampler.h"

namespace nnkit {

// A context holding each row's history (BOS + prompt ids, left-aligned) in a (B, capacity) i32
// tensor on `backend`, with its lengths, and a (1) i32 step counter starting at `first_step`
// when `step_counter` (what a CUDA Graph of the decode step reads; otherwise ctx.step stays
// undefined and the caller passes the step to sample_on_device). capacity must hold the longest
// history plus every token to be appended (UsageError otherwise). Uploads with copy_from_host:
// call it before any capture.
NNKIT_API DeviceSamplingContext
make_device_sampling_context(Backend& backend, const std::vector<std::vector<int32_t>>& histories,
                             int64_t capacity, bool step_counter = false, int32_t first_step = 0);

// Appends ids ((B) i32 on the device, e.g. sample_on_device's out_ids) to every row's history and
// advances ctx.step when defined; device work only (capturable).
NNKIT_API void append_device_history(Backend& backend, const DeviceSamplingContext& ctx,
                                     const Tensor& ids);

// Runs `chain` on the device over logits ((B, V), f32 or the backend's compute dtype; not
// modified: the chain works on an f32 copy), then writes the ids to out_ids ((B) i32): the argmax
// when any sampler selects_argmax(), otherwise a draw from softmax at (seed, row, step), where
// the step is ctx.step[0] when defined (read at run time) and `step` otherwise. Returns false,
// with nothing written to out_ids, when some sampler has no device path for this context; that
// answer depends only on the chain and which ctx fields are defined, so it can be remembered.
// Enqueues only (no host reads, no copy_from_host): a caller may record it in a CUDA Graph.
NNKIT_API bool sample_on_device(Backend& backend,
                                const std::vector<std::shared_ptr<Sampler>>& chain,
                                const Tensor& logits, const DeviceSamplingContext& ctx,
                                uint64_t seed, int64_t step, const Tensor& out_ids);

}  // namespace nnkit
