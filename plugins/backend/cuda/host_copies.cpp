// Purpose: see host_copies.h; also the two CudaBackend entry points that use it.
#include "host_copies.h"

#include <cstring>

#include "cuda_backend.h"
#include "cuda_check.h"

namespace nnkit::cuda {

HostReadbacks::~HostReadbacks() {
  // Never throws: pending reads are abandoned at teardown.
  if (done_ != nullptr) {
    cudaEventSynchronize(done_);
    cudaEventDestroy(done_);
  }
  if (staging_ != nullptr) cudaFreeHost(staging_);
}

void HostReadbacks::reserve(size_t bytes) {
  if (used_ + bytes <= capacity_) return;
  // Growing while reads are pending would move their staging: drain first.
  await();
  size_t capacity = capacity_ == 0 ? 4096 : capacity_;
  while (capacity < bytes) capacity *= 2;
  if (staging_ != nullptr) NNKIT_CUDA_CHECK(cudaFreeHost(staging_));
  staging_ = nullptr;
  NNKIT_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&staging_), capacity));
  capacity_ = capacity;
}

void HostReadbacks::enqueue(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  if (done_ == nullptr) NNKIT_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  const size_t aligned = (bytes + 15) / 16 * 16;
  reserve(aligned);
  NNKIT_CUDA_CHECK(cudaMemcpyAsync(staging_ + used_, src, bytes, cudaMemcpyDeviceToHost, stream));
  pending_.push_back({dst, used_, bytes});
  used_ += aligned;
  stream_ = stream;
  NNKIT_CUDA_CHECK(cudaEventRecord(done_, stream));
}

void HostReadbacks::await() {
  if (pending_.empty()) return;
  NNKIT_CUDA_CHECK(cudaEventSynchronize(done_));
  for (const Pending& p : pending_) std::memcpy(p.dst, staging_ + p.offset, p.bytes);
  pending_.clear();
  used_ = 0;
}

HostUploads::~HostUploads() {
  for (Chunk& chunk : chunks_) {
    if (chunk.last_use != nullptr) {
      cudaEventSynchronize(chunk.last_use);
      cudaEventDestroy(chunk.last_use);
    }
    if (chunk.data != nullptr) cudaFreeHost(chunk.data);
  }
}

void HostUploads::enqueue(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  Chunk& chunk = chunks_[next_];
  next_ = (next_ + 1) % kChunks;
  if (chunk.last_use == nullptr) {
    NNKIT_CUDA_CHECK(cudaEventCreateWithFlags(&chunk.last_use, cudaEventDisableTiming));
  }
  // Eight copies later this has long completed; the wait is there for correctness.
  if (chunk.in_flight) NNKIT_CUDA_CHECK(cudaEventSynchronize(chunk.last_use));
  if (chunk.capacity < bytes) {
    if (chunk.data != nullptr) NNKIT_CUDA_CHECK(cudaFreeHost(chunk.data));
    chunk.data = nullptr;
    size_t capacity = 64 << 10;
    while (capacity < bytes) capacity *= 2;
    NNKIT_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&chunk.data), capacity));
    chunk.capacity = capacity;
  }
  std::memcpy(chunk.data, src, bytes);
  NNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, chunk.data, bytes, cudaMemcpyHostToDevice, stream));
  NNKIT_CUDA_CHECK(cudaEventRecord(chunk.last_use, stream));
  chunk.in_flight = true;
}

void CudaBackend::copy_to_host_async(void* dst, const Tensor& src) {
  refuse_while_capturing("copy_to_host_async");
  if (!src.defined() || src.device() != device()) {
    kChecks.fail("copy_to_host_async",
                 "src is " + describe(src) + "; expected a tensor on " + to_string(device()));
  }
  readbacks_->enqueue(dst, src.raw(), src.nbytes(), stream_);
}

void CudaBackend::await_host_copies() {
  refuse_while_capturing("await_host_copies");
  readbacks_->await();
  if (profiler_ != nullptr) profiler_->mark_host_wait();
}

}  // namespace nnkit::cuda
