// Purpose: see data_parallel.h.
#include "parallel/data_parallel.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>

#include "nnkit/error.h"

namespace nnkit {

namespace {

std::string rank_count_hint(int64_t wanted, int64_t processes) {
  return "launch " + std::to_string(wanted) + " processes (mpirun -np " + std::to_string(wanted) +
         " nnkit train ...) or set parallel.data so that parallel.data x parallel.expert = " +
         std::to_string(processes);
}

// "RANK:STEP" from `variable`, or {-1, -1}.
std::pair<int, int64_t> fault_at(const char* variable) {
  const char* text = std::getenv(variable);
  if (text == nullptr) return {-1, -1};
  const std::string value(text);
  const size_t colon = value.find(':');
  if (colon == std::string::npos) return {-1, -1};
  return {std::atoi(value.substr(0, colon).c_str()), std::atoll(value.substr(colon + 1).c_str())};
}

}  // namespace

std::shared_ptr<Communicator> open_communicator(const RunConfig& config, const Registry& registry,
                                                Backend& backend) {
  const ParallelConfig& p = config.parallel;
  const LaunchEnvironment launch = detect_launch_environment();
  const int64_t wanted = p.world_size();
  if (launch.size != wanted) {
    throw ConfigError("parallel", "parallel.data (" + std::to_string(p.data) +
                                      ") x parallel.expert (" + std::to_string(p.expert) +
                                      ") = " + std::to_string(wanted) + " ranks, but this is " +
                                      launch.describe() + "; " +
                                      rank_count_hint(wanted, launch.size));
  }
  if (p.comm.name.empty()) return make_single_process_communicator();
  auto comm = registry.create<Communicator>(p.comm.kind, p.comm.name,
                                            CreateArgs{p.comm.options, {}, &backend});
  if (comm->size() != wanted) {
    throw ConfigError(comm->id(), "rank " + std::to_string(comm->rank()) + " sees " +
                                      std::to_string(comm->size()) + " ranks, but parallel.data (" +
                                      std::to_string(p.data) + ") x parallel.expert (" +
                                      std::to_string(p.expert) + ") = " + std::to_string(wanted) +
                                      "; " + rank_count_hint(wanted, comm->size()));
  }
  return comm;
}

GradientBuckets::GradientBuckets(Communicator& comm, Backend& backend,
                                 const std::vector<Tensor>& grads, size_t bucket_bytes,
                                 std::vector<int> group)
    : comm_(comm), backend_(backend), group_(std::move(group)) {
  if (!group_.empty()) {
    // Each member receives every member's copy (see reduce()): a bucket per member's share.
    bucket_bytes = std::max<size_t>(bucket_bytes / group_.size(), 1);
  }
  Bucket current;
  size_t current_bytes = 0;
  auto close = [&] {
    if (current.members.empty()) return;
    if (current.members.size() > 1) {
      int64_t total = 0;
      for (const Tensor& g : current.members) total += g.numel();
      current.packed = backend_.empty({total});
    }
    buckets_.push_back(std::move(current));
    current = Bucket();
    current_bytes = 0;
  };
  for (auto it = grads.rbegin(); it != grads.rend(); ++it) {
    if (it->dtype() != DType::kF32) {
      throw ShapeError("parallel",
                       "gradients are summed across ranks in f32, got " + describe(*it));
    }
    if (current_bytes + it->nbytes() > bucket_bytes) close();
    current.members.push_back(*it);
    current_bytes += it->nbytes();
  }
  close();
}

void GradientBuckets::reduce(const Tensor& data) {
  if (group_.empty()) {
    comm_.all_reduce_sum(backend_, data);
    return;
  }
  // The interface has no sub-communicators: a group's sum is an all_to_all in which every
  // member sends its copy to every member (the other ranks send and receive nothing), and each
  // member adds the copies up in rank order, so that all of them hold the same bits.
  const int64_t n = data.numel();
  const int64_t members = static_cast<int64_t>(group_.size());
  const Tensor column = data.view({n, 1});
  Tensor outgoing = backend_.empty({members * n, 1});
  Tensor incoming = backend_.empty({members * n, 1});
  std::vector<int64_t> rows(static_cast<size_t>(comm_.size()), 0);
  for (int64_t i = 0; i < members; ++i) {
    backend_.copy(outgoing.slice_rows(i * n, (i + 1) * n), column);
    rows[static_cast<size_t>(group_[static_cast<size_t>(i)])] = n;
  }
  comm_.all_to_all(backend_, outgoing, rows, incoming, rows);
  backend_.copy(column, incoming.slice_rows(0, n));
  for (int64_t i = 1; i < members; ++i) {
    backend_.add(column, column, incoming.slice_rows(i * n, (i + 1) * n));
  }
}

void GradientBuckets::pack(size_t index) {
  Bucket& bucket = buckets_[index];
  if (!bucket.packed.defined()) return;
  int64_t offset = 0;
  for (const Tensor& g : bucket.members) {
    backend_.copy(bucket.packed.slice_rows(offset, offset + g.numel()), g);
    offset += g.numel();
  }
}

void GradientBuckets::unpack(size_t index) {
  Bucket& bucket = buckets_[index];
  if (!bucket.packed.defined()) return;
  int64_t offset = 0;
  for (const Tensor& g : bucket.members) {
    backend_.copy(g, bucket.packed.slice_rows(offset, offset + g.numel()));
    offset += g.numel();
  }
}

void GradientBuckets::all_reduce() {
  for (size_t i = 0; i < buckets_.size(); ++i) {
    Bucket& bucket = buckets_[i];
    pack(i);
    reduce(bucket.packed.defined() ? bucket.packed : bucket.members.front());
    unpack(i);
  }
}

void GradientBuckets::begin_overlap() {
  if (!group_.empty()) {
    throw Error("parallel", "a group's gradient sums (all_to_all) are not overlapped");
  }
  if (bucket_of_.empty()) {
    for (size_t i = 0; i < buckets_.size(); ++i) {
      for (const Tensor& g : buckets_[i].members) bucket_of_[g.raw()] = i;
    }
  }
  for (Bucket& bucket : buckets_) bucket.waiting = bucket.members.size();
  reported_.clear();
  next_start_ = 0;
  started_early_ = 0;
  overlapping_ = true;
}

void GradientBuckets::ready(const std::vector<Tensor>& finished) {
  if (!overlapping_) return;
  for (const Tensor& g : finished) {
    const auto it = bucket_of_.find(g.raw());
    if (it == bucket_of_.end() || !reported_.insert(g.raw()).second) continue;
    --buckets_[it->second].waiting;
  }
  const size_t before = next_start_;
  start_ready_buckets();
  // Overlapped: started while backward still has gradients of these buckets to finish.
  if (reported_.size() < bucket_of_.size()) started_early_ += next_start_ - before;
  // MPI moves a started collective on only inside its calls: give the ones in flight a turn
  // between the blocks' backward passes.
  for (size_t i = 0; i < next_start_; ++i) {
    if (buckets_[i].pending) buckets_[i].pending->test();
  }
}

void GradientBuckets::start_ready_buckets() {
  // In bucket order only: every rank starts the same collectives in the same order.
  while (next_start_ < buckets_.size() && buckets_[next_start_].waiting == 0) {
    Bucket& bucket = buckets_[next_start_];
    pack(next_start_);
    bucket.pending = comm_.start_all_reduce_sum(
        backend_, bucket.packed.defined() ? bucket.packed : bucket.members.front());
    ++next_start_;
  }
}

void GradientBuckets::finish_overlap() {
  if (!overlapping_) return;
  // Gradients never reported (a parameter the pass did not reach) are final now as well.
  for (Bucket& bucket : buckets_) bucket.waiting = 0;
  start_ready_buckets();
  for (size_t i = 0; i < buckets_.size(); ++i) {
    buckets_[i].pending->wait();
    buckets_[i].pending.reset();
    unpack(i);
  }
  overlapping_ = false;
}

GradientReduction::GradientReduction(Communicator& comm, Backend& backend, Transformer& model,
                                     bool distributed, size_t bucket_bytes)
    : comm_(comm), backend_(backend), expert_ranks_(model.expert_shard().count) {
  const std::vector<Parameter*> params = model.parameters();
  for (Parameter* p : params) all_.push_back(p->grad);
  if (expert_ranks_ > 1) {
    const std::vector<Parameter*> held = model.sharded_expert_parameters();
    const std::set<const Parameter*> sharded(held.begin(), held.end());
    for (Parameter* p : params) (sharded.count(p) ? experts_ : replicated_).push_back(p->grad);
    expert_squares_ = backend_.empty({1});
  }
  if (!distributed) return;
  buckets_ = std::make_unique<GradientBuckets>(
      comm_, backend_, expert_ranks_ > 1 ? replicated_ : all_, bucket_bytes);
  if (expert_ranks_ > 1) {
    std::vector<int> replicas;  // the ranks holding this rank's experts, one per data group
    for (int r = model.expert_shard().index; r < comm_.size(); r += expert_ranks_) {
      replicas.push_back(r);
    }
    if (replicas.size() > 1 && !experts_.empty()) {
      expert_buckets_ =
          std::make_unique<GradientBuckets>(comm_, backend_, experts_, bucket_bytes, replicas);
    }
  }
}

void GradientReduction::reduce() {
  if (buckets_ && overlapping_) {
    buckets_->finish_overlap();
  } else if (buckets_) {
    buckets_->all_reduce();
  }
  overlapping_ = false;
  if (expert_buckets_) expert_buckets_->all_reduce();
}

void GradientReduction::begin_overlap() {
  if (!buckets_) return;
  buckets_->begin_overlap();
  overlapping_ = true;
}

void GradientReduction::ready(const std::vector<Parameter*>& finished) {
  if (!overlapping_) return;
  std::vector<Tensor> grads;
  grads.reserve(finished.size());
  for (const Parameter* p : finished) grads.push_back(p->grad);
  buckets_->ready(grads);
}

void GradientReduction::squared_norm(const Tensor& out) {
  backend_.fill(out, 0.0f);
  if (expert_ranks_ < 2) {
    backend_.sum_squares_multi(all_, out);
    return;
  }
  // Every data group holds every shard once: the sum over all ranks counts each shard's
  // squares size() / P times.
  backend_.sum_squares_multi(replicated_, out);
  backend_.fill(expert_squares_, 0.0f);
  if (!experts_.empty()) backend_.sum_squares_multi(experts_, expert_squares_);
  comm_.all_reduce_sum(backend_, expert_squares_);
  backend_.scale(expert_squares_,
                 static_cast<float>(expert_ranks_) / static_cast<float>(comm_.size()));
  backend_.add(out, out, expert_squares_);
}

OptimizerShards::OptimizerShards(Communicator& comm, Backend& backend,
                                 const std::vector<Parameter*>& params)
    : comm_(comm), backend_(backend), params_(params), owner_(params.size(), 0) {
  // Largest first, each to the rank holding the fewest elements so far (ties: the lower rank,
  // then the earlier parameter): the same deal on every rank.
  std::vector<size_t> order(params.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return params[a]->value.numel() > params[b]->value.numel();
  });
  std::vector<int64_t> load(static_cast<size_t>(comm.size()), 0);
  for (size_t i : order) {
    const size_t rank =
        static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner_[i] = static_cast<int>(rank);
    load[rank] += params[i]->value.numel();
  }
  for (size_t i = 0; i < params.size(); ++i) {
    if (owner_[i] == comm.rank()) owned_.push_back(params[i]);
  }
}

