// Purpose: backend/cuda's plugin entry, options, device memory, copies, synchronisation and the
// kernel-fault report. Owned by backend/cuda.
// Memory: cudaMalloc costs tens of microseconds and synchronises the device, and a training step
// allocates and frees the same few hundred activation sizes every step, so freed blocks go to a
// cache keyed by size class and are handed out again. Reuse is safe without events because every
// op of this backend runs on its one stream: a block freed by the host after enqueueing its last
// use is only reused by work enqueued later on the same stream.
#include "cuda_backend.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cuda_check.h"
#include "gemm_lt.h"
#include "host_copies.h"
#include "nnkit/error.h"
#include "nnkit/logging.h"
#include "nnkit/plugin.h"

namespace nnkit::cuda {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw Error("backend/cuda", std::string(call) + " failed: " + cudaGetErrorName(status) + " (" +
                                  cudaGetErrorString(status) + ") at " + file + ":" +
                                  std::to_string(line));
}

void throw_cublas_error(int status, const char* call, const char* file, int line) {
  throw Error("backend/cuda", std::string(call) + " failed: cuBLAS status " +
                                  std::to_string(status) + " (" +
                                  cublasGetStatusString(static_cast<cublasStatus_t>(status)) +
                                  ") at " + file + ":" + std::to_string(line));
}

// Freed device blocks by size class, reused in stream order (see the file comment). Bounded: past
// kMaxCachedBytes a freed block goes back to the driver.
class DeviceBlockCache {
 public:
  explicit DeviceBlockCache(int device) : device_(device) {}
  DeviceBlockCache(const DeviceBlockCache&) = delete;
  DeviceBlockCache& operator=(const DeviceBlockCache&) = delete;

  ~DeviceBlockCache() {
    // No throwing here: a failing cudaFree at teardown (driver shutting down) is ignored.
    cudaSetDevice(device_);
    for (auto& [size, blocks] : free_) {
      for (void* p : blocks) cudaFree(p);
    }
    for (auto& [size, blocks] : graph_free_) {
      for (void* p : blocks) cudaFree(p);
    }
  }

  // Bytes rounded up to a class: 512 B steps to 1 MiB, then 2 MiB steps.
  static size_t size_class(size_t bytes) {
    constexpr size_t kSmallStep = 512, kLargeStep = size_t{2} << 20;
    if (bytes <= (size_t{1} << 20))
      return std::max(kSmallStep, (bytes + kSmallStep - 1) / kSmallStep * kSmallStep);
    return (bytes + kLargeStep - 1) / kLargeStep * kLargeStep;
  }

  // A block of `size` (a size class) or throws with the sizes when the device is out of memory
  // even after returning the cached blocks to the driver.
  void* acquire(size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (capturing_) {
        // Recording a graph: blocks come from the graph pool first, and every block handed out
        // now belongs to the recorded work from then on (its replays write to it).
        auto pooled = graph_free_.find(size);
        if (pooled != graph_free_.end() && !pooled->second.empty()) {
          void* p = pooled->second.back();
          pooled->second.pop_back();
          return p;
        }
      }
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        if (capturing_) graph_owned_.insert(p);
        return p;
      }
    }
    void* p = nullptr;
    if (cudaMalloc(&p, size) == cudaSuccess) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (capturing_) graph_owned_.insert(p);
      return p;
    }
    cudaGetLastError();  // clear the sticky-free allocation error
    if (capturing_) {
      throw Error("backend/cuda", "out of device memory allocating " + std::to_string(size) +
                                      " bytes while recording a CUDA Graph; set "
                                      "backend.cuda_graphs=false or reduce train.batch_size");
    }
    trim();
    const cudaError_t status = cudaMalloc(&p, size);
    if (status != cudaSuccess) {
      cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      throw Error("backend/cuda", "out of device memory allocating " + std::to_string(size) +
                                      " bytes on cuda:" + std::to_string(device_) + " (" +
                                      std::to_string(free_bytes >> 20) + " MiB free of " +
                                      std::to_string(total_bytes >> 20) +
                                      " MiB); reduce train.batch_size or train.seq_len, turn "
                                      "on train.activation_checkpointing, or use "
                                      "backend.precision=bf16");
    }
    return p;
  }

  void release(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // A block that recorded work uses goes back to the graph pool, never to other users.
      if (capturing_ || graph_owned_.count(p) != 0) {
        graph_owned_.insert(p);
        graph_free_[size].push_back(p);
        return;
      }
      if (cached_ + size <= kMaxCachedBytes) {
        free_[size].push_back(p);
        cached_ += size;
        return;
      }
    }
    cudaFree(p);
  }

  // Bytes of free blocks held for reuse (acquire() hands them out before asking the driver).
  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  // While on, acquire/release serve the graph pool (see acquire).
  void set_capturing(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    capturing_ = on;
  }

 private:
  static constexpr size_t kMaxCachedBytes = size_t{8} << 30;

  // Returns every cached block to the driver (before retrying a failed allocation).
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    cudaDeviceSynchronize();  // blocks may still be read by enqueued work
    for (auto& [size, blocks] : free_) {
      for (void* p : blocks) cudaFree(p);
      blocks.clear();
    }
    cached_ = 0;
  }

  int device_;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  bool capturing_ = false;
  std::unordered_map<size_t, std::vector<void*>> graph_free_;  // free blocks of recorded work
  std::unordered_set<void*> graph_owned_;                      // every block recorded work uses
};

