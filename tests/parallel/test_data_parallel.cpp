// End-to-end tests of data-parallel training on the CPU backend: the real `nnkit` under
// `mpirun -np 2 --oversubscribe` against one process with the same global batch (weights after
// 10 steps, per-step loss and gradient norm), checkpoints moving between 2 ranks and 1, only
// rank 0 writing and logging, the messages of bad launches, a failing rank and a hanging one,
// and the gradient all-reduce overlapped with backward giving the same bits as after it.
// Skipped, saying so, when the build found no MPI (NNKIT_MPIEXEC is empty).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "nnkit/io/safetensors.h"
#include "parallel_harness.h"

namespace nnkit {
namespace {

using namespace parallel_test;  // NOLINT(google-build-using-namespace): the shared harness

class DataParallel : public ParallelRun {
 protected:
  void expect_two_ranks_match_one(const char* label);
};

// Weights of the two-rank run may differ from the one-rank run's by the rounding of a different
// summation order (each rank sums its rows, then the ranks' sums are added), amplified a little
// by AdamW's division by sqrt(v). Measured: 4.4e-7 after 10 steps at lr 1e-3.
constexpr double kWeightBound = 1e-5;
// Loss and gradient norm per step, relative.
constexpr double kMetricBound = 1e-5;

// Trains `config_` for 10 steps on one process and on two ranks and compares them.
void DataParallel::expect_two_ranks_match_one(const char* label) {
  const fs::path one = dir_ / "one", two = dir_ / "two";
  const Result single = run(train_args(one));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const Result dp = run(mpirun(2) + train_args(two, "parallel.data=2"));
  ASSERT_EQ(dp.exit_code, 0) << dp.output;
  EXPECT_NE(dp.output.find("data parallel over 2 rank(s) (comm/mpi, 4 rows each)"),
            std::string::npos)
      << dp.output;
  // Only rank 0 logs: each step's line appears once.
  EXPECT_EQ(count(dp.output, "step 10/10 loss"), 1u) << dp.output;
  EXPECT_EQ(count(dp.output, "done: 10 steps"), 1u) << dp.output;

  const double difference = max_weight_difference(step_dir(one, 10), step_dir(two, 10));
  std::printf("%s: max |w(2 ranks) - w(1 rank)| after 10 steps: %.3g (bound %.0e)\n", label,
              difference, kWeightBound);
  EXPECT_LE(difference, kWeightBound);
  const auto a = step_lines(one), b = step_lines(two);
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 0; i < a.size(); ++i) {
    // aux_loss: the ranks' mean (each rank's is over its own tokens), the one-rank value.
    for (const char* key : {"loss", "grad_norm", "aux_loss"}) {
      const double x = a[i][key], y = b[i][key];
      EXPECT_LE(std::abs(x - y), kMetricBound * std::abs(x)) << key << " at step " << i + 1;
    }
    EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]);  // the global batch, counted once
  }
}

TEST_F(DataParallel, TwoRanksMatchOneRankWithTheSameGlobalBatch) {
  NNKIT_REQUIRE_MPIRUN();
  expect_two_ranks_match_one("dense");
}

// The routers' load statistics are summed across ranks: the load-balancing loss and its
// gradient are the one-rank ones.
TEST_F(DataParallel, TwoRanksMatchOneRankOnAnMoeModel) {
  NNKIT_REQUIRE_MPIRUN();
  config_ = fs::path(NNKIT_SOURCE_DIR_DEFAULT) / "tests/parallel/dp-tiny-moe.yaml";
  expect_two_ranks_match_one("moe");
}

TEST_F(DataParallel, CheckpointsMoveBetweenTwoRanksAndOne) {
  NNKIT_REQUIRE_MPIRUN();
  const fs::path one = dir_ / "one", two = dir_ / "two";
  ASSERT_EQ(run(train_args(one)).exit_code, 0);
  ASSERT_EQ(run(mpirun(2) + train_args(two, "parallel.data=2")).exit_code, 0);

  // Two ranks' step-5 checkpoint, resumed on one rank.
  const fs::path two_to_one = dir_ / "two_to_one";
  const Result r1 = resume_from_step_5(two, two_to_one, "", "parallel.data=1");
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  EXPECT_LE(max_weight_difference(step_dir(one, 10), step_dir(two_to_one, 10)), kWeightBound);

  // One rank's step-5 checkpoint, resumed on two ranks.
  const fs::path one_to_two = dir_ / "one_to_two";
  const Result r2 = resume_from_step_5(one, one_to_two, mpirun(2), "parallel.data=2");
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_LE(max_weight_difference(step_dir(one, 10), step_dir(one_to_two, 10)), kWeightBound);
  EXPECT_EQ(step_lines(one_to_two).size(), 10u);  // metrics truncated to step 5, then 5 more
}

