// Purpose: see run_record.h.
#include "run_record.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <thread>

#include "build_info.h"
#include "metrics_file.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"
#include "nnkit/io/run_lock.h"
#include "nnkit/model.h"
#include "nnkit/plugin_record.h"
#include "nnkit/version.h"
#include "tfevents.h"

namespace nnkit::cli {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// A data file is identified by its size and the hash of its start: hashing 2 GB of tokens at
// every start would cost more than a short run, and the start holds the token file's header
// (format, tokenizer) and enough payload to tell two corpora apart.
constexpr size_t kHeaderBytes = 64 * 1024;

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

std::string host_name() {
  char buffer[256] = {};
  ::gethostname(buffer, sizeof(buffer) - 1);
  return buffer;
}

// The value after "key:" on the first line of `file` that starts with `key`, trimmed.
std::string field_of(const fs::path& file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "" : line.substr(start);
  }
  return "";
}

// GPU models from the NVIDIA driver's /proc files: no CUDA runtime needed, so a CPU build of
// nnkit on a GPU machine records them too.
Json gpu_models() {
  Json gpus = Json::array();
  std::error_code ec;
  const fs::path root = "/proc/driver/nvidia/gpus";
  if (!fs::is_directory(root, ec)) return gpus;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string model = field_of(entry.path() / "information", "Model");
    if (!model.empty()) gpus.push_back(model);
  }
  return gpus;
}

Json machine_json(const RunConfig& config) {
  const Options& backend = config.backend.options;
  const int logical = static_cast<int>(std::thread::hardware_concurrency());
  const char* omp = std::getenv("OMP_NUM_THREADS");
  int64_t threads = backend.has("threads") ? backend.get_int("threads") : 0;
  // backend.threads 0 means the OpenMP runtime's default, which OMP_NUM_THREADS sets.
  if (threads == 0) threads = omp != nullptr && std::atoi(omp) > 0 ? std::atoi(omp) : logical;
  std::string precision = "fp32";
  if (backend.has("precision") && !backend.is_null("precision")) {
    precision = backend.get_string("precision");
  }
  return Json{{"host", host_name()},
              {"cpu", field_of("/proc/cpuinfo", "model name")},
              {"logical_cpus", logical},
              {"gpus", gpu_models()},
              {"backend", config.backend.id()},
              {"threads", threads},
              {"omp_num_threads", omp != nullptr ? Json(omp) : Json()},
              {"precision", precision}};
}

Json build_json() {
  return Json{{"version", kVersion},
              {"git_commit", build_git_commit()},
              {"git_dirty", build_git_dirty()},
              {"build_tag", NNKIT_BUILD_TAG},
              {"plugin_abi", kPluginAbiVersion}};
}

// True while some process holds RUN/.lock. A shared, non-blocking flock conflicts only with the
// writer's exclusive one and is dropped at once.
bool lock_is_held(const fs::path& run_dir) {
  const int fd = ::open(RunLock::lock_path(run_dir).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0;
  if (!held) ::flock(fd, LOCK_UN);
  ::close(fd);
  return held;
}

RunStatus parse_status(const std::string& text) {
  if (text == "running") return RunStatus::kRunning;
  if (text == "complete") return RunStatus::kComplete;
  if (text == "interrupted") return RunStatus::kInterrupted;
  if (text == "failed") return RunStatus::kFailed;
  return RunStatus::kUnrecorded;
}

}  // namespace

std::string to_string(RunStatus status) {
  switch (status) {
    case RunStatus::kRunning:
      return "running";
    case RunStatus::kComplete:
      return "complete";
    case RunStatus::kInterrupted:
      return "interrupted";
    case RunStatus::kFailed:
      return "failed";
    case RunStatus::kUnrecorded:
      return "unrecorded";
  }
  return "unrecorded";
}

Json data_identity_json(const fs::path& data) {
  std::error_code ec;
  const fs::path absolute = fs::absolute(data, ec);
  Json identity{{"path", absolute.string()}};
  const auto size = fs::file_size(data, ec);
  if (ec) {
    identity["error"] = "cannot stat: " + ec.message();
    return identity;
  }
  std::ifstream in(data, std::ios::binary);
  std::string header(std::min<uintmax_t>(size, kHeaderBytes), '\0');
  in.read(header.data(), static_cast<std::streamsize>(header.size()));
  header.resize(static_cast<size_t>(in.gcount()));
  identity["size"] = size;
  identity["header_bytes"] = header.size();
  identity["header_sha256"] = sha256_hex(header);
  return identity;
}