namespace {

std::vector<OptionSpec> cuda_options() {
  return {OptionSpec{"device", OptionType::kInt, "0", 0.0, 1024.0, "CUDA device index"},
          OptionSpec{"precision", OptionType::kString, "bf16", std::nullopt, std::nullopt,
                     "compute precision: bf16 | fp16 | fp32 (weights and activations; master "
                     "weights, gradients, optimizer state and statistics stay fp32)"},
          OptionSpec{"tf32", OptionType::kBool, "false", std::nullopt, std::nullopt,
                     "with precision fp32: let cuBLAS use TF32 tensor cores for fp32 products "
                     "(faster, ~1e-3 relative error)"},
          OptionSpec{"cuda_graphs", OptionType::kBool, "true", std::nullopt, std::nullopt,
                     "record training steps whose shapes are static (dense models) in a CUDA "
                     "Graph once and replay it; MoE steps always run uncaptured"}};
}

// The `precision` option as a dtype; anything else is refused with the valid values.
DType parse_precision(const Options& options) {
  const std::string value = options.get_string("precision");
  if (value == "bf16" || value.empty()) return DType::kBF16;  // empty: built without defaults
  if (value == "fp16") return DType::kF16;
  if (value == "fp32") return DType::kF32;
  options.fail("precision", "is '" + value + "'; valid values: bf16, fp16, fp32");
}

Component* create_cuda(const CreateArgs& args) {
  auto* backend = new CudaBackend(static_cast<int>(args.options.get_int("device")),
                                  args.options.get_bool("tf32"), parse_precision(args.options));
  backend->set_graphs_enabled(args.options.get_bool("cuda_graphs"));
  return backend;
}

const char* fault_op_name(int32_t op) {
  switch (static_cast<FaultOp>(op)) {
    case FaultOp::kGatherRows:
      return "gather_rows";
    case FaultOp::kScatterAddRows:
      return "scatter_add_rows";
    case FaultOp::kCrossEntropy:
      return "cross_entropy";
    case FaultOp::kMoeSort:
      return "moe_sort_by_expert";
    case FaultOp::kKvCacheAppend:
      return "kv_cache_append";
  }
  return "an indexed op";
}

}  // namespace

CudaBackend::CudaBackend(int device, bool tf32, DType compute_dtype)
    : device_(device), compute_dtype_(compute_dtype) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw Error("backend/cuda",
                std::string("no CUDA device available (") +
                    (status != cudaSuccess ? cudaGetErrorString(status) : "0 devices found") +
                    "); use `backend: {type: cpu}` on this machine");
  }
  if (device < 0 || device >= count) {
    throw Error("backend/cuda", "device " + std::to_string(device) +
                                    " does not exist; this machine has " + std::to_string(count) +
                                    " CUDA device(s) (0.." + std::to_string(count - 1) + ")");
  }
  NNKIT_CUDA_CHECK(cudaSetDevice(device_));
  int major = 0;
  NNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_));
  if (compute_dtype_ == DType::kBF16 && major < 8) {
    throw Error("backend/cuda",
                "precision bf16 needs a GPU of compute capability 8.0 or newer; "
                "cuda:" +
                    std::to_string(device_) + " is " + std::to_string(major) +
                    ".x. Use `backend.precision=fp16` (with loss scaling) or fp32");
  }
  NNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&limits_.sms, cudaDevAttrMultiProcessorCount, device_));
  NNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&limits_.shared_optin_bytes,
                                          cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
  NNKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  NNKIT_CUBLAS_CHECK(cublasCreate(&cublas_));
  NNKIT_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  NNKIT_CUBLAS_CHECK(
      cublasSetMathMode(cublas_, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH));
  // A workspace of its own lets cuBLAS pick split-K kernels for the thin products (K 6144 into
  // 768 columns) on this stream; 32 MiB is what NVIDIA recommends for Hopper.
  constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
  NNKIT_CUDA_CHECK(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
  NNKIT_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
  lt_gemm_ = std::make_unique<LtGemm>(cublas_workspace_, kCublasWorkspaceBytes);
  NNKIT_CUDA_CHECK(cudaMalloc(&fault_, sizeof(DeviceFault)));
  NNKIT_CUDA_CHECK(cudaMallocHost(&fault_host_, sizeof(DeviceFault)));
  NNKIT_CUDA_CHECK(cudaMemsetAsync(fault_, 0, sizeof(DeviceFault), stream_));
  // Two sets: attention_decode's, then the expert block's folded combine.
  NNKIT_CUDA_CHECK(cudaMalloc(&decode_arrivals_, 2 * kDecodeArrivalCounters * sizeof(int32_t)));
  NNKIT_CUDA_CHECK(
      cudaMemsetAsync(decode_arrivals_, 0, 2 * kDecodeArrivalCounters * sizeof(int32_t), stream_));
  if (const char* flag = std::getenv("NNKIT_CUDA_PRELOAD"); flag == nullptr || *flag != '0') {
    load_attention_decode_kernels();
    load_route_decode_kernels();
    load_experts_decode_kernels();
    load_norm_gemm_decode_kernels();
  }
  cache_ = std::make_shared<DeviceBlockCache>(device_);
  readbacks_ = std::make_unique<HostReadbacks>();
  uploads_ = std::make_unique<HostUploads>();
  if (const char* flag = std::getenv("NNKIT_CUDA_PROFILE");
      flag != nullptr && std::strcmp(flag, "1") == 0) {
    profiler_ = std::make_unique<OpProfiler>(stream_);
  }
}

