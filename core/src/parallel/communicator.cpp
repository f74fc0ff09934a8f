// Purpose: see nnkit/communicator.h: the interface's out-of-line destructor (one vtable, in the
// core), the launch environment, and the single-process communicator.
#include "nnkit/communicator.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <optional>

#include "nnkit/backend.h"
#include "nnkit/error.h"

namespace nnkit {

Communicator::~Communicator() = default;

PendingCollective::~PendingCollective() = default;

namespace {

// What the default start_all_reduce_sum returns: the sum is already complete.
class CompletedCollective final : public PendingCollective {
 public:
  void wait() override {}
  bool test() override { return true; }
};

}  // namespace

std::unique_ptr<PendingCollective> Communicator::start_all_reduce_sum(Backend& backend,
                                                                      const Tensor& data) {
  all_reduce_sum(backend, data);
  return std::make_unique<CompletedCollective>();
}

namespace {

// The integer in environment variable `name`, or nullopt when it is unset or empty.
std::optional<int> env_int(const char* name, int min_value) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < min_value ||
      value > std::numeric_limits<int>::max()) {
    throw ConfigError("parallel", std::string("environment variable ") + name + "='" + text +
                                      "' is not an integer >= " + std::to_string(min_value) +
                                      "; fix or unset it (it tells a process its rank)");
  }
  return static_cast<int>(value);
}

struct LaunchVariables {
  const char* launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
};

// In order of precedence: a launcher that set its own variables wins over inherited RANK/...
constexpr LaunchVariables kLaunchers[] = {
    {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
};

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(Backend&, const Tensor& data) override { check_all_reduce(*this, data); }
  void reduce_scatter_sum(Backend& backend, const Tensor& input, const Tensor& output) override {
    check_reduce_scatter(*this, input, output);
    backend.copy(output, input);
  }
  void all_gather(Backend& backend, const Tensor& input, const Tensor& output) override {
    check_all_gather(*this, input, output);
    backend.copy(output, input);
  }
  void all_to_all(Backend& backend, const Tensor& input, const std::vector<int64_t>& send_rows,
                  const Tensor& output, const std::vector<int64_t>& recv_rows) override {
    check_all_to_all(*this, input, send_rows, output, recv_rows);
    if (send_rows[0] != recv_rows[0]) {
      throw ShapeError(id(), "all_to_all on one rank sends " + std::to_string(send_rows[0]) +
                                 " rows to itself but receives " + std::to_string(recv_rows[0]));
    }
    if (send_rows[0] > 0) {
      backend.copy(output.slice_rows(0, recv_rows[0]), input.slice_rows(0, send_rows[0]));
    }
  }
  void broadcast(Backend&, const Tensor&, int root) override { check_broadcast(*this, root); }
  void barrier() override {}
  void all_reduce_sum_host(std::span<double>) override {}
  void abort(const std::string&) noexcept override {}
};

}  // namespace

void check_all_reduce(const Communicator& comm, const Tensor& data) {
  if (data.dtype() != DType::kF32) {
    throw ShapeError(comm.id(), "all_reduce_sum sums f32 tensors, got " + describe(data));
  }
}

void check_reduce_scatter(const Communicator& comm, const Tensor& input, const Tensor& output) {
  if (input.dtype() != DType::kF32 || output.dtype() != DType::kF32 ||
      input.numel() != output.numel() * comm.size()) {
    throw ShapeError(comm.id(), "reduce_scatter_sum: input is " + describe(input) + ", output " +
                                    describe(output) + "; both f32, input with " +
                                    std::to_string(comm.size()) + " x output's elements");
  }
}

void check_all_gather(const Communicator& comm, const Tensor& input, const Tensor& output) {
  if (input.dtype() != output.dtype() || output.numel() != input.numel() * comm.size()) {
    throw ShapeError(comm.id(), "all_gather: input is " + describe(input) + ", output " +
                                    describe(output) + "; one dtype, output with " +
                                    std::to_string(comm.size()) + " x input's elements");
  }
}

