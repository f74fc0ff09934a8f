// Purpose: comm/mpi, the Communicator of the CPU backend over MPI (Debian's OpenMPI): started by
// `mpirun -np N nnkit train CONFIG parallel.data=N`. Every collective is a non-blocking MPI call
// polled against a deadline, so a peer that died or hangs ends the job with a message naming
// this rank instead of a hang; start_all_reduce_sum returns such a call unwaited.
// Ownership: owns a duplicate of MPI_COMM_WORLD; MPI itself is initialised on first use and
// finalised when the process exits (MPI allows one initialisation per process).
// Thread-safety: one thread drives it (MPI_THREAD_FUNNELED).
#include <dlfcn.h>
#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/communicator.h"
#include "nnkit/error.h"
#include "nnkit/plugin.h"

namespace nnkit::comm_mpi {

namespace {

constexpr const char* kId = "comm/mpi";

// nnkit opens plugins with RTLD_LOCAL, but OpenMPI loads its own components later with dlopen
// and they resolve libmpi's symbols globally: promote the libmpi this plugin was linked with.
void make_mpi_symbols_global() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &info) != 0 && info.dli_fname) {
    dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  }
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void initialize_mpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    throw Error(kId, "MPI was already finalised in this process; start a new process per job");
  }
  make_mpi_symbols_global();
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
    throw Error(kId, "MPI_Init_thread failed; is this process started by mpirun?");
  }
  std::atexit(&finalize_at_exit);
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<size_t>(length));
}