CudaBackend::~CudaBackend() {
  // Destructors never throw: wait for the stream, then release what this object owns. Tensors
  // still alive keep the block cache (and their memory) until they go.
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (profiler_ != nullptr) {
    try {
      profiler_->collect();
      logger()->info("{}", profiler_->report());
    } catch (...) {  // a profile that cannot be read is not worth a crash at teardown
    }
    profiler_.reset();
  }
  if (capturing_) abort_capture();
  for (cudaGraphExec_t exec : graphs_) {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
  readbacks_.reset();
  uploads_.reset();
  lt_gemm_.reset();
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (cublas_workspace_ != nullptr) cudaFree(cublas_workspace_);
  if (fault_ != nullptr) cudaFree(fault_);
  if (decode_arrivals_ != nullptr) cudaFree(decode_arrivals_);
  if (fault_host_ != nullptr) cudaFreeHost(fault_host_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

Tensor CudaBackend::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape) {
    if (d < 0) kChecks.fail("empty", "negative dimension in shape " + to_string(shape));
  }
  const auto numel = static_cast<size_t>(shape_numel(shape));
  if (numel > SIZE_MAX / dtype_size(dtype)) {
    kChecks.fail("empty",
                 "shape " + to_string(shape) + " needs more bytes than a 64-bit size holds");
  }
  const size_t bytes = numel * dtype_size(dtype);
  const size_t size = DeviceBlockCache::size_class(bytes);
  void* memory = cache_->acquire(size);
  auto storage = std::make_shared<Storage>();
  storage->data =
      std::shared_ptr<void>(memory, [cache = cache_, size](void* p) { cache->release(p, size); });
  storage->bytes = bytes;
  storage->device = device();
  return Tensor(std::move(storage), shape, dtype);
}

void CudaBackend::copy_from_host(const Tensor& dst, const void* src) {
  refuse_while_capturing("copy_from_host");
  if (!dst.defined() || dst.device() != device()) {
    kChecks.fail("copy_from_host",
                 "dst is " + describe(dst) + "; expected a tensor on " + to_string(device()));
  }
  if (dst.nbytes() == 0) return;
  if (dst.nbytes() <= HostUploads::kMaxStagedBytes) {
    // Through pinned memory: returns at once, without waiting for the stream (host_copies.h).
    uploads_->enqueue(dst.raw(), src, dst.nbytes(), stream_);
    return;
  }
  // From pageable host memory this returns once the source has been staged, so the caller may
  // reuse `src` right away (the Backend contract).
  NNKIT_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::copy_to_host(void* dst, const Tensor& src) {
  refuse_while_capturing("copy_to_host");
  if (!src.defined() || src.device() != device()) {
    kChecks.fail("copy_to_host",
                 "src is " + describe(src) + "; expected a tensor on " + to_string(device()));
  }
  if (src.nbytes() > 0) {
    NNKIT_CUDA_CHECK(
        cudaMemcpyAsync(dst, src.raw(), src.nbytes(), cudaMemcpyDeviceToHost, stream_));
  }
  synchronize();
}

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  OpScope op_scope(profiler_.get(), "copy");
  if (!dst.defined() || !src.defined() || dst.device() != device() || src.device() != device() ||
      dst.dtype() != src.dtype() || dst.numel() != src.numel()) {
    kChecks.fail("copy", "dst is " + describe(dst) + " and src is " + describe(src) +
                             "; expected tensors on " + to_string(device()) +
                             " of one dtype and element count");
  }
  if (dst.nbytes() > 0 && dst.raw() != src.raw()) {
    NNKIT_CUDA_CHECK(
        cudaMemcpyAsync(dst.raw(), src.raw(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream_));
  }
}

void CudaBackend::synchronize() {
  refuse_while_capturing("synchronize");
  // The fault record rides along in the same drain (a 32-byte copy at the end of the stream
  // into pinned memory), so reading it costs no extra round trip per synchronisation.
  NNKIT_CUDA_CHECK(
      cudaMemcpyAsync(fault_host_, fault_, sizeof(DeviceFault), cudaMemcpyDeviceToHost, stream_));
  NNKIT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (profiler_ != nullptr) {
    profiler_->collect();
    profiler_->mark_host_wait();
  }
  raise_fault();
}

void CudaBackend::refuse_while_capturing(const char* op) const {
  if (capturing_) {
    kChecks.fail(op,
                 "is not allowed while recording a CUDA Graph (nothing may wait for the "
                 "device or read host memory inside a captured step)");
  }
}

bool CudaBackend::begin_capture() {
  if (!graphs_enabled_ || capturing_) return false;
  // Relaxed: the allocator may still call cudaMalloc while the step is recorded.
  NNKIT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  capturing_ = true;
  cache_->set_capturing(true);
  return true;
}

int64_t CudaBackend::end_capture() {
  if (!capturing_) kChecks.fail("end_capture", "no recording is in progress");
  capturing_ = false;
  cache_->set_capturing(false);
  cudaGraph_t graph = nullptr;
  NNKIT_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  NNKIT_CUDA_CHECK(status);
  graphs_.push_back(exec);
  return static_cast<int64_t>(graphs_.size()) - 1;
}

void CudaBackend::abort_capture() {
  if (!capturing_) return;
  capturing_ = false;
  cache_->set_capturing(false);
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream_, &graph);  // ends the (possibly invalidated) recording
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaGetLastError();
}

void CudaBackend::replay(int64_t graph) {
  if (graph < 0 || graph >= static_cast<int64_t>(graphs_.size()) || graphs_[graph] == nullptr) {
    kChecks.fail("replay", "graph " + std::to_string(graph) + " does not exist");
  }
  NNKIT_CUDA_CHECK(cudaGraphLaunch(graphs_[graph], stream_));
}

void CudaBackend::release_graph(int64_t graph) {
  if (graph < 0 || graph >= static_cast<int64_t>(graphs_.size())) return;
  if (graphs_[graph] != nullptr) cudaGraphExecDestroy(graphs_[graph]);
  graphs_[graph] = nullptr;
}

void CudaBackend::raise_fault() {
  const DeviceFault fault = *fault_host_;
  if (fault.op == 0) return;
  fault_host_->op = 0;
  NNKIT_CUDA_CHECK(cudaMemsetAsync(fault_, 0, sizeof(DeviceFault), stream_));
  kChecks.fail(fault_op_name(fault.op - 1),
               "index " + std::to_string(fault.index) + " at row " + std::to_string(fault.row) +
                   " is outside [0, " + std::to_string(fault.limit) + "); the row was skipped. " +
                   (fault.op - 1 == static_cast<int32_t>(FaultOp::kMoeSort)
                        ? std::string("The router chose an expert outside [0, n_experts)")
                    : fault.op - 1 == static_cast<int32_t>(FaultOp::kKvCacheAppend)
                        ? std::string("The KV cache is full: generate fewer tokens or "
                                      "initialise a larger cache")
                        : std::string("Check token ids against the model's vocab_size")));
}

std::optional<DeviceMemory> CudaBackend::device_memory() const {
  cudaSetDevice(device_);
  size_t free_bytes = 0, total_bytes = 0;
  NNKIT_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return DeviceMemory{static_cast<int64_t>(free_bytes + cache_->cached_bytes()),
                      static_cast<int64_t>(total_bytes)};
}

}  // namespace nnkit::cuda

NNKIT_PLUGIN(backend, cuda, "0.1.0",
             "CUDA backend: bf16/fp16/fp32 compute, cuBLAS products, fused attention, device MoE "
             "dispatch, fused AdamW",
             &nnkit::cuda::cuda_options, &nnkit::cuda::create_cuda)
