// Purpose: see op_profiler.h. Owned by backend/cuda.
#include "op_profiler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "cuda_check.h"

namespace nnkit::cuda {

OpProfiler::~OpProfiler() {
  for (Pending& p : pending_) {
    cudaEventDestroy(p.start);
    cudaEventDestroy(p.stop);
  }
  for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  if (first_ != nullptr) cudaEventDestroy(first_);
  if (last_ != nullptr) cudaEventDestroy(last_);
}

cudaEvent_t OpProfiler::take_event() {
  if (!pool_.empty()) {
    cudaEvent_t e = pool_.back();
    pool_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  NNKIT_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}

OpProfiler::OpProfiler(cudaStream_t stream) : stream_(stream) {
  const char* flag = std::getenv("NNKIT_CUDA_PROFILE_SHAPES");
  by_shape_ = flag != nullptr && std::string(flag) == "1";
}

void OpProfiler::begin(std::string op) {
  if (depth_++ > 0) return;
  Pending p{std::move(op), take_event(), take_event(), after_host_wait_};
  after_host_wait_ = false;
  NNKIT_CUDA_CHECK(cudaEventRecord(p.start, stream_));
  if (first_ == nullptr) {
    first_ = take_event();
    NNKIT_CUDA_CHECK(cudaEventRecord(first_, stream_));
  }
  pending_.push_back(p);
}

void OpProfiler::end() {
  if (--depth_ > 0) return;
  // Destructors call this: no throwing (a failed record only loses one sample).
  cudaEventRecord(pending_.back().stop, stream_);
}

void OpProfiler::collect() {
  for (Pending& p : pending_) {
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, p.start, p.stop) == cudaSuccess) {
      Totals& t = totals_[p.op];
      ++t.calls;
      t.ms += ms;
      float gap = 0.0f;
      if (last_ != nullptr && cudaEventElapsedTime(&gap, last_, p.start) == cudaSuccess &&
          gap > 0.0f) {
        t.idle_before_ms += gap;
        if (p.after_host_wait) idle_after_waits_ms_ += gap;
      }
    }
    pool_.push_back(p.start);
    if (last_ != nullptr) pool_.push_back(last_);
    last_ = p.stop;
  }
  pending_.clear();
  float span = 0.0f;
  if (first_ != nullptr && last_ != nullptr &&
      cudaEventElapsedTime(&span, first_, last_) == cudaSuccess) {
    span_ms_ = span;
  }
}

std::string OpProfiler::report() {
  std::vector<std::pair<std::string, Totals>> rows(totals_.begin(), totals_.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  double busy = 0.0;
  for (const auto& [op, t] : rows) busy += t.ms;
  std::string out = "backend/cuda op profile (stream time per op, NNKIT_CUDA_PROFILE=1):\n";
  char line[192];
  std::snprintf(line, sizeof(line), "  %-56s %10s %12s %7s %14s\n", "op", "calls", "stream ms",
                "share", "idle before ms");
  out += line;
  for (const auto& [op, t] : rows) {
    std::snprintf(line, sizeof(line), "  %-56s %10lld %12.2f %6.1f%% %14.2f\n", op.c_str(),
                  static_cast<long long>(t.calls), t.ms, busy > 0 ? 100.0 * t.ms / busy : 0.0,
                  t.idle_before_ms);
    out += line;
  }
  std::snprintf(line, sizeof(line),
                "  busy %.2f ms of a %.2f ms span: the stream idled %.2f ms (%.1f%%) waiting for "
                "the host\n",
                busy, span_ms_, std::max(0.0, span_ms_ - busy),
                span_ms_ > 0 ? 100.0 * std::max(0.0, span_ms_ - busy) / span_ms_ : 0.0);
  out += line;
  std::snprintf(line, sizeof(line),
                "  of which %.2f ms (%.1f%% of the span) right after the host waited for the "
                "device (await_host_copies, copy_to_host)\n",
                idle_after_waits_ms_, span_ms_ > 0 ? 100.0 * idle_after_waits_ms_ / span_ms_ : 0.0);
  out += line;
  return out;
}

}  // namespace nnkit::cuda
