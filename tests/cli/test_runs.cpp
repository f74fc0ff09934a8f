// Purpose: run records and reading runs back: RUN/run.json holds the overrides as typed, the
// seed, the build's git commit, the machine and the data file's identity; `nnkit runs ls` lists
// runs with their status; `runs diff` of two runs that differ in one override shows exactly that
// key; the TensorBoard event file decodes (TFRecord framing with masked CRC-32C checked by an
// implementation of its own here, Event/Summary protobuf fields) to the values of metrics.jsonl.
// Thread-safety: none needed (GoogleTest runs these sequentially; each test has its own folder).
#include <cmath>
#include <cstring>

#include "cli_support.h"

namespace nnkit::clitest {
namespace {

using Json = nlohmann::json;

class Runs : public CliTest {};

TEST_F(Runs, RecordHoldsOverridesSeedBuildMachineAndData) {
  const fs::path run = path("run");
  train_ok(run, {"seed=42", "train.steps=4"});
  const Json record = Json::parse(read_text(run / "run.json"));
  EXPECT_EQ(record["overrides"], Json({"seed=42", "train.steps=4"}));
  EXPECT_EQ(record["seed"], 42);
  EXPECT_EQ(record["status"], "complete");
  const std::string commit = record["build"]["git_commit"];
  EXPECT_TRUE(commit == "unknown" || commit.size() == 40) << commit;
  EXPECT_TRUE(record["build"]["git_dirty"].is_boolean());
  EXPECT_EQ(record["machine"]["backend"], "backend/cpu");
  EXPECT_EQ(record["machine"]["threads"], 1);  // backend.threads of the tiny config
  EXPECT_EQ(record["machine"]["precision"], "fp32");
  EXPECT_EQ(record["data"]["path"], fs::absolute(tokens_).string());
  EXPECT_EQ(record["data"]["size"], fs::file_size(tokens_));
  EXPECT_EQ(record["data"]["header_sha256"].get<std::string>().size(), 64u);
  EXPECT_GT(record["parameters"]["total"].get<int64_t>(),
            record["parameters"]["active"].get<int64_t>());
  ASSERT_EQ(record["attempts"].size(), 1u);
  EXPECT_EQ(record["attempts"][0]["end"], "complete");
  EXPECT_TRUE(fs::exists(run / "plugins.json"));
  EXPECT_TRUE(fs::exists(run / "config.yaml"));

  // A resume appends an attempt and its overrides.
  const RunResult resumed = run_nnkit({"train", "--resume", run.string(), "train.steps=6"});
  ASSERT_EXIT_CODE(resumed, 0);
  const Json after = Json::parse(read_text(run / "run.json"));
  ASSERT_EQ(after["attempts"].size(), 2u);
  EXPECT_EQ(after["attempts"][1]["resume"], true);
  EXPECT_EQ(after["overrides"].back(), "train.steps=6");

  const RunResult show = run_nnkit({"runs", "show", run.string()});
  ASSERT_EXIT_CODE(show, 0);
  EXPECT_MENTIONS(show.out, "seed=42");
  EXPECT_MENTIONS(show.out, "build.git_commit: " + commit);
  EXPECT_MENTIONS(show.out, "plugin     moe/topk");
}

TEST_F(Runs, DiffOfTwoRunsDifferingInOneOverrideShowsExactlyThatKey) {
  train_ok(path("a"), {"train.steps=3"});
  train_ok(path("b"), {"train.steps=3", "model.moe.router.top_k=1"});
  const RunResult diff =
      run_nnkit({"runs", "diff", path("a").string(), path("b").string(), "--json"});
  ASSERT_EXIT_CODE(diff, 0);
  const Json d = Json::parse(diff.out);
  ASSERT_EQ(d["config"].size(), 1u) << diff.out;
  EXPECT_EQ(d["config"][0]["key"], "model.moe.router.top_k");
  EXPECT_EQ(d["config"][0]["a"], "2");
  EXPECT_EQ(d["config"][0]["b"], "1");
  EXPECT_TRUE(d["plugins"].empty()) << diff.out;
  EXPECT_TRUE(d["record"].empty()) << diff.out;

  const RunResult text = run_nnkit({"runs", "diff", path("a").string(), path("b").string()});
  ASSERT_EXIT_CODE(text, 0);
  EXPECT_MENTIONS(text.out, "config: 1 value differs\n  model.moe.router.top_k: 2 -> 1\n");
  EXPECT_MENTIONS(text.out, "plugins: same");

  const RunResult ls = run_nnkit({"runs", "ls", dir_.path().string()});
  ASSERT_EXIT_CODE(ls, 0);
  EXPECT_MENTIONS(ls.out, "name");
  EXPECT_MENTIONS(ls.out, "best val loss");
  const Json rows = Json::parse(run_nnkit({"runs", "ls", dir_.path().string(), "--json"}).out);
  ASSERT_EQ(rows.size(), 2u);
  for (const Json& row : rows) {
    EXPECT_EQ(row["status"], "complete");
    EXPECT_EQ(row["last_step"], 3);
    double best = 1e300;
    for (const Json& line : read_jsonl(row["dir"].get<std::string>() + "/metrics.jsonl")) {
      if (line.contains("val_loss")) best = std::min(best, line["val_loss"].get<double>());
    }
    EXPECT_DOUBLE_EQ(row["best_val_loss"].get<double>(), best);
  }
}

TEST_F(Runs, AKilledRunIsListedAsInterrupted) {
  const fs::path run = path("run");
  train_ok(run, {"train.steps=3"});
  // What a SIGKILLed train leaves: a record that says running, and no process holding the lock.
  Json record = Json::parse(read_text(run / "run.json"));
  record["status"] = "running";
  write_text(run / "run.json", record.dump());
  const Json rows = Json::parse(run_nnkit({"runs", "ls", dir_.path().string(), "--json"}).out);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["status"], "interrupted");
}

TEST_F(Runs, ErrorsNameTheDirectoryAndTheFix) {
  const RunResult missing = run_nnkit({"runs", "show", path("nothing").string()});
  EXPECT_EXIT_CODE(missing, 1);
  EXPECT_MENTIONS(missing.err, "is not a run directory");
  EXPECT_MENTIONS(missing.err, "nnkit train --out");
  const RunResult action = run_nnkit({"runs", "lss", dir_.path().string()});
  EXPECT_EXIT_CODE(action, 2);
  EXPECT_MENTIONS(action.err, "unknown action 'lss'");
}

// ---- TensorBoard: an independent reader of what the CLI writes ----------------------------

uint32_t crc32c_bitwise(const std::string& bytes) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

uint32_t masked(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

template <typename T>
T little_endian(const std::string& bytes, size_t at) {
  T value;
  std::memcpy(&value, bytes.data() + at, sizeof(T));
  return value;
}

uint64_t varint(const std::string& bytes, size_t& at) {
  uint64_t value = 0;
  for (int shift = 0; at < bytes.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(bytes[at++]);
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) break;
  }
  return value;
}

struct Field {
  uint32_t number = 0;
  uint64_t integer = 0;  // varint, fixed64 and fixed32 payloads
  std::string bytes;     // length-delimited payload
};

std::vector<Field> fields(const std::string& message) {
  std::vector<Field> out;
  size_t at = 0;
  while (at < message.size()) {
    const uint64_t key = varint(message, at);
    Field f;
    f.number = static_cast<uint32_t>(key >> 3);
    switch (key & 7) {
      case 0:
        f.integer = varint(message, at);
        break;
      case 1:
        f.integer = little_endian<uint64_t>(message, at), at += 8;
        break;
      case 5:
        f.integer = little_endian<uint32_t>(message, at), at += 4;
        break;
      case 2: {
        const uint64_t n = varint(message, at);
        f.bytes = message.substr(at, n);
        at += n;
        break;
      }
      default:
        ADD_FAILURE() << "unexpected wire type " << (key & 7);
        return out;
    }
    out.push_back(f);
  }
  return out;
}

TEST_F(Runs, TensorBoardEventsDecodeToTheMetrics) {
  const fs::path run = path("run");
  train_ok(run, {"train.steps=4", "train.eval_every=2"});
  const std::string file = read_text(run / "tensorboard" / "events.out.tfevents.0.nnkit");
  std::vector<std::string> events;
  for (size_t at = 0; at < file.size();) {
    ASSERT_LE(at + 12, file.size());
    const std::string length_bytes = file.substr(at, 8);
    const auto length = little_endian<uint64_t>(file, at);
    EXPECT_EQ(little_endian<uint32_t>(file, at + 8), masked(crc32c_bitwise(length_bytes)));
    ASSERT_LE(at + 12 + length + 4, file.size());
    const std::string event = file.substr(at + 12, length);
    EXPECT_EQ(little_endian<uint32_t>(file, at + 12 + length), masked(crc32c_bitwise(event)));
    events.push_back(event);
    at += 12 + length + 4;
  }
  ASSERT_GT(events.size(), 1u);
  // The first event says which format follows.
  bool versioned = false;
  for (const Field& f : fields(events[0])) versioned |= f.number == 3 && f.bytes == "brain.Event:2";
  EXPECT_TRUE(versioned);
  std::map<std::pair<std::string, int64_t>, float> scalars;
  for (size_t i = 1; i < events.size(); ++i) {
    int64_t step = -1;
    for (const Field& f : fields(events[i])) {
      if (f.number == 2) step = static_cast<int64_t>(f.integer);
      if (f.number != 5) continue;
      for (const Field& value : fields(f.bytes)) {
        ASSERT_EQ(value.number, 1u);
        std::string tag;
        float simple = std::nanf("");
        for (const Field& v : fields(value.bytes)) {
          if (v.number == 1) tag = v.bytes;
          if (v.number == 2) {
            const auto bits = static_cast<uint32_t>(v.integer);
            std::memcpy(&simple, &bits, sizeof(simple));
          }
        }
        scalars[{tag, step}] = simple;
      }
    }
  }
  size_t checked = 0;
  for (const Json& line : read_jsonl(run / "metrics.jsonl")) {
    const int64_t step = line["step"];
    for (const char* name : {"loss", "val_loss", "lr"}) {
      if (!line.contains(name)) continue;
      const auto found = scalars.find({name, step});
      ASSERT_NE(found, scalars.end()) << name << " at step " << step;
      EXPECT_EQ(found->second, static_cast<float>(line[name].get<double>()));
      ++checked;
    }
    if (line.contains("expert_load")) {
      double largest = 0;
      for (const Json& share : line["expert_load"][1])
        largest = std::max(largest, share.get<double>());
      const auto found = scalars.find({"moe/layer1/max_expert_load", step});
      ASSERT_NE(found, scalars.end()) << "expert load at step " << step;
      EXPECT_EQ(found->second, static_cast<float>(largest));
    }
  }
  EXPECT_EQ(checked, 4u + 4u + 3u);  // loss and lr at steps 1-4, val_loss at 0, 2, 4
}

}  // namespace
}  // namespace nnkit::clitest
