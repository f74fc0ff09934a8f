// Purpose: comm/nccl, the Communicator of the CUDA backend over NCCL. Ranks come from mpirun
// (OMPI_COMM_WORLD_*) or torchrun-style RANK/WORLD_SIZE/LOCAL_RANK; the NCCL unique id goes from
// rank 0 to the others over a small TCP rendezvous at MASTER_ADDR:MASTER_PORT (tcp_rendezvous.h;
// 127.0.0.1 and the `port` option when unset). Collectives run on the communicator's own stream
// after the backend's queued work finishes, and are polled against a deadline: a peer that died
// or hangs ends the job with a message naming this rank instead of a hang; start_all_reduce_sum
// returns before its sum completes (an event on that stream says when).
// Ownership: owns the ncclComm_t, its stream and a small device scratch buffer; borrows the
// backend's device (set current before every call).
// Thread-safety: one thread drives it.
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "nnkit/backend.h"
#include "nnkit/communicator.h"
#include "nnkit/error.h"
#include "nnkit/plugin.h"
#include "tcp_rendezvous.h"

namespace nnkit::comm_nccl {

namespace {

constexpr const char* kId = "comm/nccl";

void check_cuda(cudaError_t status, const char* call, int rank) {
  if (status != cudaSuccess) {
    throw Error(kId, "rank " + std::to_string(rank) + ": " + call +
                         " failed: " + cudaGetErrorString(status));
  }
}

void check_nccl(ncclResult_t status, const char* call, int rank) {
  if (status != ncclSuccess) {
    throw Error(kId, "rank " + std::to_string(rank) + ": " + call +
                         " failed: " + ncclGetErrorString(status) + " (NCCL_DEBUG=WARN says more)");
  }
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kU8:
      return ncclUint8;
  }
  return ncclUint8;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const Options& options, Backend* backend)
      : timeout_s_(options.get_float("timeout_s")) {
    if (backend == nullptr) return;  // the validation probe: no GPU for a config check
    if (backend->device().type != DeviceType::kCuda) {
      throw ConfigError(kId, "comm/nccl needs a CUDA backend, the backend is on " +
                                 to_string(backend->device()) +
                                 "; use parallel.comm.type=mpi for the CPU backend");
    }
    device_ = backend->device().index;
    const LaunchEnvironment launch = detect_launch_environment();
    rank_ = launch.rank;
    size_ = launch.size;
    if (size_ > 1 && launch.local_rank != device_) {
      std::fprintf(stderr,
                   "[%s] note: rank %d has LOCAL_RANK %d but uses CUDA device %d; set "
                   "backend.device to the local rank when a host has one GPU per rank\n",
                   kId, rank_, launch.local_rank, device_);
    }
    // NVLink multicast stays off unless the user chose otherwise (it can take shared GPUs out
    // of service on some hosts).
    ::setenv("NCCL_NVLS_ENABLE", "0", 0);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice", rank_);
    ncclUniqueId id;
    std::vector<uint8_t> bytes(sizeof(id));
    if (rank_ == 0) {
      check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", rank_);
      std::memcpy(bytes.data(), &id, sizeof(id));
    }
    RendezvousConfig rendezvous;
    rendezvous.address = launch.master_addr.empty() ? "127.0.0.1" : launch.master_addr;
    rendezvous.port =
        launch.master_port > 0 ? launch.master_port : static_cast<int>(options.get_int("port"));
    rendezvous.rank = rank_;
    rendezvous.size = size_;
    rendezvous.timeout_s = timeout_s_;
    bytes = rendezvous_broadcast(rendezvous, bytes);
    if (bytes.size() != sizeof(id)) {
      throw Error(kId, "rank " + std::to_string(rank_) + " got a " + std::to_string(bytes.size()) +
                           "-byte NCCL id from rank 0, expected " + std::to_string(sizeof(id)) +
                           " (another program on MASTER_PORT?)");
    }
    std::memcpy(&id, bytes.data(), sizeof(id));
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate",
               rank_);
    check_cuda(cudaMalloc(&scratch_, kScratchBytes), "cudaMalloc", rank_);
    // Every rank has reached rank 0 in the rendezvous, so a blocking init does not wait for a
    // rank that never started.
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank", rank_);
  }

  ~NcclCommunicator() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(Backend& backend, const Tensor& data) override {
    check_all_reduce(*this, data);
    begin(backend);
    check_nccl(ncclAllReduce(data.raw(), data.raw(), static_cast<size_t>(data.numel()), ncclFloat32,
                             ncclSum, comm_, stream_),
               "ncclAllReduce", rank_);
    finish("all_reduce_sum of " + std::to_string(data.numel()) + " floats");
  }

  // The same ncclAllReduce on the communicator's stream as all_reduce_sum (the same bits),
  // with an event behind it that wait() polls. The Backend interface offers no event to make
  // this stream wait for, so the start still waits for the backend's queued work on the host
  // (as every collective here does); the backward kernels enqueued after it then run while
  // NCCL sums. Later collectives queue behind it on the same stream.
  std::unique_ptr<PendingCollective> start_all_reduce_sum(Backend& backend,
                                                          const Tensor& data) override {
    check_all_reduce(*this, data);
    begin(backend);
    check_nccl(ncclAllReduce(data.raw(), data.raw(), static_cast<size_t>(data.numel()), ncclFloat32,
                             ncclSum, comm_, stream_),
               "ncclAllReduce", rank_);
    cudaEvent_t done = nullptr;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate", rank_);
    check_cuda(cudaEventRecord(done, stream_), "cudaEventRecord", rank_);
    return std::make_unique<NcclPending>(
        *this, done, data, "all_reduce_sum of " + std::to_string(data.numel()) + " floats");
  }

  void reduce_scatter_sum(Backend& backend, const Tensor& input, const Tensor& output) override {
    check_reduce_scatter(*this, input, output);
    begin(backend);
    check_nccl(ncclReduceScatter(input.raw(), output.raw(), static_cast<size_t>(output.numel()),
                                 ncclFloat32, ncclSum, comm_, stream_),
               "ncclReduceScatter", rank_);
    finish("reduce_scatter_sum of " + std::to_string(input.numel()) + " floats");
  }

  void all_gather(Backend& backend, const Tensor& input, const Tensor& output) override {
    check_all_gather(*this, input, output);
    begin(backend);
    check_nccl(ncclAllGather(input.raw(), output.raw(), input.nbytes(), ncclUint8, comm_, stream_),
               "ncclAllGather", rank_);
    finish("all_gather of " + std::to_string(input.nbytes()) + " bytes per rank");
  }

  void all_to_all(Backend& backend, const Tensor& input, const std::vector<int64_t>& send_rows,
                  const Tensor& output, const std::vector<int64_t>& recv_rows) override {
    const AllToAllLayout layout = check_all_to_all(*this, input, send_rows, output, recv_rows);
    const size_t ranks = static_cast<size_t>(size_);
    const size_t element = dtype_size(input.dtype());
    const size_t row_elements = static_cast<size_t>(layout.row_bytes) / element;
    auto* in = static_cast<uint8_t*>(input.raw());
    auto* out = static_cast<uint8_t*>(output.raw());
    begin(backend);
    check_nccl(ncclGroupStart(), "ncclGroupStart", rank_);
    size_t send_offset = 0, recv_offset = 0;
    for (size_t r = 0; r < ranks; ++r) {
      const size_t send_elements = static_cast<size_t>(send_rows[r]) * row_elements;
      const size_t recv_elements = static_cast<size_t>(recv_rows[r]) * row_elements;
      const int peer = static_cast<int>(r);
      if (send_elements > 0) {
        check_nccl(ncclSend(in + send_offset * element, send_elements, nccl_type(input.dtype()),
                            peer, comm_, stream_),
                   "ncclSend", rank_);
      }
      if (recv_elements > 0) {
        check_nccl(ncclRecv(out + recv_offset * element, recv_elements, nccl_type(input.dtype()),
                            peer, comm_, stream_),
                   "ncclRecv", rank_);
      }
      send_offset += send_elements;
      recv_offset += recv_elements;
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd", rank_);
    finish("all_to_all of " + std::to_string(layout.sent_rows) + " rows");
  }

  void broadcast(Backend& backend, const Tensor& data, int root) override {
    check_broadcast(*this, root);
    begin(backend);
    check_nccl(
        ncclBroadcast(data.raw(), data.raw(), data.nbytes(), ncclUint8, root, comm_, stream_),
        "ncclBroadcast", rank_);
    finish("broadcast of " + std::to_string(data.nbytes()) + " bytes from rank " +
           std::to_string(root));
  }

  void barrier() override {
    double none[1] = {0.0};
    all_reduce_sum_host(none);
  }

  void all_reduce_sum_host(std::span<double> values) override {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice", rank_);
    for (size_t done = 0; done < values.size();) {
      const size_t n = std::min(values.size() - done, kScratchBytes / sizeof(double));
      check_cuda(cudaMemcpyAsync(scratch_, values.data() + done, n * sizeof(double),
                                 cudaMemcpyHostToDevice, stream_),
                 "cudaMemcpyAsync", rank_);
      check_nccl(ncclAllReduce(scratch_, scratch_, n, ncclFloat64, ncclSum, comm_, stream_),
                 "ncclAllReduce", rank_);
      check_cuda(cudaMemcpyAsync(values.data() + done, scratch_, n * sizeof(double),
                                 cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync", rank_);
      finish("all_reduce_sum_host of " + std::to_string(values.size()) + " values");
      done += n;
    }
  }

  void abort(const std::string& message) noexcept override {
    std::fprintf(stderr, "[%s] rank %d of %d failed: %s; ending the job\n", kId, rank_, size_,
                 message.c_str());
    std::fflush(stderr);
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    // The launcher (mpirun, torchrun) ends the other ranks when one exits with an error.
    std::_Exit(1);
  }

 private:
  static constexpr size_t kScratchBytes = 4096;

  // A started all-reduce: the event recorded behind it on stream_, and its tensor kept alive
  // while NCCL writes it.
  class NcclPending final : public PendingCollective {
   public:
    NcclPending(NcclCommunicator& comm, cudaEvent_t done, Tensor data, std::string what)
        : comm_(comm), done_(done), data_(std::move(data)), what_(std::move(what)) {}
    ~NcclPending() override {
      try {
        wait();
      } catch (const std::exception& e) {
        comm_.abort(e.what());
      }
      cudaEventDestroy(done_);
    }
    void wait() override {
      const auto start = std::chrono::steady_clock::now();
      while (!test()) {
        comm_.poll_async_error(what_);
        if (waited_s(start) > comm_.timeout_s_) {
          comm_.abort(collective_timeout_message(what_, comm_.timeout_s_));
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    bool test() override {
      if (complete_) return true;
      const cudaError_t status = cudaEventQuery(done_);
      if (status != cudaSuccess && status != cudaErrorNotReady) {
        check_cuda(status, what_.c_str(), comm_.rank_);
      }
      complete_ = status == cudaSuccess;
      return complete_;
    }

   private:
    NcclCommunicator& comm_;
    cudaEvent_t done_;
    Tensor data_;
    std::string what_;
    bool complete_ = false;
  };

  // The backend's queued work (which produced the inputs) completes before NCCL reads them.
  void begin(Backend& backend) {
    backend.synchronize();
    check_cuda(cudaSetDevice(device_), "cudaSetDevice", rank_);
  }
  // Waits for the collective on the stream, polling NCCL for asynchronous errors, against the
  // deadline; when this returns the result is in place for the backend's later work.
  void finish(const std::string& what) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t status = cudaStreamQuery(stream_);
      if (status == cudaSuccess) return;
      if (status != cudaErrorNotReady) check_cuda(status, what.c_str(), rank_);
      poll_async_error(what);
      if (waited_s(start) > timeout_s_) abort(collective_timeout_message(what, timeout_s_));
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  void poll_async_error(const std::string& what) {
    ncclResult_t state = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError", rank_);
    if (state != ncclSuccess && state != ncclInProgress) check_nccl(state, what.c_str(), rank_);
  }
  static double waited_s(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  double timeout_s_;
  int device_ = 0;
  int rank_ = 0;
  int size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;
};

std::vector<OptionSpec> nccl_options() {
  return {{"timeout_s", OptionType::kFloat, "600", 1.0, std::nullopt,
           "seconds a collective (or the start-up rendezvous) may wait for the other ranks"},
          {"port", OptionType::kInt, "29500", 1.0, 65535.0,
           "rank 0's rendezvous port when MASTER_PORT is unset (mpirun launches)"}};
}

Component* create_nccl(const CreateArgs& args) {
  return new NcclCommunicator(args.options, args.backend);
}

}  // namespace

}  // namespace nnkit::comm_nccl

NNKIT_PLUGIN(comm, nccl, "0.1.0", "collectives over NCCL for the CUDA backend",
             &nnkit::comm_nccl::nccl_options, &nnkit::comm_nccl::create_nccl)
