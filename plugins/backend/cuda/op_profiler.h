// Purpose: optional per-op stream timing for backend/cuda (NNKIT_CUDA_PROFILE=1). Each op records a
// CUDA event pair around its work on the stream; the pairs are read back whenever the stream
// has drained anyway (synchronize, copy_to_host), so profiling adds no synchronisation of its
// own. At backend destruction a table goes to the log: per op the calls, stream milliseconds and
// share, plus the stream's idle time (wall time between the first and last event minus the sum
// of op times: host work the GPU waited for, such as a host round trip), split by the op the
// stream was idle before, and the part that followed a host wait. An op's time runs from
// its start event to its stop event, so when the GPU outruns the host (small decode steps) it
// includes the launch latency of the op's kernels, not only their execution.
// Ownership: owned by CudaBackend; events are pooled and destroyed with the profiler.
// Thread-safety: one thread, like the backend.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <string>
#include <vector>

namespace nnkit::cuda {

class OpProfiler {
 public:
  explicit OpProfiler(cudaStream_t stream);
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;
  ~OpProfiler();

  void begin(std::string op);
  // NNKIT_CUDA_PROFILE_SHAPES=1: ops that report a shape key (gemm) are split by it.
  bool by_shape() const { return by_shape_; }
  void end();
  // The host waited for the device (await_host_copies, a copy to the host): the stream's idle
  // time until the next op is also counted under "(after a host wait)".
  void mark_host_wait() { after_host_wait_ = true; }
  // Reads the finished event pairs (the stream has drained).
  void collect();
  // The table described above, one string.
  std::string report();

 private:
  struct Pending {
    std::string op;
    cudaEvent_t start, stop;
    bool after_host_wait = false;
  };
  struct Totals {
    int64_t calls = 0;
    double ms = 0.0;
    double idle_before_ms = 0.0;  // stream idle between the previous op's end and this op
  };
  cudaEvent_t take_event();

  cudaStream_t stream_;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> pool_;
  std::map<std::string, Totals> totals_;
  cudaEvent_t first_ = nullptr;  // start of the first op ever profiled
  cudaEvent_t last_ = nullptr;   // stop of the latest collected op
  double span_ms_ = 0.0;         // first_ -> last_
  int depth_ = 0;                // ops calling ops (gemm -> fill) count once, as the outer op
  bool by_shape_ = false;
  bool after_host_wait_ = false;  // the next op starts after the host waited for the device
  double idle_after_waits_ms_ = 0.0;
};

// Times one op while in scope; does nothing when the profiler is off (null).
class OpScope {
 public:
  OpScope(OpProfiler* profiler, const char* op) : profiler_(profiler) {
    if (profiler_ != nullptr) profiler_->begin(op);
  }
  // `detail` (called only when profiling by shape) names the op's shape class.
  template <typename Detail>
  OpScope(OpProfiler* profiler, const char* op, Detail detail) : profiler_(profiler) {
    if (profiler_ != nullptr) profiler_->begin(profiler_->by_shape() ? detail() : std::string(op));
  }
  ~OpScope() {
    if (profiler_ != nullptr) profiler_->end();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpProfiler* profiler_;
};

}  // namespace nnkit::cuda
