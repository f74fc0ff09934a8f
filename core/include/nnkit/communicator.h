// Purpose: the collective-communication interface that data- and expert-parallel training use
// (plugin kind `comm`: comm/mpi on the CPU backend, comm/nccl on CUDA), the built-in
// single-process communicator that needs neither, and the launch environment (which rank this
// process is, as mpirun or a torchrun-style launcher said).
// Ownership: a Communicator owns its transport (the MPI world, an NCCL communicator) and never
// the Backend or the tensors it is given; the caller keeps both alive for the call. Collectives
// are blocking from the caller's view: when one returns, the result is in the output tensor as
// seen by later work on the backend. The one exception, start_all_reduce_sum, returns a
// PendingCollective that the caller owns and waits for; it keeps its tensor alive until then.
// Thread-safety: one thread drives a communicator, and every rank must issue the same collectives
// in the same order with matching sizes (the MPI/NCCL rule). A collective that a peer does not
// join within the communicator's timeout ends the whole job with a message naming this rank, the
// collective and the timeout (never a silent hang): see abort().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "nnkit/component.h"
#include "nnkit/export.h"
#include "nnkit/tensor.h"

namespace nnkit {

class Backend;

// An all-reduce started by Communicator::start_all_reduce_sum and not yet waited for. Owned by
// the caller; destroying it waits (a transport may still be reading and writing the tensor).
// It refers to its communicator: wait for it (or destroy it) before the communicator goes.
class NNKIT_API PendingCollective {
 public:
  virtual ~PendingCollective();
  // Returns when the collective has completed and its result is visible to later work on the
  // backend it was started on, under the same timeout rule as the blocking collectives.
  // Calling it again returns at once.
  virtual void wait() = 0;
  // Never blocks: lets a transport that progresses only inside its calls (MPI) move the
  // collective on, and says whether it has completed (wait() then returns at once).
  virtual bool test() = 0;
};

class NNKIT_API Communicator : public Component {
 public:
  ~Communicator() override;

  // This process's rank in [0, size()) and the number of ranks.
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // data: f32 on `backend`'s device, any shape; in place, every rank ends with the elementwise
  // sum over ranks.
  virtual void all_reduce_sum(Backend& backend, const Tensor& data) = 0;
  // The non-blocking all_reduce_sum (plugin ABI 5): starts the same sum of `data` and returns
  // without waiting for the peers, so that the caller keeps computing (the trainer overlaps the
  // gradient buckets with the backward pass). The result must be bit for bit what
  // all_reduce_sum gives for the same data (the same reduction, the same order of summation).
  // The work already queued on `backend` that writes `data` is part of the input; until wait()
  // returns the caller neither reads nor writes `data`. Started collectives count in the
  // collective order when they are started: every rank starts (and issues its other
  // collectives) in the same order, and several may be in flight at once. The default runs
  // all_reduce_sum and returns a completed handle (correct, with nothing overlapped).
  virtual std::unique_ptr<PendingCollective> start_all_reduce_sum(Backend& backend,
                                                                  const Tensor& data);
  // input: f32, size() * output.numel() elements; output: rank r gets the sum over ranks of the
  // r-th chunk of input (chunks of output.numel() elements, in order).
  virtual void reduce_scatter_sum(Backend& backend, const Tensor& input, const Tensor& output) = 0;
  // output: size() * input.numel() elements of input's dtype: rank r's input lands in chunk r.
  virtual void all_gather(Backend& backend, const Tensor& input, const Tensor& output) = 0;
  // Rows of the first dimension, any dtype; input and output have the same row width.
  // send_rows[r] rows go to rank r (consecutive blocks of input, rank 0's first) and
  // recv_rows[r] rows come from rank r (consecutive blocks of output). Both lists have size()
  // entries; recv_rows must match what the peers send (exchange the counts first, e.g. with an
  // all_to_all of one i32 row per rank). Sums of the lists may not exceed the tensors' rows.
  virtual void all_to_all(Backend& backend, const Tensor& input,
                          const std::vector<int64_t>& send_rows, const Tensor& output,
                          const std::vector<int64_t>& recv_rows) = 0;
  // data, any dtype: every rank ends with root's contents.
  virtual void broadcast(Backend& backend, const Tensor& data, int root) = 0;
  // Returns when every rank has entered it.
  virtual void barrier() = 0;
  // Host values (flags, counts, losses on the host): in place, the sum over ranks.
  virtual void all_reduce_sum_host(std::span<double> values) = 0;

  // Ends every process of the job after printing `message` tagged with this rank: what a rank
  // that failed calls so that its peers do not wait for it until their collectives time out.
  // Returns only on the single-process communicator (which has no peers to end).
  virtual void abort(const std::string& message) noexcept = 0;
};

// Argument checks shared by every communicator, so that all of them refuse the same calls with
// the same words (ShapeError tagged with the communicator's id). Call them before enqueuing.
NNKIT_API void check_all_reduce(const Communicator& comm, const Tensor& data);
NNKIT_API void check_reduce_scatter(const Communicator& comm, const Tensor& input,
                                    const Tensor& output);
NNKIT_API void check_all_gather(const Communicator& comm, const Tensor& input,
                                const Tensor& output);
NNKIT_API void check_broadcast(const Communicator& comm, int root);
// The bytes of one row and the rows sent and received by all_to_all, after checking the counts
// against size() and the tensors.
struct AllToAllLayout {
  int64_t row_bytes = 0;
  int64_t sent_rows = 0;
  int64_t received_rows = 0;
};
NNKIT_API AllToAllLayout check_all_to_all(const Communicator& comm, const Tensor& input,
                                          const std::vector<int64_t>& send_rows,
                                          const Tensor& output,
                                          const std::vector<int64_t>& recv_rows);
// What a communicator prints when a collective outlives its timeout (before abort()).
NNKIT_API std::string collective_timeout_message(const std::string& what, double timeout_s);

// Where this process sits in a multi-process launch, read from the environment: OpenMPI's
// OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK, then PMI_RANK/PMI_SIZE (MPICH, Slurm), then the
// torchrun-style RANK, WORLD_SIZE, LOCAL_RANK (with MASTER_ADDR and MASTER_PORT for a
// rendezvous). A process started on its own is rank 0 of 1.
struct LaunchEnvironment {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  std::string launcher;     // "mpirun", "pmi", "torchrun" or "" (a single process)
  std::string master_addr;  // MASTER_ADDR (torchrun style), else ""
  int master_port = 0;      // MASTER_PORT, else 0
  // "rank 1 of 2 (OMPI_COMM_WORLD_RANK/SIZE)" for messages.
  NNKIT_API std::string describe() const;
};

// Throws ConfigError naming the variable when a value is not a number or out of range.
NNKIT_API LaunchEnvironment detect_launch_environment();

// The built-in communicator of a job with one process: rank 0 of 1, every collective a copy (or
// nothing). Needs no plugin, no MPI and no NCCL.
NNKIT_API std::shared_ptr<Communicator> make_single_process_communicator();

}  // namespace nnkit