int checked_count(int64_t count, const char* what) {
  if (count < 0 || count > INT_MAX) {
    throw ShapeError(kId, std::string(what) + " of " + std::to_string(count) +
                              " elements exceeds MPI's int count; use smaller buckets or tensors");
  }
  return static_cast<int>(count);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const Options& options, Backend* backend)
      : timeout_s_(options.get_float("timeout_s")) {
    if (backend != nullptr && !backend->device().is_host()) {
      throw ConfigError(kId, "comm/mpi moves host memory but the backend's tensors are on " +
                                 to_string(backend->device()) +
                                 "; use parallel.comm.type=nccl for a GPU backend");
    }
    if (backend == nullptr) return;  // the validation probe: no MPI for a config check
    initialize_mpi();
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    const LaunchEnvironment launch = detect_launch_environment();
    if (launch.size != size_) {
      throw ConfigError(kId, "the launcher says " + launch.describe() + " but MPI sees " +
                                 std::to_string(size_) + " rank(s); comm/mpi needs its ranks " +
                                 "started by mpirun (mpirun -np " + std::to_string(launch.size) +
                                 " nnkit train ...), not by a torchrun-style launcher");
    }
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // One call for both, so that the blocking and the started sum are the same bits.
  void all_reduce_sum(Backend& backend, const Tensor& data) override {
    start_all_reduce_sum(backend, data)->wait();
  }

  // An MPI_Iallreduce, waited for later (all_reduce_sum waits at once). OpenMPI moves a
  // non-blocking collective on only inside MPI calls: the caller's test() between its own work
  // (the trainer's, after each block's backward) is that progress.
  std::unique_ptr<PendingCollective> start_all_reduce_sum(Backend& backend,
                                                          const Tensor& data) override {
    check_all_reduce(*this, data);
    backend.synchronize();
    MPI_Request request;
    check(MPI_Iallreduce(MPI_IN_PLACE, host(data, "all_reduce_sum"),
                         checked_count(data.numel(), "all_reduce_sum"), MPI_FLOAT, MPI_SUM, comm_,
                         &request),
          "all_reduce_sum");
    return std::make_unique<MpiPending>(
        *this, request, data, "all_reduce_sum of " + std::to_string(data.numel()) + " floats");
  }

  void reduce_scatter_sum(Backend& backend, const Tensor& input, const Tensor& output) override {
    check_reduce_scatter(*this, input, output);
    backend.synchronize();
    MPI_Request request;
    check(MPI_Ireduce_scatter_block(host(input, "reduce_scatter_sum"),
                                    host(output, "reduce_scatter_sum"),
                                    checked_count(output.numel(), "reduce_scatter_sum"), MPI_FLOAT,
                                    MPI_SUM, comm_, &request),
          "reduce_scatter_sum");
    wait(request, "reduce_scatter_sum of " + std::to_string(input.numel()) + " floats");
  }

  void all_gather(Backend& backend, const Tensor& input, const Tensor& output) override {
    check_all_gather(*this, input, output);
    backend.synchronize();
    MPI_Request request;
    const int bytes = checked_count(static_cast<int64_t>(input.nbytes()), "all_gather");
    check(MPI_Iallgather(host(input, "all_gather"), bytes, MPI_BYTE, host(output, "all_gather"),
                         bytes, MPI_BYTE, comm_, &request),
          "all_gather");
    wait(request, "all_gather of " + std::to_string(input.nbytes()) + " bytes per rank");
  }

  void all_to_all(Backend& backend, const Tensor& input, const std::vector<int64_t>& send_rows,
                  const Tensor& output, const std::vector<int64_t>& recv_rows) override {
    const AllToAllLayout layout = check_all_to_all(*this, input, send_rows, output, recv_rows);
    // Point-to-point sends and receives of the non-empty blocks rather than MPI_Ialltoallv: an
    // exchange in which a rank has nothing to send or receive (a gather to rank 0, a token
    // exchange inside one expert group) left OpenMPI's non-blocking collectives out of step
    // across ranks, so that the next collective never completed. Messages between two ranks
    // on one communicator and tag arrive in order, so consecutive exchanges cannot mix.
    const size_t ranks = static_cast<size_t>(size_);
    backend.synchronize();
    char* in = static_cast<char*>(layout.sent_rows > 0 ? host(input, "all_to_all") : nullptr);
    char* out = static_cast<char*>(layout.received_rows > 0 ? host(output, "all_to_all") : nullptr);
    std::vector<MPI_Request> requests;
    int64_t sent = 0, received = 0;
    for (size_t r = 0; r < ranks; ++r) {
      const int64_t send_bytes = send_rows[r] * layout.row_bytes;
      const int64_t recv_bytes = recv_rows[r] * layout.row_bytes;
      const int peer = static_cast<int>(r);
      if (recv_bytes > 0) {
        requests.emplace_back();
        check(MPI_Irecv(out + received * layout.row_bytes,
                        checked_count(recv_bytes, "all_to_all count"), MPI_BYTE, peer, kAllToAllTag,
                        comm_, &requests.back()),
              "all_to_all");
      }
      if (send_bytes > 0) {
        requests.emplace_back();
        check(MPI_Isend(in + sent * layout.row_bytes, checked_count(send_bytes, "all_to_all count"),
                        MPI_BYTE, peer, kAllToAllTag, comm_, &requests.back()),
              "all_to_all");
      }
      sent += send_rows[r];
      received += recv_rows[r];
    }
    wait_all(requests, "all_to_all of " + std::to_string(layout.sent_rows) + " rows");
  }

  void broadcast(Backend& backend, const Tensor& data, int root) override {
    check_broadcast(*this, root);
    backend.synchronize();
    MPI_Request request;
    check(MPI_Ibcast(host(data, "broadcast"),
                     checked_count(static_cast<int64_t>(data.nbytes()), "broadcast"), MPI_BYTE,
                     root, comm_, &request),
          "broadcast");
    wait(request, "broadcast of " + std::to_string(data.nbytes()) + " bytes from rank " +
                      std::to_string(root));
  }

  void barrier() override {
    MPI_Request request;
    check(MPI_Ibarrier(comm_, &request), "barrier");
    wait(request, "barrier");
  }

  void all_reduce_sum_host(std::span<double> values) override {
    MPI_Request request;
    check(MPI_Iallreduce(MPI_IN_PLACE, values.data(),
                         checked_count(static_cast<int64_t>(values.size()), "all_reduce_sum_host"),
                         MPI_DOUBLE, MPI_SUM, comm_, &request),
          "all_reduce_sum_host");
    wait(request, "all_reduce_sum_host of " + std::to_string(values.size()) + " values");
  }

  void abort(const std::string& message) noexcept override {
    std::fprintf(stderr, "[%s] rank %d of %d failed: %s; ending the job\n", kId, rank_, size_,
                 message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; this is for an MPI that does
  }

 private:
  void* host(const Tensor& t, const char* what) const {
    if (!t.device().is_host()) {
      throw ShapeError(kId, std::string(what) + ": " + describe(t) +
                                " is not in host memory (comm/mpi works on the CPU backend)");
    }
    return t.raw();
  }
  void check(int code, const char* what) const {
    if (code != MPI_SUCCESS) {
      throw Error(
          kId, "rank " + std::to_string(rank_) + ": " + what + " failed: " + mpi_error_text(code));
    }
  }
  // Polls the request until it completes or the deadline passes (see wait_all).
  void wait(MPI_Request& request, const std::string& what) {
    std::vector<MPI_Request> one{request};
    wait_all(one, what);
    request = one.front();
  }
  // Polls the requests until all complete (MPI releases them) or the deadline passes; short
  // sleeps keep a waiting rank from taking the CPU its peers compute on.
  void wait_all(std::vector<MPI_Request>& requests, const std::string& what) {
    const auto start = std::chrono::steady_clock::now();
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      int done = 0;
      check(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done,
                        MPI_STATUSES_IGNORE),
            what.c_str());
      if (done) return;
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited > timeout_s_) abort(collective_timeout_message(what, timeout_s_));
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  // A started all-reduce: its request, and its tensor kept alive while MPI owns the memory.
  class MpiPending final : public PendingCollective {
   public:
    MpiPending(MpiCommunicator& comm, MPI_Request request, Tensor data, std::string what)
        : comm_(comm), request_(request), data_(std::move(data)), what_(std::move(what)) {}
    ~MpiPending() override {
      try {
        wait();
      } catch (const std::exception& e) {
        comm_.abort(e.what());
      }
    }
    void wait() override {
      if (request_ != MPI_REQUEST_NULL) comm_.wait(request_, what_);
      request_ = MPI_REQUEST_NULL;
    }
    bool test() override {
      if (request_ == MPI_REQUEST_NULL) return true;
      int done = 0;
      comm_.check(MPI_Test(&request_, &done, MPI_STATUS_IGNORE), what_.c_str());
      return done != 0;  // MPI_Test set request_ to MPI_REQUEST_NULL when done
    }

   private:
    MpiCommunicator& comm_;
    MPI_Request request_;
    Tensor data_;
    std::string what_;
  };

  static constexpr int kAllToAllTag = 4242;
  double timeout_s_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

std::vector<OptionSpec> mpi_options() {
  return {{"timeout_s", OptionType::kFloat, "600", 1.0, std::nullopt,
           "seconds a collective may wait for the other ranks before the job is ended"}};
}

Component* create_mpi(const CreateArgs& args) {
  return new MpiCommunicator(args.options, args.backend);
}

}  // namespace

}  // namespace nnkit::comm_mpi

NNKIT_PLUGIN(comm, mpi, "0.1.0", "collectives over MPI (OpenMPI) for the CPU backend",
             &nnkit::comm_mpi::mpi_options, &nnkit::comm_mpi::create_mpi)
