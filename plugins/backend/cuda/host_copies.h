// Purpose: backend/cuda's host <-> device staging through pinned memory, owned by CudaBackend (one
// of each per backend). Thread-safety: none; the backend's thread drives them.
// HostReadbacks: small asynchronous reads to the host (Backend::copy_to_host_async /
// await_host_copies): the per-expert row offsets of an MoE layer, the step's loss and gradient
// norm. Each read is copied into a pinned staging buffer on the backend's stream and an event is
// recorded after the batch; await waits on that event only (not on work enqueued later), then
// copies from staging to the caller's memory. The staging buffer grows by doubling and is reused.
// HostUploads: copy_from_host of small and medium buffers (token ids, positions). A copy from
// pageable memory makes the driver wait for the stream first, so the host could not enqueue the
// next step while the GPU works; copying into a pinned chunk first lets cudaMemcpyAsync return at
// once. Chunks rotate; a chunk is reused only after the event recorded behind its last copy.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

namespace nnkit::cuda {

class HostReadbacks {
 public:
  HostReadbacks() = default;
  HostReadbacks(const HostReadbacks&) = delete;
  HostReadbacks& operator=(const HostReadbacks&) = delete;
  ~HostReadbacks();

  // Enqueues `bytes` from device address `src` on `stream`; `dst` is filled by await().
  void enqueue(void* dst, const void* src, size_t bytes, cudaStream_t stream);
  // Waits for every enqueued read and delivers it. No-op when nothing is pending.
  void await();

 private:
  struct Pending {
    void* dst;
    size_t offset;  // into staging_
    size_t bytes;
  };
  void reserve(size_t bytes);

  char* staging_ = nullptr;  // pinned host memory
  size_t capacity_ = 0;
  size_t used_ = 0;
  cudaEvent_t done_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::vector<Pending> pending_;
};

class HostUploads {
 public:
  HostUploads() = default;
  HostUploads(const HostUploads&) = delete;
  HostUploads& operator=(const HostUploads&) = delete;
  ~HostUploads();

  // Largest copy that goes through the chunks; bigger ones (weights) go straight from pageable
  // memory.
  static constexpr size_t kMaxStagedBytes = size_t{16} << 20;

  // Enqueues dst <- src (`bytes` <= kMaxStagedBytes) on `stream`; src may be reused at once.
  void enqueue(void* dst, const void* src, size_t bytes, cudaStream_t stream);

 private:
  struct Chunk {
    char* data = nullptr;  // pinned
    size_t capacity = 0;
    cudaEvent_t last_use = nullptr;
    bool in_flight = false;
  };
  static constexpr size_t kChunks = 8;

  Chunk chunks_[kChunks];
  size_t next_ = 0;
};

}  // namespace nnkit::cuda
