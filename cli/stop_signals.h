// Purpose: how a long command (train, sweep) learns it should stop. While a StopSignals lives,
// SIGINT (Ctrl-C), SIGTERM and SIGHUP (terminal closed) only record which signal came; the
// command polls stop_signal() at a safe point, finishes cleanly (a checkpoint, a summary) and
// exits with 128 + that number, what a shell reports for a process the signal ended. A signal
// that was ignored when nnkit started stays ignored: `nohup nnkit train` is asking to survive
// SIGHUP, and a shell starts background jobs with SIGINT ignored.
// Thread-safety: the handler only stores into a lock-free atomic; one StopSignals per process
// at a time. Ownership: it restores the previous handlers when destroyed.
#pragma once

#include <signal.h>

#include <cstddef>

namespace nnkit::cli {

class StopSignals {
 public:
  StopSignals();  // also clears any signal recorded before
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  ~StopSignals();

 private:
  static constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};
  static constexpr size_t kCount = sizeof(kSignals) / sizeof(kSignals[0]);
  struct sigaction previous_[kCount] {};
};

// The signal that asked the command to stop; 0 while none has.
int stop_signal();

}  // namespace nnkit::cli
