// Purpose: the trainer's side of data parallelism (docs/parallel.md): opening the job's
// communicator and checking it against parallel.*, summing gradients across ranks in buckets
// (with expert shards, each over the ranks holding it) and the job's gradient norm,
// a rank's share of a global batch, and the test hooks that make one rank fail or hang.
// Ownership: GradientBuckets borrows the communicator, the backend and the gradient tensors
// (the model owns them and outlives it) and owns its packing buffers and the collectives it
// started (none outlives finish_overlap()). Not thread-safe: the trainer's thread drives it.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/communicator.h"
#include "nnkit/config.h"
#include "nnkit/layer.h"
#include "nnkit/model.h"
#include "nnkit/optim.h"
#include "nnkit/registry.h"

namespace nnkit {

// The communicator of this job: the built-in single-process one for a config of one rank (after
// checking the process was not launched as one of several), else parallel.comm's plugin created
// on `backend`. Throws ConfigError naming the values when parallel.data x parallel.expert is not
// the number of processes the launcher started (or the communicator sees).
std::shared_ptr<Communicator> open_communicator(const RunConfig& config, const Registry& registry,
                                                Backend& backend);

// Sums f32 gradients across ranks, a bucket (about `bucket_bytes`) per collective: small
// gradients are packed into one buffer so that a model of many small tensors does not pay a
// collective's latency per tensor; a gradient larger than a bucket is reduced in place. Buckets
// are filled in reverse parameter order, the order backward finishes them. With `group` (world
// ranks, ascending, this one among them) the sums run over those ranks only: expert
// parallelism sums an expert shard's gradients over the ranks holding that shard.
//
// Overlapped with backward (parallel.overlap, over every rank only): begin_overlap() before the
// last backward pass of a step, ready() from its hook with the gradients it finished, and
// finish_overlap() after it. A bucket's all-reduce starts (start_all_reduce_sum) as soon as all
// its members are final and every earlier bucket has started, so every rank starts the same
// buckets in the same order; finish_overlap() starts the rest, then waits for each in order and
// unpacks it. The buckets and the collective are those of all_reduce(), so are the bits.
class GradientBuckets {
 public:
  GradientBuckets(Communicator& comm, Backend& backend, const std::vector<Tensor>& grads,
                  size_t bucket_bytes, std::vector<int> group = {});
  void all_reduce();
  size_t bucket_count() const { return buckets_.size(); }

  void begin_overlap();
  // Gradients (any, also ones not in these buckets: ignored) that backward will not touch again.
  void ready(const std::vector<Tensor>& finished);
  void finish_overlap();
  // Buckets of the last overlapped pass started while backward still had some of these
  // gradients to finish (the last bucket, holding the last gradient, never counts).
  size_t started_during_backward() const { return started_early_; }

 private:
  // In place, the sum over the ranks (of the group).
  void reduce(const Tensor& data);
  // Copies the members into the packed buffer (a bucket of several).
  void pack(size_t bucket);
  void unpack(size_t bucket);
  // Starts every bucket from next_start_ on whose members are all final.
  void start_ready_buckets();

  struct Bucket {
    std::vector<Tensor> members;  // gradients, in packing order
    Tensor packed;                // (total) f32; undefined for a bucket of one reduced in place
    size_t waiting = 0;           // overlap: members not reported final yet
    std::unique_ptr<PendingCollective> pending;
  };
  Communicator& comm_;
  Backend& backend_;
  std::vector<Bucket> buckets_;
  std::vector<int> group_;  // empty: all ranks
  // Overlap: which bucket each gradient's storage belongs to, and whether it was reported.
  std::unordered_map<const void*, size_t> bucket_of_;
  std::unordered_set<const void*> reported_;
  size_t next_start_ = 0;
  size_t started_early_ = 0;
  bool overlapping_ = false;
};

// The trainer's sums of gradients across ranks and the job's squared gradient norm. Without
// expert shards every gradient is summed over every rank. With them (parallel.expert = P) the
// replicated parameters' gradients are, and an expert shard's are summed over the ranks that
// hold that shard (rank p, P + p, 2P + p, ...: one per data group); the squared norm then adds
// the replicated part once and each shard's once. Borrows the communicator, the backend and the
// model's gradients; owns the buckets.
class GradientReduction {
 public:
  // `distributed`: false for a job of one rank (reduce() does nothing).
  GradientReduction(Communicator& comm, Backend& backend, Transformer& model, bool distributed,
                    size_t bucket_bytes);
  // In place: every gradient summed over the ranks that hold its parameter. After
  // begin_overlap() and a backward pass that reported to ready(), finishes the started
  // buckets instead (an expert shard's sums over its replicas are not overlapped).
  void reduce();
  // Overlap (see GradientBuckets): call before the step's last backward pass and hand ready()
  // to Transformer::backward. Does nothing for a job of one rank.
  void begin_overlap();
  void ready(const std::vector<Parameter*>& finished);
  // Buckets over every rank, and how many of them the last overlapped pass started early.
  size_t bucket_count() const { return buckets_ ? buckets_->bucket_count() : 0; }
  size_t started_during_backward() const {
    return buckets_ ? buckets_->started_during_backward() : 0;
  }
  // out: (1) f32 on the device, overwritten with the job's sum of squared gradients (device
  // work and collectives only, nothing read back).
  void squared_norm(const Tensor& out);

 private:
  Communicator& comm_;
  Backend& backend_;
  int expert_ranks_ = 1;
  std::vector<Tensor> all_;                   // every gradient this rank holds
  std::vector<Tensor> replicated_;            // expert shards: the gradients every rank holds
  std::vector<Tensor> experts_;               // expert shards: this shard's
  Tensor expert_squares_;                     // (1) f32
  std::unique_ptr<GradientBuckets> buckets_;  // over every rank
  std::unique_ptr<GradientBuckets> expert_buckets_;  // over this shard's replicas, if several
  bool overlapping_ = false;
};

// ZeRO stage 1 (parallel.zero: 1): each parameter's optimizer state lives on one rank, its
// owner; parameters are dealt out so that the ranks own about as many elements each. Every rank
// still holds every weight and every summed gradient: the owners update their parameters, then
// share the new values.
class OptimizerShards {
 public:
  OptimizerShards(Communicator& comm, Backend& backend, const std::vector<Parameter*>& params);
  // The parameters this rank updates (and holds optimizer state for).
  const std::vector<Parameter*>& owned() const { return owned_; }
  // After a taken step: every rank gets each parameter's new value (and compute copy) from its
  // owner; the gradients this rank did not step are zeroed (the optimizer zeroed its own).
  void share_updated_parameters();
  // Before rank 0 writes a checkpoint: its optimizer receives from each owner the state of the
  // parameters rank 0 does not own (allocating it), so that the checkpoint holds all of it.
  void gather_state_on_writer(Optimizer& optimizer);

 private:
  Communicator& comm_;
  Backend& backend_;
  std::vector<Parameter*> params_;
  std::vector<int> owner_;  // per parameter
  std::vector<Parameter*> owned_;
};

// This rank's rows [rank * rows / ranks, (rank + 1) * rows / ranks) of a (rows, width) batch.
void take_rank_rows(const std::vector<int32_t>& global, int64_t width, int rank, int ranks,
                    std::vector<int32_t>& local);

// Test hooks: NNKIT_FAULT_RANK_FAIL="RANK:STEP" makes RANK throw before step STEP (1-based);
// NNKIT_FAULT_RANK_HANG="RANK:STEP" makes it sleep there for an hour (its peers' collectives
// time out).
void inject_rank_fault(int rank, int64_t step);

}  // namespace nnkit
