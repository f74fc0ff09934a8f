// Purpose: see stop_signals.h.
#include "stop_signals.h"

#include <atomic>

namespace nnkit::cli {

namespace {

std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free store");

extern "C" void on_stop_signal(int signal_number) {
  g_stop_signal.store(signal_number);
}

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  struct sigaction stop {};
  stop.sa_handler = on_stop_signal;
  sigemptyset(&stop.sa_mask);
  stop.sa_flags = SA_RESTART;
  for (size_t i = 0; i < kCount; ++i) {
    ::sigaction(kSignals[i], nullptr, &previous_[i]);
    if (previous_[i].sa_handler != SIG_IGN) ::sigaction(kSignals[i], &stop, nullptr);
  }
}

StopSignals::~StopSignals() {
  for (size_t i = 0; i < kCount; ++i) ::sigaction(kSignals[i], &previous_[i], nullptr);
}

int stop_signal() {
  return g_stop_signal.load();
}

}  // namespace nnkit::cli