TEST_F(DataParallel, RanksThatDoNotMatchTheConfigAreRefusedWithTheNumbers) {
  NNKIT_REQUIRE_MPIRUN();
  const Result alone = run(train_args(dir_ / "a", "parallel.data=2"));
  EXPECT_EQ(alone.exit_code, 2) << alone.output;  // a configuration error
  EXPECT_NE(alone.output.find("parallel.data (2) x parallel.expert (1) = 2 ranks, but this is "
                              "rank 0 of 1; launch 2 processes (mpirun -np 2 nnkit train ...)"),
            std::string::npos)
      << alone.output;

  const Result forgot = run(mpirun(2) + train_args(dir_ / "b"));
  EXPECT_NE(forgot.exit_code, 0) << forgot.output;
  EXPECT_NE(forgot.output.find("= 1 ranks, but this is rank 1 of 2 (launched by mpirun)"),
            std::string::npos)
      << forgot.output;

  const Result indivisible = run(train_args(dir_ / "c", "parallel.data=3"));
  EXPECT_EQ(indivisible.exit_code, 2);
  EXPECT_NE(indivisible.output.find(
                "parallel.data (3) does not divide train.batch_size (8), the global batch"),
            std::string::npos)
      << indivisible.output;

  const Result dense = run(train_args(dir_ / "d", "parallel.expert=2"));
  EXPECT_EQ(dense.exit_code, 2);
  EXPECT_NE(dense.output.find("parallel.expert is 2 but the model has no MoE layers"),
            std::string::npos)
      << dense.output;

  const fs::path moe = fs::path(NNKIT_SOURCE_DIR_DEFAULT) / "configs/tiny.yaml";
  const Result experts = run(nnkit_cli() + " train " + quote(moe) + " --data " + quote(data_) +
                             " --out " + quote(dir_ / "e") + " parallel.expert=3");
  EXPECT_EQ(experts.exit_code, 2);
  EXPECT_NE(
      experts.output.find("parallel.expert (3) does not divide model.moe.experts.n_experts (4)"),
      std::string::npos)
      << experts.output;
}

TEST_F(DataParallel, AFailingRankEndsTheJobWithItsError) {
  NNKIT_REQUIRE_MPIRUN();
  const Result r =
      run(mpirun(2, {"NNKIT_FAULT_RANK_FAIL=1:3"}) + train_args(dir_ / "f", "parallel.data=2"), 60);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "the job hung: " << r.output;
  EXPECT_NE(r.output.find("[comm/mpi] rank 1 of 2 failed: [train] injected failure "
                          "(NNKIT_FAULT_RANK_FAIL) on rank 1 at step 3; ending the job"),
            std::string::npos)
      << r.output;
}

