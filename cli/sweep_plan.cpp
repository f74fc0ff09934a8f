// Purpose: see sweep_plan.h.
#include "sweep_plan.h"

#include <algorithm>

#include "common.h"
#include "nnkit/checkpoint.h"
#include "nnkit/error.h"
#include "nnkit/model.h"
#include "run_record.h"

namespace nnkit::cli {

namespace fs = std::filesystem;

namespace {

// The key of `override_text` ("model.moe.router.top_kk=1" -> "model.moe.router.top_kk").
std::string override_key(const std::string& override_text) {
  return override_text.substr(0, override_text.find('='));
}

}  // namespace

PlannedRun plan_run(const SweepSpec& sweep, const SweepRun& run, const fs::path& out,
                    const ParsedArgs& args) {
  PlannedRun planned;
  planned.run = run;
  planned.dir = out / run.name;
  try {
    const Session session = open_session(sweep.base, run.overrides, args);
    const Transformer model(session.config, *session.registry, nullptr);
    planned.steps = session.config.train.steps;
    planned.params_total = model.parameter_count();
    planned.params_active = model.active_parameter_count();
    planned.on_cpu = session.config.backend.name == "cpu";
    const std::string data = args.get_or("--data", session.config.train.data);
    if (data.empty()) {
      throw ConfigError("sweep", "run '" + run.name + "' of " + sweep.file.string() +
                                     " has no training data; pass --data FILE to `nnkit sweep` "
                                     "or set train.data in " +
                                     sweep.base.string());
    }
    std::error_code ec;
    if (!fs::is_regular_file(data, ec)) {
      throw ConfigError("sweep", "data file " + data + " of run '" + run.name +
                                     "' does not exist; fix --data or train.data (make one with "
                                     "`nnkit data prepare INPUT... -o FILE`)");
    }
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    if (message.rfind("[sweep]", 0) == 0) throw;
    // Name the override the message is about: the longest key whose last segment it quotes.
    std::string origin, key;
    for (size_t i = 0; i < run.overrides.size(); ++i) {
      const std::string k = override_key(run.overrides[i]);
      const std::string leaf = k.substr(k.rfind('.') == std::string::npos ? 0 : k.rfind('.') + 1);
      if (message.find("'" + leaf + "'") != std::string::npos && k.size() > key.size()) {
        key = k, origin = run.origins[i];
      }
    }
    throw ConfigError("sweep", "run '" + run.name + "' of " + sweep.file.string() +
                                   (key.empty() ? "" : ": key '" + key + "' at " + origin) +
                                   " does not fit its base " + sweep.base.string() + ": " +
                                   message +
                                   (key.empty() ? "" : "; fix the key in the sweep file"));
  } catch (const UsageError& e) {
    throw ConfigError("sweep", "run '" + run.name + "' of " + sweep.file.string() + ": " +
                                   e.what() +
                                   (run.origins.empty() ? "" : " (" + run.origins[0] + ")"));
  }
  return planned;
}

Start choose_start(const PlannedRun& planned) {
  const std::optional<RunOverview> overview = read_run_overview(planned.dir);
  if (overview && overview->record.is_object()) {
    // A directory made by another sweep (or by hand) must not be continued as this run.
    const std::vector<std::string>& recorded = overview->overrides;
    const std::vector<std::string>& wanted = planned.run.overrides;
    const bool same = recorded.size() >= wanted.size() &&
                      std::equal(wanted.begin(), wanted.end(), recorded.begin());
    if (!same) {
      std::string was;
      for (const std::string& o : recorded) was += (was.empty() ? "" : " ") + o;
      throw ConfigError("sweep", planned.dir.string() + " holds a run with the overrides [" + was +
                                     "], not this sweep's run '" + planned.run.name +
                                     "'; sweep into another --out or remove that directory");
    }
    if (overview->status == RunStatus::kRunning) {
      throw IoError("sweep", planned.dir.string() +
                                 " is in use by another process (its lock is held); wait for it "
                                 "or sweep into another --out");
    }
    if (overview->status == RunStatus::kComplete && overview->last_step >= planned.steps) {
      return Start::kSkip;
    }
  }
  std::error_code ec;
  if (fs::is_directory(planned.dir, ec) && CheckpointStore(planned.dir).latest()) {
    return Start::kResume;
  }
  return Start::kFresh;
}

}  // namespace nnkit::cli
