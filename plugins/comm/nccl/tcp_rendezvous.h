// Purpose: the torchrun-style bootstrap of comm/nccl: rank 0 listens on MASTER_ADDR:MASTER_PORT
// and hands a small payload (the NCCL unique id) to every other rank, which connects to it.
// A rank that cannot reach rank 0, or a rank 0 that does not hear from every rank, fails within
// the timeout with a message naming the ranks, the address and the OS reason.
// Ownership: plain functions; every socket is closed before they return. Thread-safe (no state).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nnkit::comm_nccl {

struct RendezvousConfig {
  std::string address = "127.0.0.1";  // rank 0's host (MASTER_ADDR)
  int port = 29500;                   // MASTER_PORT
  int rank = 0;
  int size = 1;
  double timeout_s = 60.0;
};

// On rank 0, sends `payload` to every other rank and returns it; on the others returns what rank
// 0 sent. Throws nnkit::Error tagged comm/nccl naming what failed.
std::vector<uint8_t> rendezvous_broadcast(const RendezvousConfig& config,
                                          const std::vector<uint8_t>& payload);

}  // namespace nnkit::comm_nccl
