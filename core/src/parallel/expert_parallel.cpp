// Purpose: see expert_parallel.h.
#include "parallel/expert_parallel.h"

#include <string>

#include "nnkit/backend.h"
#include "nnkit/error.h"

namespace nnkit {

namespace {

constexpr const char* kId = "parallel";

// An (rows, width) tensor, or an empty (0, width) one for a rank that has nothing to send.
Tensor rows_of(Backend& backend, int64_t rows, int64_t width, DType dtype) {
  return backend.empty({rows, width}, dtype);
}

}  // namespace

ExpertExchange::ExpertExchange(ExpertGroup group, int64_t n_experts)
    : group_(group), n_experts_(n_experts), local_(n_experts / group.size) {
  if (group_.comm == nullptr || group_.size < 2 || n_experts_ % group_.size != 0 ||
      group_.index < 0 || group_.index >= group_.size || group_.group_begin < 0 ||
      group_.group_begin + group_.size > group_.comm->size()) {
    throw Error(kId, "invalid expert-parallel group: " + std::to_string(n_experts_) +
                         " experts over " + std::to_string(group_.size) + " ranks");
  }
}

Tensor ExpertExchange::forward(ForwardContext& ctx, const Tensor& x, const Routing& routing,
                               Experts& experts) {
  Backend& backend = *ctx.backend;
  Communicator& comm = *group_.comm;
  const int64_t n_tokens = routing.n_tokens, top_k = routing.top_k, hidden = x.dim(1);
  const DType dtype = x.dtype();
  NNKIT_CHECK_SHAPE(routing.padded_capacity == 0 && routing.n_experts == n_experts_ &&
                        static_cast<int64_t>(routing.offsets.size()) == n_experts_ + 1,
                    kId,
                    "expert parallelism exchanges the compact routing layout over all " +
                        std::to_string(n_experts_) + " experts");
  const int64_t routed = routing.n_routed;
  const size_t world = static_cast<size_t>(comm.size());
  const size_t group = static_cast<size_t>(group_.size);
  const size_t begin = static_cast<size_t>(group_.group_begin);

  // 1. The row counts: this rank's per-expert counts go to the ranks holding those experts
  // (E rows of one i32, blocks of E/P per expert rank: exactly the counts in expert order);
  // it receives, from every rank of the group, the counts for its own experts.
  std::vector<int32_t> counts(static_cast<size_t>(n_experts_));
  for (int64_t e = 0; e < n_experts_; ++e) {
    counts[static_cast<size_t>(e)] =
        static_cast<int32_t>(routing.offsets[e + 1] - routing.offsets[e]);
  }
  std::vector<int64_t> send_counts(world, 0), recv_counts(world, 0);
  for (size_t q = 0; q < group; ++q) {
    send_counts[begin + q] = local_;
    recv_counts[begin + q] = local_;
  }
  const Tensor counts_out = backend.from_host(counts.data(), {n_experts_, 1}, DType::kI32);
  const Tensor counts_in = backend.empty({static_cast<int64_t>(group) * local_, 1}, DType::kI32);
  comm.all_to_all(backend, counts_out, send_counts, counts_in, recv_counts);
  std::vector<int32_t> received(static_cast<size_t>(group * static_cast<size_t>(local_)));
  backend.copy_to_host(received.data(), counts_in);  // [q][local expert]

  // 2. The rows: to expert rank q go this rank's rows of q's experts (contiguous in expert
  // order); the rows received arrive grouped by sender, then by expert.
  Saved saved;
  saved.n_tokens = n_tokens;
  saved.top_k = top_k;
  saved.routed = routed;
  saved.send_rows.assign(world, 0);
  saved.recv_rows.assign(world, 0);
  for (size_t q = 0; q < group; ++q) {
    saved.send_rows[begin + q] = routing.offsets[static_cast<size_t>((q + 1) * local_)] -
                                 routing.offsets[static_cast<size_t>(q * local_)];
    for (int64_t e = 0; e < local_; ++e) {
      saved.recv_rows[begin + q] +=
          received[q * static_cast<size_t>(local_) + static_cast<size_t>(e)];
    }
  }
  int64_t incoming = 0;
  for (int64_t r : saved.recv_rows) incoming += r;

  Tensor x_sent = rows_of(backend, routed, hidden, dtype);  // (M, C) in expert order
  if (routed > 0) {
    saved.token = routing.token.slice_rows(0, routed);
    saved.slot = routing.slot.slice_rows(0, routed);
    backend.gather_rows(x, saved.token, x_sent);
    Tensor gate = backend.empty({routed, 1});
    backend.gather_rows(routing.gate.view({n_tokens * top_k, 1}), saved.slot, gate);
    saved.gate = gate.view({routed});
  }
  Tensor x_received = rows_of(backend, incoming, hidden, dtype);  // (R, C) by sender, expert
  comm.all_to_all(backend, x_sent, saved.send_rows, x_received, saved.recv_rows);

  // 3. The held experts on the received rows: a Routing over the local block whose "tokens"
  // are the received rows, one slot each with gate 1, listed by local expert (then by sender,
  // then in the sender's slot order, so each expert sees its rows in the one-rank order).
  Routing local;
  local.n_tokens = incoming;
  local.top_k = 1;
  local.n_experts = local_;
  local.n_routed = incoming;
  local.offsets.assign(static_cast<size_t>(local_) + 1, 0);
  std::vector<int32_t> order, expert_of(static_cast<size_t>(incoming));
  order.reserve(static_cast<size_t>(incoming));
  std::vector<int64_t> sender_start(group, 0);  // first received row of each sender
  for (size_t q = 1; q < group; ++q) {
    sender_start[q] = sender_start[q - 1] + saved.recv_rows[begin + q - 1];
  }
  for (int64_t e = 0; e < local_; ++e) {
    for (size_t q = 0; q < group; ++q) {
      int64_t row = sender_start[q];
      for (int64_t f = 0; f < e; ++f)
        row += received[q * static_cast<size_t>(local_) + static_cast<size_t>(f)];
      const int64_t n = received[q * static_cast<size_t>(local_) + static_cast<size_t>(e)];
      for (int64_t i = 0; i < n; ++i) {
        order.push_back(static_cast<int32_t>(row + i));
        expert_of[static_cast<size_t>(row + i)] = static_cast<int32_t>(e);
      }
    }
    local.offsets[static_cast<size_t>(e) + 1] = static_cast<int64_t>(order.size());
  }
  if (incoming > 0) {
    local.token = backend.from_host(order.data(), {incoming}, DType::kI32);
    local.expert_index = backend.from_host(expert_of.data(), {incoming, 1}, DType::kI32);
  } else {  // nothing came: no host copy from an empty vector's (null) data
    local.token = backend.empty({0}, DType::kI32);
    local.expert_index = backend.empty({0, 1}, DType::kI32);
  }
  local.slot = local.token;  // one slot per row: slot n * 1 + 0 = n
  local.gate = backend.empty({incoming, 1});
  backend.fill(local.gate, 1.0f);
  const Tensor y_local = experts.forward_routed(ctx, x_received, local);  // (R, C) ungated
  NNKIT_CHECK_SHAPE(y_local.rank() == 2 && y_local.dim(0) == incoming && y_local.dim(1) == hidden,
                    experts.id(), "forward_routed returned " + describe(y_local));

  // 4. Back to the tokens' ranks, then the combine y[token] += gate * y_e in expert order (the
  // one-rank combine, op for op).
  saved.y = rows_of(backend, routed, hidden, dtype);
  comm.all_to_all(backend, y_local, saved.recv_rows, saved.y, saved.send_rows);
  Tensor y = backend.zeros({n_tokens, hidden}, dtype);
  if (routed > 0) backend.scatter_add_rows(saved.y, saved.token, saved.gate, y);
  saved_ = ctx.training ? std::move(saved) : Saved{};
  return y;
}

Tensor ExpertExchange::backward(ForwardContext& ctx, const Tensor& dy, Experts& experts,
                                Tensor& dgate) {
  if (saved_.n_tokens < 0) {
    throw Error(kId, "the expert exchange's backward needs a preceding training forward");
  }
  Backend& backend = *ctx.backend;
  Communicator& comm = *group_.comm;
  const int64_t n_tokens = saved_.n_tokens, routed = saved_.routed, hidden = dy.dim(1);
  const DType dtype = dy.dtype();
  int64_t incoming = 0;
  for (int64_t r : saved_.recv_rows) incoming += r;

  // Forward read in reverse. The combine y[token] += gate * y_e: dgate[slot] = <dy[token], y_e>
  // here, where the gates are; the experts get gate * dy[token].
  Tensor dgate_flat = backend.zeros({n_tokens * saved_.top_k, 1});  // dropped slots stay 0
  Tensor dy_sent = rows_of(backend, routed, hidden, dtype);
  if (routed > 0) {
    backend.gather_rows(dy, saved_.token, dy_sent);
    Tensor dgate_rows = backend.empty({routed});
    backend.row_dot(dy_sent, saved_.y, dgate_rows);
    backend.scatter_add_rows(dgate_rows.view({routed, 1}), saved_.slot, Tensor(), dgate_flat);
    backend.scale_rows(dy_sent, saved_.gate);
  }
  dgate = dgate_flat.view({n_tokens, saved_.top_k});
  Tensor dy_received = rows_of(backend, incoming, hidden, dtype);
  comm.all_to_all(backend, dy_sent, saved_.send_rows, dy_received, saved_.recv_rows);
  // The held experts: their weight gradients accumulate here; their dgate (gates of 1) is not
  // the router's and is dropped.
  Tensor unused_dgate;
  const Tensor dx_local = experts.backward_routed(ctx, dy_received, unused_dgate);
  NNKIT_CHECK_SHAPE(dx_local.rank() == 2 && dx_local.dim(0) == incoming, experts.id(),
                    "backward_routed returned " + describe(dx_local));
  Tensor dx_back = rows_of(backend, routed, hidden, dtype);
  comm.all_to_all(backend, dx_local, saved_.recv_rows, dx_back, saved_.send_rows);
  // The dispatch gathered x[token]: its gradient scatters back, one add per routed row.
  Tensor dx = backend.zeros({n_tokens, hidden}, dtype);
  if (routed > 0) backend.scatter_add_rows(dx_back, saved_.token, Tensor(), dx);
  return dx;
}

}  // namespace nnkit