RunRecorder::RunRecorder(const fs::path& run_dir, const Session& session, const ParsedArgs& args,
                         const Args& command_line, const fs::path& data, bool resume)
    : run_dir_(run_dir), started_(steady_seconds()) {
  const fs::path file = run_dir / kRunRecordFile;
  std::error_code ec;
  if (resume && fs::exists(file, ec)) {
    try {
      record_ = Json::parse(read_file(file));
    } catch (const Json::exception&) {
      record_ = Json();  // a damaged record is replaced; the run itself is intact
    }
  }
  const RunConfig& config = session.config;
  if (!record_.is_object()) {
    record_ = Json{{"format", 1},
                   {"created", utc_now()},
                   {"config", args.positionals().empty() ? Json() : Json(args.positionals()[0])},
                   {"overrides", Json::array()},
                   {"attempts", Json::array()}};
  }
  for (const std::string& o : args.overrides()) record_["overrides"].push_back(o);
  // Counting needs no backend (validate does the same): the components accept a null one.
  const Transformer model(config, *session.registry, nullptr);
  record_["seed"] = config.seed;
  record_["train_steps"] = config.train.steps;
  record_["parameters"] = {{"total", model.parameter_count()},
                           {"active", model.active_parameter_count()}};
  record_["build"] = build_json();
  record_["machine"] = machine_json(config);
  record_["data"] = data.empty() ? Json() : data_identity_json(data);
  record_["status"] = "running";
  record_["attempts"].push_back(Json{{"started", utc_now()},
                                     {"command", Json(command_line)},
                                     {"resume", resume},
                                     {"pid", ::getpid()},
                                     {"end", nullptr}});
  write();
}

void RunRecorder::write() const {
  write_file_atomic(run_dir_ / kRunRecordFile, record_.dump(2) + "\n");
}

void RunRecorder::finish(const TrainSummary& summary, int64_t train_steps) {
  const bool complete = !summary.interrupted && summary.last_step >= train_steps;
  Json& attempt = record_["attempts"].back();
  attempt["ended"] = utc_now();
  attempt["end"] = complete ? "complete" : "interrupted";
  attempt["wall_s"] = steady_seconds() - started_;
  attempt["first_step"] = summary.first_step;
  attempt["last_step"] = summary.last_step;
  attempt["tokens_per_s"] = summary.tokens_per_second;
  record_["status"] = complete ? "complete" : "interrupted";
  write();
  write_tensorboard_events(run_dir_);
}

void RunRecorder::fail(const std::string& message) {
  Json& attempt = record_["attempts"].back();
  attempt["ended"] = utc_now();
  attempt["end"] = "failed";
  attempt["wall_s"] = steady_seconds() - started_;
  attempt["error"] = message;
  record_["status"] = "failed";
  try {
    write();
    write_tensorboard_events(run_dir_);
  } catch (const Error&) {
    // The failure being reported matters more than its record (a full disk fails both).
  }
}

std::optional<RunOverview> read_run_overview(const fs::path& run_dir) {
  const std::optional<RunMetrics> metrics = read_run_metrics(run_dir / "metrics.jsonl");
  std::error_code ec;
  const fs::path record_file = run_dir / kRunRecordFile;
  const bool recorded = fs::exists(record_file, ec);
  if (!metrics && !recorded) return std::nullopt;
  RunOverview overview;
  overview.dir = run_dir;
  overview.name = run_dir.filename().string();
  if (overview.name.empty()) overview.name = run_dir.parent_path().filename().string();
  if (recorded) {
    try {
      overview.record = Json::parse(read_file(record_file));
    } catch (const Json::exception& e) {
      throw IoError("runs", record_file.string() + " is not valid JSON (" + e.what() +
                                "); it is rewritten by the next `nnkit train --resume`");
    }
    const Json& r = overview.record;
    overview.status = parse_status(r.value("status", ""));
    overview.total_steps = r.value("train_steps", int64_t{0});
    if (r.contains("parameters")) {
      overview.params_total = r["parameters"].value("total", int64_t{0});
      overview.params_active = r["parameters"].value("active", int64_t{0});
    }
    for (const Json& o : r.value("overrides", Json::array())) overview.overrides.push_back(o);
    for (const Json& a : r.value("attempts", Json::array())) {
      if (a.contains("wall_s") && a["wall_s"].is_number())
        overview.wall_s += a["wall_s"].get<double>();
      if (a.value("end", Json()).is_string() && a["end"] == "failed") {
        overview.error = a.value("error", "");
      }
    }
    // A record saying "running" whose lock nobody holds belongs to a killed process.
    if (overview.status == RunStatus::kRunning && !lock_is_held(run_dir)) {
      overview.status = RunStatus::kInterrupted;
    }
  }
  if (metrics) {
    overview.last_step = metrics->last_step;
    overview.final_val_loss = metrics->final_value("val_loss");
    overview.best_val_loss = metrics->best_value("val_loss");
    overview.tokens_per_s = metrics->mean_tokens_per_s();
  }
  return overview;
}

}  // namespace nnkit::cli
