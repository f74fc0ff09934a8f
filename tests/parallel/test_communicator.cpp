// Tests of the communicator contract without a second process: the built-in single-process
// communicator's collectives, the shared argument checks, the launch environment, the TCP
// rendezvous of comm/nccl (two threads of this process), comm/nccl on one rank of a GPU
// (skipped without a GPU or without the plugin), and comm/mpi's non-blocking all-reduce on two
// ranks (this binary under mpirun).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include "nnkit/communicator.h"
#include "nnkit/error.h"
#include "support/test_support.h"
#include "tcp_rendezvous.h"

namespace nnkit {
namespace {

using test::cpu_backend;
using test::tensor_from;
using test::to_vector;

// Sets environment variables for one test and restores what was there.
class ScopedEnv {
 public:
  ScopedEnv(std::initializer_list<std::pair<const char*, const char*>> values) {
    for (const auto& [name, value] : values) {
      const char* before = std::getenv(name);
      saved_.emplace_back(name, before ? std::optional<std::string>(before) : std::nullopt);
      if (value)
        ::setenv(name, value, 1);
      else
        ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    for (const auto& [name, value] : saved_) {
      if (value)
        ::setenv(name.c_str(), value->c_str(), 1);
      else
        ::unsetenv(name.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// Runs every collective of `comm` (a job of one rank) and checks the results on `backend`.
void check_one_rank_collectives(Communicator& comm, Backend& backend) {
  ASSERT_EQ(comm.rank(), 0);
  ASSERT_EQ(comm.size(), 1);
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1.0f};
  Tensor data = tensor_from(backend, values, {2, 3});
  comm.all_reduce_sum(backend, data);
  EXPECT_EQ(to_vector(backend, data), values);

  Tensor scattered = backend.empty({6});
  comm.reduce_scatter_sum(backend, data, scattered);
  EXPECT_EQ(to_vector(backend, scattered), values);

  Tensor gathered = backend.empty({2, 3});
  comm.all_gather(backend, data, gathered);
  EXPECT_EQ(to_vector(backend, gathered), values);

  Tensor exchanged = backend.zeros({3, 3});
  comm.all_to_all(backend, data, {2}, exchanged, {2});
  std::vector<float> expected = values;
  expected.insert(expected.end(), {0.0f, 0.0f, 0.0f});
  EXPECT_EQ(to_vector(backend, exchanged), expected);

  comm.broadcast(backend, data, 0);
  EXPECT_EQ(to_vector(backend, data), values);

  // The non-blocking all-reduce: two in flight at once, waited for out of start order.
  Tensor second = tensor_from(backend, {4.0f, -0.5f}, {2});
  auto first_sum = comm.start_all_reduce_sum(backend, data);
  auto second_sum = comm.start_all_reduce_sum(backend, second);
  ASSERT_NE(first_sum, nullptr);
  second_sum->wait();
  first_sum->test();
  first_sum->wait();
  first_sum->wait();  // again: returns at once
  EXPECT_TRUE(first_sum->test());
  EXPECT_EQ(to_vector(backend, data), values);
  EXPECT_EQ(to_vector(backend, second), (std::vector<float>{4.0f, -0.5f}));
  comm.barrier();
  double host[2] = {2.5, -4.0};
  comm.all_reduce_sum_host(host);
  EXPECT_EQ(host[0], 2.5);
  EXPECT_EQ(host[1], -4.0);
}

TEST(SingleProcessCommunicator, CollectivesAreIdentities) {
  auto backend = cpu_backend(1);
  auto comm = make_single_process_communicator();
  EXPECT_EQ(comm->id(), "comm/single");
  check_one_rank_collectives(*comm, *backend);
}

TEST(SingleProcessCommunicator, RefusesMismatchedArguments) {
  auto backend = cpu_backend(1);
  auto comm = make_single_process_communicator();
  Tensor f32 = backend->zeros({4});
  Tensor i32 = backend->zeros({4}, DType::kI32);
  try {
    comm->all_reduce_sum(*backend, i32);
    FAIL() << "an i32 all-reduce was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[comm/single] all_reduce_sum sums f32"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(comm->start_all_reduce_sum(*backend, i32), ShapeError);
  EXPECT_THROW(comm->reduce_scatter_sum(*backend, f32, backend->zeros({3})), ShapeError);
  EXPECT_THROW(comm->all_gather(*backend, f32, i32), ShapeError);
  try {
    comm->all_to_all(*backend, f32, {1, 1}, f32, {2});
    FAIL() << "two send counts on one rank were accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("needs 1 send and receive counts, got 2 and 1"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(comm->all_to_all(*backend, f32, {5}, f32, {5}), ShapeError);  // beyond the rows
  try {
    comm->broadcast(*backend, f32, 1);
    FAIL() << "a broadcast from rank 1 of 1 was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("broadcast from rank 1 in a job of 1 rank(s)"),
              std::string::npos)
        << e.what();
  }
}

TEST(LaunchEnvironment, ReadsMpirunThenTorchrunVariables) {
  {
    ScopedEnv env({{"OMPI_COMM_WORLD_RANK", nullptr},
                   {"OMPI_COMM_WORLD_SIZE", nullptr},
                   {"PMI_RANK", nullptr},
                   {"PMI_SIZE", nullptr},
                   {"RANK", nullptr},
                   {"WORLD_SIZE", nullptr},
                   {"MASTER_ADDR", nullptr},
                   {"MASTER_PORT", nullptr}});
    const LaunchEnvironment alone = detect_launch_environment();
    EXPECT_EQ(alone.rank, 0);
    EXPECT_EQ(alone.size, 1);
    EXPECT_EQ(alone.launcher, "");
  }
  {
    ScopedEnv env({{"OMPI_COMM_WORLD_RANK", nullptr},
                   {"OMPI_COMM_WORLD_SIZE", nullptr},
                   {"PMI_RANK", nullptr},
                   {"PMI_SIZE", nullptr},
                   {"RANK", "3"},
                   {"WORLD_SIZE", "4"},
                   {"LOCAL_RANK", "1"},
                   {"MASTER_ADDR", "10.0.0.2"},
                   {"MASTER_PORT", "29400"}});
    const LaunchEnvironment torchrun = detect_launch_environment();
    EXPECT_EQ(torchrun.rank, 3);
    EXPECT_EQ(torchrun.size, 4);
    EXPECT_EQ(torchrun.local_rank, 1);
    EXPECT_EQ(torchrun.launcher, "torchrun");
    EXPECT_EQ(torchrun.master_addr, "10.0.0.2");
    EXPECT_EQ(torchrun.master_port, 29400);
    EXPECT_EQ(torchrun.describe(), "rank 3 of 4 (launched by torchrun)");
  }
  {
    // mpirun's own variables win over RANK/WORLD_SIZE inherited from a shell.
    ScopedEnv env({{"OMPI_COMM_WORLD_RANK", "1"},
                   {"OMPI_COMM_WORLD_SIZE", "2"},
                   {"RANK", "0"},
                   {"WORLD_SIZE", "8"}});
    const LaunchEnvironment mpirun = detect_launch_environment();
    EXPECT_EQ(mpirun.rank, 1);
    EXPECT_EQ(mpirun.size, 2);
    EXPECT_EQ(mpirun.launcher, "mpirun");
  }
}

TEST(LaunchEnvironment, RefusesBrokenVariablesByName) {
  ScopedEnv env({{"OMPI_COMM_WORLD_RANK", nullptr},
                 {"OMPI_COMM_WORLD_SIZE", nullptr},
                 {"PMI_RANK", nullptr},
                 {"PMI_SIZE", nullptr},
                 {"RANK", "2"},
                 {"WORLD_SIZE", "2"}});
  try {
    detect_launch_environment();
    FAIL() << "RANK=2 of WORLD_SIZE=2 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("RANK=2 is not below WORLD_SIZE=2"), std::string::npos)
        << e.what();
  }
  ::setenv("WORLD_SIZE", "two", 1);
  try {
    detect_launch_environment();
    FAIL() << "WORLD_SIZE=two was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("WORLD_SIZE='two' is not an integer >= 1"),
              std::string::npos)
        << e.what();
  }
}

// A free TCP port of this host (bound then released; the test uses it right away).
int free_port() {
  for (int port = 39000 + (::getpid() % 2000);; ++port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    ::close(fd);
    if (ok) return port;
  }
}

TEST(TcpRendezvous, RankZeroHandsItsPayloadToEveryRank) {
  const int port = free_port();
  const std::vector<uint8_t> id = {1, 2, 3, 250, 0, 7};
  std::vector<std::vector<uint8_t>> received(3);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.emplace_back([&, r] {
      comm_nccl::RendezvousConfig c{"127.0.0.1", port, r, 3, 20.0};
      received[static_cast<size_t>(r)] =
          comm_nccl::rendezvous_broadcast(c, r == 0 ? id : std::vector<uint8_t>{});
    });
  }
  for (std::thread& t : ranks) t.join();
  for (const auto& bytes : received) EXPECT_EQ(bytes, id);
}

TEST(TcpRendezvous, ARankThatCannotReachRankZeroSaysSo) {
  const int port = free_port();  // nobody listens there
  comm_nccl::RendezvousConfig c{"127.0.0.1", port, 1, 2, 1.0};
  try {
    comm_nccl::rendezvous_broadcast(c, {});
    FAIL() << "rank 1 reached a rank 0 that does not exist";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("[comm/nccl] rank 1 of 2 cannot reach rank 0 at 127.0.0.1:" +
                           std::to_string(port) + " (MASTER_ADDR:MASTER_PORT) within 1 s"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("Connection refused"), std::string::npos) << message;
  }
}

TEST(TcpRendezvous, RankZeroNamesTheRanksThatNeverCame) {
  comm_nccl::RendezvousConfig c{"127.0.0.1", free_port(), 0, 3, 1.0};
  try {
    comm_nccl::rendezvous_broadcast(c, {9});
    FAIL() << "rank 0 went on without its peers";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 heard from 0 of 2 other ranks"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("missing rank(s) 1, 2"), std::string::npos) << e.what();
  }
}

// comm/mpi's non-blocking all-reduce on two ranks: this test binary runs itself under mpirun
// (the child test below); each rank starts three sums, issues a blocking one while they are in
// flight, waits out of order and drops one handle unwaited (its destructor waits). Every result
// must be the exact sum and bit for bit the blocking all_reduce_sum's on the same data.
TEST(MpiCommunicator, NonBlockingAllReduceOnTwoRanks) {
  if (std::string(NNKIT_MPIEXEC).empty()) {
    GTEST_SKIP() << "no MPI in this build (CMake found no mpiexec; install openmpi-bin "
                    "libopenmpi-dev and reconfigure): this test runs two ranks under mpirun";
  }
  if (test::registry().find("comm", "mpi") == nullptr) {
    GTEST_SKIP() << "comm/mpi is not built (CMake found no MPI library; install libopenmpi-dev "
                    "and reconfigure)";
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string line = std::string(NNKIT_MPIEXEC) +
                     " -np 2 --oversubscribe --bind-to none"
                     " --mca btl_vader_single_copy_mechanism none -x NNKIT_MPI_CHILD=1";
  if (::geteuid() == 0) line += " --allow-run-as-root";
  line += " '" + self + "' --gtest_filter=MpiCommunicator.ChildRank 2>&1";
  FILE* pipe = ::popen(("timeout -k 5 120 " + line).c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = ::pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  EXPECT_NE(output.find("non-blocking sums checked on rank 0 of 2"), std::string::npos) << output;
  EXPECT_NE(output.find("non-blocking sums checked on rank 1 of 2"), std::string::npos) << output;
}

// The child of the test above: runs only under its mpirun.
TEST(MpiCommunicator, ChildRank) {
  if (std::getenv("NNKIT_MPI_CHILD") == nullptr) {
    GTEST_SKIP() << "the two ranks of MpiCommunicator.NonBlockingAllReduceOnTwoRanks, which "
                    "starts this test under mpirun with NNKIT_MPI_CHILD set";
  }
  auto backend = cpu_backend(1);
  auto comm = test::create<Communicator>("comm", "mpi", {{"timeout_s", "60"}}, {}, backend.get());
  ASSERT_EQ(comm->size(), 2);
  const int r = comm->rank();
  // Rank-dependent values whose sums are exact in f32, and odd sizes (MPI splits large ones).
  auto values = [&](int64_t count, float salt) {
    std::vector<float> v(static_cast<size_t>(count));
    for (size_t i = 0; i < v.size(); ++i) {
      v[i] = static_cast<float>((static_cast<int>(i) * 7 + r * 3) % 101) * 0.25f + salt;
    }
    return v;
  };
  auto expected_sum = [&](int64_t count, float salt) {
    std::vector<float> v(static_cast<size_t>(count));
    for (size_t i = 0; i < v.size(); ++i) {
      float s = 0.0f;
      for (int k = 0; k < 2; ++k) {
        s += static_cast<float>((static_cast<int>(i) * 7 + k * 3) % 101) * 0.25f + salt;
      }
      v[i] = s;
    }
    return v;
  };
  const std::vector<int64_t> sizes = {5, 100003, 1 << 20};
  std::vector<Tensor> started, blocking;
  for (size_t k = 0; k < sizes.size(); ++k) {
    started.push_back(tensor_from(*backend, values(sizes[k], static_cast<float>(k)), {sizes[k]}));
    blocking.push_back(tensor_from(*backend, values(sizes[k], static_cast<float>(k)), {sizes[k]}));
  }
  std::vector<std::unique_ptr<PendingCollective>> pending;
  for (const Tensor& t : started) pending.push_back(comm->start_all_reduce_sum(*backend, t));
  double host[1] = {static_cast<double>(r + 1)};
  comm->all_reduce_sum_host(host);  // a blocking collective while three are in flight
  EXPECT_EQ(host[0], 3.0);
  for (auto& p : pending) p->test();
  pending[2]->wait();
  pending[0]->wait();
  pending[1].reset();  // destroyed unwaited: the destructor waits
  pending[2]->wait();  // again: returns at once
  EXPECT_TRUE(pending[0]->test());
  for (size_t k = 0; k < sizes.size(); ++k) {
    comm->all_reduce_sum(*backend, blocking[k]);
    const std::vector<float> got = to_vector(*backend, started[k]);
    EXPECT_EQ(got, expected_sum(sizes[k], static_cast<float>(k))) << "size " << sizes[k];
    EXPECT_EQ(got, to_vector(*backend, blocking[k])) << "size " << sizes[k];
  }
  comm->barrier();
  if (!::testing::Test::HasFailure()) {
    std::printf("non-blocking sums checked on rank %d of 2\n", r);
    std::fflush(stdout);
  }
}

// The GPU lead runs this on the one-GPU machine: comm/nccl as a job of one rank.
TEST(NcclCommunicator, OneRankOnTheGpu) {
  if (test::registry().find("comm", "nccl") == nullptr) {
    GTEST_SKIP() << "comm/nccl is not built (no CUDA or no NCCL at configure time)";
  }
  std::shared_ptr<Backend> backend;
  try {
    backend = test::cuda_backend(0);
  } catch (const Error& e) {
    GTEST_SKIP() << "no usable GPU: " << e.what();
  }
  ScopedEnv env({{"OMPI_COMM_WORLD_RANK", nullptr},
                 {"OMPI_COMM_WORLD_SIZE", nullptr},
                 {"PMI_RANK", nullptr},
                 {"PMI_SIZE", nullptr},
                 {"RANK", nullptr},
                 {"WORLD_SIZE", nullptr}});
  auto comm = test::create<Communicator>("comm", "nccl", {{"timeout_s", "60"}}, {}, backend.get());
  check_one_rank_collectives(*comm, *backend);
}

}  // namespace
}  // namespace nnkit