namespace nnkit {

namespace {

// All of `tensors` as one (total, 1) f32 column, in order.
Tensor pack(Backend& backend, const std::vector<Tensor>& tensors) {
  int64_t total = 0;
  for (const Tensor& t : tensors) total += t.numel();
  Tensor packed = backend.empty({total, 1});
  int64_t offset = 0;
  for (const Tensor& t : tensors) {
    backend.copy(packed.slice_rows(offset, offset + t.numel()), t.view({t.numel(), 1}));
    offset += t.numel();
  }
  return packed;
}

void unpack(Backend& backend, const Tensor& packed, const std::vector<Tensor>& tensors) {
  int64_t offset = 0;
  for (const Tensor& t : tensors) {
    backend.copy(t.view({t.numel(), 1}), packed.slice_rows(offset, offset + t.numel()));
    offset += t.numel();
  }
}

// `from`'s (rows, 1) column lands in rank 0's `into`: an all_to_all in which only `from` sends
// and only rank 0 receives (the interface has no point-to-point call). Every rank calls it.
void send_to_writer(Communicator& comm, Backend& backend, int from, const Tensor& column,
                    const Tensor& into, int64_t rows) {
  const int rank = comm.rank();
  std::vector<int64_t> send(static_cast<size_t>(comm.size()), 0), receive = send;
  if (rank == from) send[0] = rows;
  if (rank == 0) receive[static_cast<size_t>(from)] = rows;
  const Tensor nothing = backend.empty({0, 1});
  comm.all_to_all(backend, rank == from ? column : nothing, send, rank == 0 ? into : nothing,
                  receive);
}

std::vector<Tensor> tensors_of(const std::vector<std::pair<std::string, Tensor>>& named) {
  std::vector<Tensor> out;
  for (const auto& [name, t] : named) out.push_back(t);
  return out;
}

}  // namespace

CompleteState gather_complete_state(Communicator& comm, Backend& backend, Transformer& model,
                                    Optimizer& optimizer, Optimizer& scratch) {
  const ExpertShard shard = model.expert_shard();
  const int rank = comm.rank();
  const std::vector<ParameterPlace> layout = model.parameter_layout();
  CompleteState out;
  // The writer's stand-ins for the experts of shard s (by name: the optimizers key state so).
  std::vector<std::vector<Parameter*>> stand_ins(static_cast<size_t>(shard.count));
  for (int s = 1; s < shard.count; ++s) {
    std::vector<Parameter*> held;  // shard s's expert parameters, in layout order
    int64_t total = 0;
    for (const ParameterPlace& place : layout) {
      if (place.shard != s) continue;
      held.push_back(place.parameter);
      total += shape_numel(place.parameter->shape);
    }
    // Weights: rank s (shard s of the first group) sends, the writer unpacks into stand-ins.
    Tensor received;
    if (rank == 0) {
      received = backend.empty({total, 1});
      for (Parameter* p : held) {
        Parameter copy;
        copy.name = p->name;
        copy.shape = p->shape;
        out.received.push_back(std::move(copy));
        stand_ins[static_cast<size_t>(s)].push_back(&out.received.back());
      }
    }
    std::vector<Tensor> values;
    if (rank == s) {
      for (Parameter* p : held) values.push_back(p->value);
    }
    send_to_writer(comm, backend, s, rank == s ? pack(backend, values) : Tensor(), received, total);
    if (rank == 0) {
      int64_t offset = 0;
      for (Parameter* p : stand_ins[static_cast<size_t>(s)]) {
        const int64_t n = shape_numel(p->shape);
        p->value = received.slice_rows(offset, offset + n).view(p->shape);
        offset += n;
      }
    }
    // Optimizer state: the sender's, in its optimizer's order; the writer's scratch optimizer
    // allocates the same names and shapes. The element counts are compared first.
    std::vector<std::pair<std::string, Tensor>> state;
    if (rank == s) state = optimizer.state(backend, held);
    if (rank == 0) state = scratch.state(backend, stand_ins[static_cast<size_t>(s)]);
    int64_t elements = 0;
    for (const auto& [name, t] : state) elements += t.numel();
    double counts[2] = {rank == s ? static_cast<double>(elements) : 0.0,
                        rank == 0 ? static_cast<double>(elements) : 0.0};
    comm.all_reduce_sum_host(counts);
    if (counts[0] != counts[1]) {
      throw Error("parallel", "expert shard " + std::to_string(s) + " holds " +
                                  std::to_string(static_cast<int64_t>(counts[0])) +
                                  " optimizer-state elements but the writer expects " +
                                  std::to_string(static_cast<int64_t>(counts[1])));
    }
    const Tensor into = rank == 0 ? backend.empty({elements, 1}) : Tensor();
    send_to_writer(comm, backend, s, rank == s ? pack(backend, tensors_of(state)) : Tensor(), into,
                   elements);
    if (rank == 0) unpack(backend, into, tensors_of(state));
  }
  if (rank != 0) return out;
  // The unsharded model's order: each parameter's weights, then its state, one parameter at a
  // time (optimizers list their state per parameter in the order given).
  std::vector<size_t> next(static_cast<size_t>(shard.count), 0);
  for (const ParameterPlace& place : layout) {
    Parameter* p = place.parameter;
    Optimizer* owner = &optimizer;
    if (place.shard > 0) {
      p = stand_ins[static_cast<size_t>(place.shard)][next[static_cast<size_t>(place.shard)]++];
      owner = &scratch;
    }
    out.weights.emplace_back(p->name, p->value);
    for (auto& named : owner->state(backend, {p})) out.optimizer_state.push_back(std::move(named));
  }
  return out;
}

}  // namespace nnkit
