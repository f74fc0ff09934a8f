// Purpose: `nnkit sweep` end to end: a six-run grid on the demo corpus (data/demo.tokens, or
// the fixture's small corpus where the demo corpus was not prepared) is stopped halfway with
// SIGTERM, then run again: the runs that were complete are skipped (their files untouched), the
// rest finish, and summary.csv holds exactly what each run's metrics.jsonl says. A sweep killed
// outright (SIGKILL) is finished by the next one. A failing run is reported and the sweep goes
// on. Each kind of bad sweep file is refused before any run
// starts, with the file:line:col and the fix.
// Thread-safety: none needed (GoogleTest runs these sequentially; each test has its own folder).
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

// The six runs: top_k x aux_loss_weight.
constexpr const char* kGridSweep = R"(sweep:
  base: tiny.yaml
  grid:
    model.moe.router.top_k: [1, 2]
    model.moe.router.aux_loss_weight: [0.0, 0.01, 0.1]
  metric: val_loss
)";

const std::vector<std::string> kGridRuns = {
    "top_k=1,aux_loss_weight=0.0", "top_k=1,aux_loss_weight=0.01", "top_k=1,aux_loss_weight=0.1",
    "top_k=2,aux_loss_weight=0.0", "top_k=2,aux_loss_weight=0.01", "top_k=2,aux_loss_weight=0.1"};

// Splits one CSV line (cells quoted when they hold a comma; no quotes inside cells here).
std::vector<std::string> csv_cells(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      cells.push_back(cell);
      cell.clear();
    } else {
      cell += c;
    }
  }
  cells.push_back(cell);
  return cells;
}

// summary.csv as header name -> cell, one map per run.
std::vector<std::map<std::string, std::string>> read_summary_csv(const fs::path& file) {
  std::istringstream in(read_text(file));
  std::string line;
  std::getline(in, line);
  const std::vector<std::string> header = csv_cells(line);
  std::vector<std::map<std::string, std::string>> rows;
  while (std::getline(in, line)) {
    const std::vector<std::string> cells = csv_cells(line);
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < header.size() && i < cells.size(); ++i) row[header[i]] = cells[i];
    rows.push_back(row);
  }
  return rows;
}

bool run_is_complete(const fs::path& run) {
  std::error_code ec;
  if (!fs::exists(run / "run.json", ec)) return false;
  try {
    return Json::parse(read_text(run / "run.json")).value("status", "") == "complete";
  } catch (const Json::exception&) {
    return false;  // read between two writes; the next poll sees the new file
  }
}

class Sweep : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    const fs::path demo = source_dir() / "data" / "demo.tokens";
    data_ = fs::exists(demo) ? demo : tokens_;
  }

  fs::path write_sweep(const std::string& text) const { return write("sweep.yaml", text); }

  RunResult sweep(const fs::path& file, const fs::path& out,
                  const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> args = {"sweep",      file.string(), "--out",
                                     out.string(), "--data",      data_.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_nnkit(args, {}, dir_.path(), 300);
  }

  // A bad sweep file is refused with exit code 2, the message parts, and no run started.
  void expect_refused(const std::string& text, const std::vector<std::string>& parts) {
    const fs::path file = write_sweep(text);
    const fs::path out = path("refused");
    const RunResult r = sweep(file, out);
    EXPECT_EXIT_CODE(r, 2);
    for (const std::string& part : parts) EXPECT_MENTIONS(r.err, part);
    EXPECT_FALSE(fs::exists(out)) << "a run directory was made before the input was checked";
  }

  fs::path data_;
};