TEST_F(DataParallel, AHangingRankTimesOutWithTheWaitingRanksName) {
  NNKIT_REQUIRE_MPIRUN();
  const auto start = std::chrono::steady_clock::now();
  const Result r = run(mpirun(2, {"NNKIT_FAULT_RANK_HANG=1:3"}) +
                           train_args(dir_ / "h", "parallel.data=2 parallel.comm.timeout_s=3"),
                       90);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "the job hung: " << r.output;
  EXPECT_LT(seconds, 60.0);
  EXPECT_NE(r.output.find("[comm/mpi] rank 0 of 2 failed: all_reduce_sum of"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("did not complete within 3 s (parallel.comm.timeout_s)"),
            std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace nnkit

namespace nnkit {
namespace {

using namespace parallel_test;  // NOLINT(google-build-using-namespace)

// ZeRO-1: each rank keeps the optimizer state of its share of the parameters; the update, and a
// checkpoint (which gathers the state on rank 0), are the same as with the state everywhere.
TEST_F(DataParallel, ZeroOneShardsTheOptimizerStateAndCheckpointsAllOfIt) {
  NNKIT_REQUIRE_MPIRUN();
  const fs::path one = dir_ / "one", zero = dir_ / "zero";
  ASSERT_EQ(run(train_args(one)).exit_code, 0);
  const Result r = run(mpirun(2) + train_args(zero, "parallel.data=2 parallel.zero=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("optimizer state sharded (ZeRO-1)"), std::string::npos) << r.output;
  EXPECT_LE(max_weight_difference(step_dir(one, 10), step_dir(zero, 10)), kWeightBound);
  EXPECT_LE(max_weight_difference(step_dir(one, 5), step_dir(zero, 5), "optimizer.safetensors"),
            kWeightBound);

  const fs::path resumed = dir_ / "resumed";
  const Result back = resume_from_step_5(zero, resumed, "", "parallel.data=1 parallel.zero=0");
  ASSERT_EQ(back.exit_code, 0) << back.output;
  EXPECT_LE(max_weight_difference(step_dir(one, 10), step_dir(resumed, 10)), kWeightBound);
}

// A comm plugin named in the config runs the data-parallel path on one rank: comm/mpi as an MPI
// singleton (no mpirun) gives the plain run's weights.
TEST_F(DataParallel, OneRankThroughANamedCommunicatorTrainsLikeThePlainRun) {
  if (std::string(NNKIT_MPIEXEC).empty()) {
    GTEST_SKIP() << "no MPI in this build (CMake found no mpiexec; install openmpi-bin "
                    "libopenmpi-dev and reconfigure): comm/mpi runs this one rank as a singleton";
  }
  const fs::path plain = dir_ / "plain", through = dir_ / "through";
  ASSERT_EQ(run(train_args(plain)).exit_code, 0);
  const Result r = run(train_args(through, "parallel.comm.type=mpi"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("data parallel over 1 rank(s) (comm/mpi, 8 rows each)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(max_weight_difference(step_dir(plain, 10), step_dir(through, 10)), 0.0);
}

// The GPU lead's one-GPU check of comm/nccl inside training: the same run with and without the
// communicator (CUDA backend in fp32). Skipped without comm/nccl or a usable GPU.
TEST_F(DataParallel, OneGpuThroughNcclTrainsLikeThePlainRun) {
  const fs::path nccl = fs::path(NNKIT_PLUGIN_DIR) / "libnnkit_comm_nccl.so";
  if (!fs::exists(nccl)) GTEST_SKIP() << "comm/nccl is not built (" << nccl << ")";
  if (run("nvidia-smi -L").exit_code != 0) GTEST_SKIP() << "no GPU (nvidia-smi -L failed)";
  const std::string cuda = "'backend={type: cuda, precision: fp32}' ";
  const fs::path plain = dir_ / "plain", through = dir_ / "through";
  const Result a = run(train_args(plain, cuda));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const Result b = run(train_args(through, cuda + "parallel.comm.type=nccl"));
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("data parallel over 1 rank(s) (comm/nccl, 8 rows each)"),
            std::string::npos)
      << b.output;
  const double difference = max_weight_difference(step_dir(plain, 10), step_dir(through, 10));
  std::printf("cuda: max |w(nccl, 1 rank) - w(plain)| after 10 steps: %.3g\n", difference);
  EXPECT_LE(difference, kWeightBound);
}

// parallel.overlap: the buckets' all-reduces start during backward. The buckets, the collective
// and its summation are those of the reduction after backward, so the weights, the loss and
// the norm must be the same bits with and without overlap (and so within the one-rank bound).
// Buckets of 4 KiB (NNKIT_GRADIENT_BUCKET_BYTES) give the small test model several of them,
// some packed and some reduced in place, so that most start while backward still runs.
class Overlap : public DataParallel {
 protected:
  // Trains one rank with `common`, and `ranks` ranks with `common + parallel` with overlap on
  // and off; compares all three.
  void expect_same_bits(int ranks, const std::string& common, const std::string& parallel,
                        const char* label);
};

// True when every tensor of `file` has the same bytes in both checkpoints.
bool same_bytes(const fs::path& a, const fs::path& b, const char* file) {
  const SafetensorsFile fa(a / file), fb(b / file);
  if (fa.names() != fb.names()) return false;
  for (const std::string& name : fa.names()) {
    const auto x = fa.bytes(name), y = fb.bytes(name);
    if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size()) != 0) {
      ADD_FAILURE() << name << " differs between " << a << " and " << b;
      return false;
    }
  }
  return true;
}

// The bucket count and the buckets started during backward, from rank 0's log line.
std::pair<int, int> bucket_line(const std::string& output, bool overlap) {
  const std::string tail =
      std::string(
          " of them started while the backward pass was still running (parallel.overlap: ") +
      (overlap ? "true" : "false") + ")";
  const size_t end = output.find(tail);
  if (end == std::string::npos) return {-1, -1};
  const size_t start = output.rfind("gradients summed in ", end);
  int buckets = -1, early = -1;
  std::sscanf(output.c_str() + start, "gradients summed in %d bucket(s) over every rank; %d",
              &buckets, &early);
  return {buckets, early};
}

void Overlap::expect_same_bits(int ranks, const std::string& common, const std::string& parallel,
                               const char* label) {
  const fs::path one = dir_ / "one", on = dir_ / "on", off = dir_ / "off";
  const Result single = run(train_args(one, common));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const std::vector<std::string> env = {"NNKIT_GRADIENT_BUCKET_BYTES=4096"};
  const Result a = run(mpirun(ranks, env) + train_args(on, common + " " + parallel));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const Result b = run(mpirun(ranks, env) +
                       train_args(off, common + " " + parallel + " parallel.overlap=false"));
  ASSERT_EQ(b.exit_code, 0) << b.output;

  const auto [buckets, early] = bucket_line(a.output, true);
  std::printf("%s: %d buckets, %d started while backward ran\n", label, buckets, early);
  EXPECT_GE(buckets, 4) << a.output;
  // Every bucket but the last (which holds the embedding, backward's last gradient) starts
  // while backward still runs.
  EXPECT_EQ(early, buckets - 1) << a.output;
  EXPECT_EQ(bucket_line(b.output, false), std::make_pair(buckets, 0)) << b.output;

  for (int step : {5, 10}) {
    EXPECT_TRUE(same_bytes(step_dir(on, step), step_dir(off, step), "model.safetensors"))
        << "step " << step;
    EXPECT_TRUE(same_bytes(step_dir(on, step), step_dir(off, step), "optimizer.safetensors"))
        << "step " << step;
  }
  const auto x = step_lines(on), y = step_lines(off);
  ASSERT_EQ(x.size(), 10u);
  ASSERT_EQ(y.size(), 10u);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(x[i]["loss"], y[i]["loss"]) << "step " << i + 1;
    EXPECT_EQ(x[i]["grad_norm"], y[i]["grad_norm"]) << "step " << i + 1;
  }
  const double difference = max_weight_difference(step_dir(one, 10), step_dir(on, 10));
  std::printf("%s: max |w(overlapped) - w(1 rank)| after 10 steps: %.3g (bound %.0e)\n", label,
              difference, kWeightBound);
  EXPECT_LE(difference, kWeightBound);
}

TEST_F(Overlap, TwoRanksGiveTheBitsOfTheReductionAfterBackward) {
  NNKIT_REQUIRE_MPIRUN();
  expect_same_bits(2, "", "parallel.data=2", "dp2 overlap");
}

// Four ranks: summation orders could differ between algorithms here (two ranks' a + b cannot),
// so this is where the same collective for both paths matters.
TEST_F(Overlap, FourRanksGiveTheBitsOfTheReductionAfterBackward) {
  NNKIT_REQUIRE_MPIRUN();
  expect_same_bits(4, "", "parallel.data=4", "dp4 overlap");
}

// With micro-batches only the last backward pass overlaps (the earlier ones still add to the
// gradients).
TEST_F(Overlap, TwoRanksWithGradientAccumulation) {
  NNKIT_REQUIRE_MPIRUN();
  expect_same_bits(2, "train.grad_accum=2 train.batch_size=4", "parallel.data=2",
                   "dp2 grad_accum 2 overlap");
}

// Expert parallelism: the replicated parameters' buckets overlap with a backward pass that
// exchanges rows with all_to_all in every MoE layer.
TEST_F(Overlap, TwoExpertRanks) {
  NNKIT_REQUIRE_MPIRUN();
  config_ = fs::path(NNKIT_SOURCE_DIR_DEFAULT) / "tests/parallel/dp-tiny-moe.yaml";
  expect_same_bits(2, "", "parallel.expert=2", "ep2 overlap");
}

// Two data groups of two expert ranks: the experts' sums over their replicas (all_to_all, not
// overlapped) follow the overlapped buckets of the replicated parameters.
TEST_F(Overlap, TwoDataGroupsOfTwoExpertRanks) {
  NNKIT_REQUIRE_MPIRUN();
  config_ = fs::path(NNKIT_SOURCE_DIR_DEFAULT) / "tests/parallel/dp-tiny-moe.yaml";
  expect_same_bits(4, "", "parallel.data=2 parallel.expert=2", "dp2xep2 overlap");
}

}  // namespace
}  // namespace nnkit
