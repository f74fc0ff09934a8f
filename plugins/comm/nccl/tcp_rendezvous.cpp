// Purpose: see tcp_rendezvous.h. The wire format: a connecting rank sends its rank (4 bytes,
// little-endian); rank 0 answers with the payload's length (4 bytes) and the payload.
#include "tcp_rendezvous.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>

#include "nnkit/error.h"

namespace nnkit::comm_nccl {

namespace {

constexpr const char* kId = "comm/nccl";
using Clock = std::chrono::steady_clock;

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Socket& operator=(Socket&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

double seconds_left(Clock::time_point deadline) {
  return std::chrono::duration<double>(deadline - Clock::now()).count();
}

std::string where(const RendezvousConfig& c) {
  return c.address + ":" + std::to_string(c.port) + " (MASTER_ADDR:MASTER_PORT)";
}

// Waits until `fd` is ready for `events` or the deadline passes.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const double left = seconds_left(deadline);
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left * 1000) + 1);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

bool send_all(int fd, const void* data, size_t bytes, Clock::time_point deadline) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    if (!wait_ready(fd, POLLOUT, deadline)) return false;
    const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

bool recv_all(int fd, void* data, size_t bytes, Clock::time_point deadline) {
  auto* p = static_cast<uint8_t*>(data);
  while (bytes > 0) {
    if (!wait_ready(fd, POLLIN, deadline)) return false;
    const ssize_t n = ::recv(fd, p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

void put_u32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(in[i]) << (8 * i);
  return v;
}

std::vector<uint8_t> serve(const RendezvousConfig& c, const std::vector<uint8_t>& payload,
                           Clock::time_point deadline) {
  Socket listener(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  bool ipv6 = listener.fd() >= 0;
  if (!ipv6) listener = Socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (listener.fd() < 0) throw Error(kId, std::string("socket: ") + std::strerror(errno));
  const int one = 1, zero = 0;
  ::setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc;
  if (ipv6) {
    ::setsockopt(listener.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(static_cast<uint16_t>(c.port));
    rc = ::bind(listener.fd(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(static_cast<uint16_t>(c.port));
    rc = ::bind(listener.fd(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  if (rc != 0 || ::listen(listener.fd(), c.size) != 0) {
    throw Error(kId, "rank 0 cannot listen on port " + std::to_string(c.port) + ": " +
                         std::strerror(errno) + "; choose a free MASTER_PORT");
  }
  std::set<int> missing;
  for (int r = 1; r < c.size; ++r) missing.insert(r);
  uint8_t header[4];
  put_u32(header, static_cast<uint32_t>(payload.size()));
  while (!missing.empty()) {
    if (!wait_ready(listener.fd(), POLLIN, deadline)) {
      std::string names;
      for (int r : missing) names += (names.empty() ? "" : ", ") + std::to_string(r);
      throw Error(kId, "rank 0 heard from " + std::to_string(c.size - 1 - missing.size()) + " of " +
                           std::to_string(c.size - 1) + " other ranks at port " +
                           std::to_string(c.port) + " within " +
                           std::to_string(static_cast<int>(c.timeout_s)) + " s; missing rank(s) " +
                           names + ": did they start, with this MASTER_ADDR and MASTER_PORT?");
    }
    Socket peer(::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC));
    if (peer.fd() < 0) continue;
    uint8_t rank_bytes[4];
    if (!recv_all(peer.fd(), rank_bytes, 4, deadline)) continue;
    const int peer_rank = static_cast<int>(get_u32(rank_bytes));
    if (!missing.count(peer_rank)) {
      throw Error(kId, "rank 0 got a connection from rank " + std::to_string(peer_rank) +
                           ", which is not an expected rank of " + std::to_string(c.size) +
                           " (two jobs on one MASTER_PORT, or a rank started twice?)");
    }
    if (send_all(peer.fd(), header, 4, deadline) &&
        send_all(peer.fd(), payload.data(), payload.size(), deadline)) {
      missing.erase(peer_rank);
    }
  }
  return payload;
}

std::vector<uint8_t> join(const RendezvousConfig& c, Clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  std::string last_reason = "no attempt";
  while (seconds_left(deadline) > 0) {
    addrinfo* found = nullptr;
    const int gai =
        ::getaddrinfo(c.address.c_str(), std::to_string(c.port).c_str(), &hints, &found);
    if (gai != 0) {
      last_reason = std::string("cannot resolve the address: ") + ::gai_strerror(gai);
    } else {
      for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
        Socket s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
        if (s.fd() < 0) continue;
        if (::connect(s.fd(), a->ai_addr, a->ai_addrlen) != 0) {
          last_reason = std::string("connect: ") + std::strerror(errno);
          continue;
        }
        uint8_t rank_bytes[4], header[4];
        put_u32(rank_bytes, static_cast<uint32_t>(c.rank));
        if (!send_all(s.fd(), rank_bytes, 4, deadline) || !recv_all(s.fd(), header, 4, deadline)) {
          last_reason = "rank 0 accepted the connection but did not answer";
          continue;
        }
        std::vector<uint8_t> payload(get_u32(header));
        if (!recv_all(s.fd(), payload.data(), payload.size(), deadline)) {
          last_reason = "rank 0's answer was cut short";
          continue;
        }
        ::freeaddrinfo(found);
        return payload;
      }
      ::freeaddrinfo(found);
    }
    // Rank 0 may not be listening yet: retry until the deadline.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw Error(kId, "rank " + std::to_string(c.rank) + " of " + std::to_string(c.size) +
                       " cannot reach rank 0 at " + where(c) + " within " +
                       std::to_string(static_cast<int>(c.timeout_s)) + " s (" + last_reason +
                       "); check that rank 0 runs and that MASTER_ADDR and MASTER_PORT name it");
}

}  // namespace

std::vector<uint8_t> rendezvous_broadcast(const RendezvousConfig& config,
                                          const std::vector<uint8_t>& payload) {
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  if (config.size <= 1) return payload;
  return config.rank == 0 ? serve(config, payload, deadline) : join(config, deadline);
}

}  // namespace nnkit::comm_nccl