TEST_F(Sweep, StoppedHalfwayResumesWithoutRedoingCompleteRunsAndSummarisesMetrics) {
  const fs::path file = write_sweep(kGridSweep);
  const fs::path out = path("sweep");
  Child first({"sweep", file.string(), "--out", out.string(), "--data", data_.string()}, {},
              dir_.path());
  // Stop it once three runs are complete (the fourth is then starting or training).
  size_t complete = 0;
  while (first.running()) {
    complete = static_cast<size_t>(
        std::count_if(kGridRuns.begin(), kGridRuns.end(),
                      [&](const std::string& name) { return run_is_complete(out / name); }));
    if (complete >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(first.running()) << "the sweep ended before it could be stopped halfway";
  first.signal(SIGTERM);
  const RunResult stopped = first.wait(120);
  ASSERT_EXIT_CODE(stopped, 128 + SIGTERM);
  EXPECT_MENTIONS(stopped.out, "run the same command again to resume");

  std::map<std::string, std::string> done_before;  // run -> run.json + metrics.jsonl
  for (const std::string& name : kGridRuns) {
    if (run_is_complete(out / name)) {
      done_before[name] =
          read_text(out / name / "run.json") + read_text(out / name / "metrics.jsonl");
    }
  }
  ASSERT_GE(done_before.size(), 3u);
  ASSERT_LT(done_before.size(), kGridRuns.size()) << stopped.out;

  const RunResult second = sweep(file, out);
  ASSERT_EXIT_CODE(second, 0);
  for (const auto& [name, files] : done_before) {
    EXPECT_MENTIONS(second.out, name + ": already complete, skipped");
    EXPECT_EQ(read_text(out / name / "run.json") + read_text(out / name / "metrics.jsonl"), files)
        << name << " was trained again";
  }
  EXPECT_MENTIONS(second.out, std::to_string(done_before.size()) +
                                  " skipped (already complete), 0 interrupted, 0 failed");
  for (const std::string& name : kGridRuns) {
    EXPECT_TRUE(run_is_complete(out / name)) << name;
    // A resumed run continues its metrics: every step once, in order.
    std::vector<int64_t> steps;
    for (const Json& line : read_jsonl(out / name / "metrics.jsonl")) {
      if (line.contains("loss")) steps.push_back(line["step"].get<int64_t>());
    }
    std::vector<int64_t> expected(10);
    for (int64_t s = 0; s < 10; ++s) expected[static_cast<size_t>(s)] = s + 1;
    EXPECT_EQ(steps, expected) << name;
  }

  // The summary's numbers are the runs' own.
  const auto rows = read_summary_csv(out / "summary.csv");
  ASSERT_EQ(rows.size(), kGridRuns.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    EXPECT_EQ(row.at("run"), kGridRuns[i]);
    EXPECT_EQ(row.at("status"), "complete");
    EXPECT_EQ(row.at("steps"), "10/10");
    std::vector<double> val, speed;
    for (const Json& line : read_jsonl(out / kGridRuns[i] / "metrics.jsonl")) {
      if (line.contains("val_loss")) val.push_back(line["val_loss"].get<double>());
      if (line.contains("loss")) speed.push_back(line["tokens_per_s"].get<double>());
    }
    ASSERT_FALSE(val.empty());
    double mean_speed = 0;
    for (double s : speed) mean_speed += s;
    mean_speed /= static_cast<double>(speed.size());
    EXPECT_DOUBLE_EQ(std::stod(row.at("final val_loss")), val.back()) << kGridRuns[i];
    EXPECT_DOUBLE_EQ(std::stod(row.at("best val_loss")), *std::min_element(val.begin(), val.end()))
        << kGridRuns[i];
    EXPECT_DOUBLE_EQ(std::stod(row.at("tokens/s")), mean_speed) << kGridRuns[i];
    const Json record = Json::parse(read_text(out / kGridRuns[i] / "run.json"));
    EXPECT_EQ(row.at("params total"), std::to_string(record["parameters"]["total"].get<int64_t>()));
    EXPECT_EQ(row.at("params active"),
              std::to_string(record["parameters"]["active"].get<int64_t>()));
  }
  // top-1 routes through fewer expert weights per token than top-2.
  EXPECT_LT(std::stoll(rows[0].at("params active")), std::stoll(rows[3].at("params active")));
  const std::string md = read_text(out / "summary.md");
  for (const std::string& name : kGridRuns) EXPECT_MENTIONS(md, "| " + name + " |");
  const std::string svg = read_text(out / "curves.svg");
  for (const std::string& name : kGridRuns) EXPECT_MENTIONS(svg, ">" + name + "</text>");
  size_t lines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos;
       at = svg.find("<polyline", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, kGridRuns.size());
}

// True while the process that the last attempt of RUN/run.json names still runs (a zombie
// counts as gone: it holds no lock).
bool recorded_process_alive(const fs::path& run) {
  std::error_code ec;
  if (!fs::exists(run / "run.json", ec)) return false;
  Json record;
  try {
    record = Json::parse(read_text(run / "run.json"));
  } catch (const Json::exception&) {
    return true;  // being rewritten by that very process
  }
  if (record.value("status", "") != "running" || record["attempts"].empty()) return false;
  const auto pid = record["attempts"].back().value("pid", int64_t{0});
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string pid_text, name, state;
  return static_cast<bool>(stat >> pid_text >> name >> state) && state != "Z";
}

TEST_F(Sweep, ASweepKilledOutrightIsFinishedByTheNextOne) {
  const fs::path file = write_sweep(kGridSweep);
  const fs::path out = path("sweep");
  Child first({"sweep", file.string(), "--out", out.string(), "--data", data_.string()}, {},
              dir_.path());
  while (first.running()) {
    const auto complete = std::count_if(kGridRuns.begin(), kGridRuns.end(), [&](const auto& name) {
      return run_is_complete(out / name);
    });
    if (complete >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(first.running()) << "the sweep ended before it could be killed";
  first.signal(SIGKILL);
  first.wait(60);
  // The orphaned `nnkit train` gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops; wait
  // until it has, or the next sweep would find its run in use.
  for (bool alive = true; alive;) {
    alive = std::any_of(kGridRuns.begin(), kGridRuns.end(), [&](const std::string& name) {
      return recorded_process_alive(out / name);
    });
    if (alive) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const RunResult second = sweep(file, out);
  ASSERT_EXIT_CODE(second, 0);
  EXPECT_MENTIONS(second.out, "0 interrupted, 0 failed");
  for (const std::string& name : kGridRuns) EXPECT_TRUE(run_is_complete(out / name)) << name;
}

TEST_F(Sweep, AFailingRunIsReportedAndTheOthersStillRun) {
  // A batch far beyond this machine's memory is refused by the run's own `nnkit train`.
  const fs::path file = write_sweep(R"(sweep:
  base: tiny.yaml
  list:
    - {name: first, overrides: []}
    - {name: too-big, overrides: ['train.batch_size=100000000']}
    - {name: last, overrides: ['seed=7']}
)");
  const fs::path out = path("sweep");
  const RunResult r = sweep(file, out);
  EXPECT_EXIT_CODE(r, 1);
  EXPECT_MENTIONS(r.out, "[2/3] too-big: FAILED (exit ");
  EXPECT_MENTIONS(r.out, (out / "too-big" / "train.log").string());
  EXPECT_MENTIONS(r.err, "1 run(s) failed: too-big");
  EXPECT_TRUE(run_is_complete(out / "first"));
  EXPECT_TRUE(run_is_complete(out / "last"));
  const auto rows = read_summary_csv(out / "summary.csv");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_NE(rows[1].at("status"), "complete");
  EXPECT_EQ(rows[2].at("status"), "complete");
}

TEST_F(Sweep, CommonOverridesComeFirstAndADryRunStartsNothing) {
  const fs::path file = write_sweep(R"(sweep:
  base: tiny.yaml
  overrides: ['train.steps=3']
  grid:
    seed: [1, 2]
  list:
    - {name: dense, overrides: ['model.moe=null', 'model.ffn={type: swiglu, ffn_dim: 64}']}
)");
  const fs::path out = path("sweep");
  const RunResult r = sweep(file, out, {"--dry-run"});
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.out, "seed=1  ");
  EXPECT_MENTIONS(r.out, "train.steps=3 seed=2  ");
  EXPECT_MENTIONS(r.out, "train.steps=3 model.moe=null model.ffn={type: swiglu, ffn_dim: 64}");
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(Sweep, ParallelRunsOnTheCpuSplitTheThreads) {
  const fs::path file = write_sweep(R"(sweep:
  base: tiny.yaml
  overrides: ['train.steps=3', 'backend.threads=0']
  grid:
    seed: [1, 2]
)");
  const fs::path out = path("sweep");
  const RunResult r = run_nnkit(
      {"sweep", file.string(), "--out", out.string(), "--data", data_.string(), "--parallel", "2"},
      {"OMP_NUM_THREADS=4"}, dir_.path(), 300);
  ASSERT_EXIT_CODE(r, 0);
  EXPECT_MENTIONS(r.out, "2 at a time");
  for (const char* name : {"seed=1", "seed=2"}) {
    const Json record = Json::parse(read_text(out / name / "run.json"));
    EXPECT_EQ(record["status"], "complete") << name;
    EXPECT_EQ(record["machine"]["omp_num_threads"], "2") << name;
    EXPECT_EQ(record["machine"]["threads"], 2) << name;
  }
}

TEST_F(Sweep, AnUnknownKeyIsRefusedWithItsPositionAndTheNearestKey) {
  expect_refused(R"(sweep:
  base: tiny.yaml
  grid:
    model.moe.router.top_kk: [1, 2]
)",
                 {"key 'model.moe.router.top_kk' at ", "sweep.yaml:4:5", "did you mean 'top_k'?",
                  "fix the key in the sweep file"});
}

TEST_F(Sweep, AnEmptyGridIsRefused) {
  expect_refused("sweep:\n  base: tiny.yaml\n  grid: {}\n",
                 {"sweep.grid is empty", "sweep.yaml:3:9", "give it at least one"});
  expect_refused("sweep:\n  base: tiny.yaml\n  grid:\n    seed: []\n",
                 {"sweep.grid 'seed' has no values", "sweep.yaml:4:11"});
}

TEST_F(Sweep, TwoListEntriesWithOneNameAreRefused) {
  expect_refused(R"(sweep:
  base: tiny.yaml
  list:
    - {name: a, overrides: ['seed=1']}
    - {name: a, overrides: ['seed=2']}
)",
                 {"two sweep runs are named 'a'", "sweep.yaml:5:14", "rename one"});
}

TEST_F(Sweep, AMissingBaseFileIsRefused) {
  expect_refused("sweep:\n  base: nowhere.yaml\n  grid:\n    seed: [1, 2]\n",
                 {"sweep.base 'nowhere.yaml' does not exist", "sweep.yaml:2:9", "fix the path"});
}

TEST_F(Sweep, AnUnknownSweepKeyIsRefusedWithTheNearestKey) {
  expect_refused("sweep:\n  base: tiny.yaml\n  gird:\n    seed: [1, 2]\n",
                 {"unknown key 'gird' in sweep", "did you mean 'grid'?", "sweep.yaml:3:3"});
}

}  // namespace
}  // namespace nnkit::clitest