void check_broadcast(const Communicator& comm, int root) {
  if (root < 0 || root >= comm.size()) {
    throw ShapeError(comm.id(), "broadcast from rank " + std::to_string(root) + " in a job of " +
                                    std::to_string(comm.size()) + " rank(s)");
  }
}

AllToAllLayout check_all_to_all(const Communicator& comm, const Tensor& input,
                                const std::vector<int64_t>& send_rows, const Tensor& output,
                                const std::vector<int64_t>& recv_rows) {
  const size_t ranks = static_cast<size_t>(comm.size());
  const auto refuse = [&](const std::string& why) {
    throw ShapeError(comm.id(),
                     "all_to_all from " + describe(input) + " to " + describe(output) + ": " + why);
  };
  if (send_rows.size() != ranks || recv_rows.size() != ranks) {
    refuse("needs " + std::to_string(ranks) + " send and receive counts, got " +
           std::to_string(send_rows.size()) + " and " + std::to_string(recv_rows.size()));
  }
  if (input.dtype() != output.dtype() || input.rank() < 1 || output.rank() < 1) {
    refuse("needs tensors of one dtype with rows");
  }
  const int64_t in_rows = input.dim(0), out_rows = output.dim(0);
  const int64_t in_width = in_rows > 0 ? static_cast<int64_t>(input.nbytes()) / in_rows : -1;
  const int64_t out_width = out_rows > 0 ? static_cast<int64_t>(output.nbytes()) / out_rows : -1;
  if (in_width >= 0 && out_width >= 0 && in_width != out_width) refuse("rows differ in width");
  AllToAllLayout layout;
  layout.row_bytes = std::max<int64_t>(in_width, out_width);
  for (size_t r = 0; r < ranks; ++r) {
    if (send_rows[r] < 0 || recv_rows[r] < 0) refuse("a negative row count");
    layout.sent_rows += send_rows[r];
    layout.received_rows += recv_rows[r];
  }
  if (layout.sent_rows > in_rows || layout.received_rows > out_rows) {
    refuse("sends " + std::to_string(layout.sent_rows) + " rows and receives " +
           std::to_string(layout.received_rows) + ", more than the tensors hold");
  }
  return layout;
}

std::string collective_timeout_message(const std::string& what, double timeout_s) {
  return what + " did not complete within " + std::to_string(static_cast<int64_t>(timeout_s)) +
         " s (parallel.comm.timeout_s): another rank failed, hangs or is far behind; see the "
         "other ranks' messages";
}

std::string LaunchEnvironment::describe() const {
  std::string text = "rank " + std::to_string(rank) + " of " + std::to_string(size);
  if (!launcher.empty()) text += " (launched by " + launcher + ")";
  return text;
}

LaunchEnvironment detect_launch_environment() {
  LaunchEnvironment env;
  for (const LaunchVariables& vars : kLaunchers) {
    const std::optional<int> size = env_int(vars.size, 1);
    if (!size) continue;
    const std::optional<int> rank = env_int(vars.rank, 0);
    if (!rank) {
      throw ConfigError("parallel", std::string(vars.size) + " is set but " + vars.rank +
                                        " is not; a launcher sets both (or unset " + vars.size +
                                        ")");
    }
    if (*rank >= *size) {
      throw ConfigError("parallel", std::string(vars.rank) + "=" + std::to_string(*rank) +
                                        " is not below " + vars.size + "=" + std::to_string(*size));
    }
    env.launcher = vars.launcher;
    env.rank = *rank;
    env.size = *size;
    env.local_rank = env_int(vars.local_rank, 0).value_or(0);
    break;
  }
  if (const char* addr = std::getenv("MASTER_ADDR")) env.master_addr = addr;
  env.master_port = env_int("MASTER_PORT", 1).value_or(0);
  return env;
}

std::shared_ptr<Communicator> make_single_process_communicator() {
  auto communicator = std::make_shared<SingleProcessCommunicator>();
  communicator->set_id("comm/single");
  return communicator;
}

}  // namespace nnkit
