// Purpose: the token exchange of expert parallelism (parallel.expert > 1, docs/parallel.md). The
// experts of every MoE layer are sharded over the P expert ranks of a group (rank p holds the
// contiguous block [p E/P, (p+1) E/P)); the router and everything dense are replicated. A rank
// routes its own tokens over all E experts, sends each routed row to the rank holding its expert
// (Communicator::all_to_all with per-rank counts), runs its own experts on the rows it received
// (the Experts plugin, driven with a Routing over its block), sends the outputs back and combines
// them with the gates where the tokens live. Backward sends the gradients the reverse way: the
// gated dy to the experts, their dx back. The gate gradient is taken where the gates are, so the
// expert side sees gates of 1 and its dgate is not used.
// Ownership: borrows the communicator (the trainer's; it outlives the model's passes) and the
// Experts plugin it is given per call; owns what backward needs from the last training forward
// (until the next forward or release_saved()). Thread-safety: none; the trainer's thread drives
// it, and every rank of the job must run the same passes in the same order (the exchanges are
// collectives over the whole job: ranks outside the group send and receive nothing).
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "nnkit/communicator.h"
#include "nnkit/layer.h"
#include "nnkit/model.h"
#include "nnkit/optim.h"

namespace nnkit {

// Where this rank sits among the expert ranks: world ranks [group_begin, group_begin + size)
// share one copy of every expert, this one holding block `index`.
struct ExpertGroup {
  Communicator* comm = nullptr;  // the whole job's
  int group_begin = 0;
  int size = 1;   // P = parallel.expert
  int index = 0;  // p
};

class ExpertExchange {
 public:
  ExpertExchange(ExpertGroup group, int64_t n_experts);

  // x: (N, C) this rank's tokens, routing over all E experts (compact layout) -> y (N, C).
  Tensor forward(ForwardContext& ctx, const Tensor& x, const Routing& routing, Experts& experts);
  // dy: (N, C) -> dx (N, C) through the experts; writes dgate (N, k) f32 for the router.
  Tensor backward(ForwardContext& ctx, const Tensor& dy, Experts& experts, Tensor& dgate);
  void release_saved() { saved_ = Saved{}; }

 private:
  struct Saved {
    int64_t n_tokens = -1;  // N; -1 = nothing saved
    int64_t top_k = 0;
    int64_t routed = 0;              // M: this rank's routed rows, grouped by global expert
    Tensor token;                    // (M) i32 token of each routed row
    Tensor slot;                     // (M) i32 flat slot n * k + rank of each routed row
    Tensor gate;                     // (M) f32 gate of each routed row
    Tensor y;                        // (M, C) the experts' ungated outputs, back from their ranks
    std::vector<int64_t> send_rows;  // (world) rows this rank sent to each rank
    std::vector<int64_t> recv_rows;  // (world) rows this rank's experts received from each rank
  };

  ExpertGroup group_;
  int64_t n_experts_;  // E
  int64_t local_;      // E / P experts held here
  Saved saved_;
};

// A complete checkpoint's contents under expert parallelism, assembled on the writer (rank 0,
// expert shard 0 of the first group): the weights and optimizer state of every parameter in
// the order of an unsharded model, the other shards' experts received from ranks 1 .. P-1.
// Every rank calls gather_complete_state (its exchanges are collectives); the other ranks get
// empty lists. `scratch` is a fresh instance of the run's optimizer: on the writer it allocates,
// with the optimizer's own names and shapes, the state of the experts held elsewhere. The
// writer's copies (received weights, `scratch`'s state) live as long as the result.
struct CompleteState {
  std::vector<std::pair<std::string, Tensor>> weights;
  std::vector<std::pair<std::string, Tensor>> optimizer_state;
  std::deque<Parameter> received;  // descriptors of the other shards' experts with their values
};
CompleteState gather_complete_state(Communicator& comm, Backend& backend, Transformer& model,
                                    Optimizer& optimizer, Optimizer& scratch);

}  // namespace nnkit