void OptimizerShards::share_updated_parameters() {
  for (size_t i = 0; i < params_.size(); ++i) {
    Parameter& p = *params_[i];
    comm_.broadcast(backend_, p.value, owner_[i]);
    if (owner_[i] == comm_.rank()) continue;
    if (p.compute.defined()) backend_.convert(p.compute, p.value);
    backend_.fill(p.grad, 0.0f);
  }
}

void OptimizerShards::gather_state_on_writer(Optimizer& optimizer) {
  const int rank = comm_.rank();
  const std::vector<int64_t> none(static_cast<size_t>(comm_.size()), 0);
  for (size_t i = 0; i < params_.size(); ++i) {
    const int owner = owner_[i];
    if (owner == 0) continue;
    const bool involved = rank == 0 || rank == owner;
    std::vector<std::pair<std::string, Tensor>> state;
    if (involved) state = optimizer.state(backend_, {params_[i]});
    // Every rank takes part in each exchange: the owner says how many tensors there are.
    double count[1] = {rank == owner ? static_cast<double>(state.size()) : 0.0};
    comm_.all_reduce_sum_host(count);
    for (size_t k = 0; k < static_cast<size_t>(count[0]); ++k) {
      // A gather to rank 0 as an all_to_all in which only the owner sends and only rank 0
      // receives (the interface has no point-to-point call).
      const Tensor flat = involved ? state.at(k).second.view({-1}) : Tensor();
      const Tensor nothing = backend_.empty({0}, involved ? flat.dtype() : DType::kF32);
      std::vector<int64_t> send = none, receive = none;
      if (rank == owner) send[0] = flat.numel();
      if (rank == 0) receive[static_cast<size_t>(owner)] = flat.numel();
      comm_.all_to_all(backend_, rank == owner ? flat : nothing, send, rank == 0 ? flat : nothing,
                       receive);
    }
  }
}

void take_rank_rows(const std::vector<int32_t>& global, int64_t width, int rank, int ranks,
                    std::vector<int32_t>& local) {
  const int64_t rows = static_cast<int64_t>(global.size()) / width;
  const int64_t begin = rows * rank / ranks, end = rows * (rank + 1) / ranks;
  local.assign(global.begin() + begin * width, global.begin() + end * width);
}

void inject_rank_fault(int rank, int64_t step) {
  if (fault_at("NNKIT_FAULT_RANK_FAIL") == std::pair<int, int64_t>{rank, step}) {
    throw Error("train", "injected failure (NNKIT_FAULT_RANK_FAIL) on rank " +
                             std::to_string(rank) + " at step " + std::to_string(step));
  }
  if (fault_at("NNKIT_FAULT_RANK_HANG") == std::pair<int, int64_t>{rank, step}) {
    std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

}  // namespace nnkit
