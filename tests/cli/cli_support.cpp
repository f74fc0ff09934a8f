// Purpose: see cli_support.h.
#include "cli_support.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace nnkit::clitest {

namespace {

// argv/envp for execve, built before fork so the child only calls async-signal-safe functions.
struct ExecArgs {
  std::vector<std::string> storage_args, storage_env;
  std::vector<char*> argv, envp;

  ExecArgs(const std::vector<std::string>& args, const std::vector<std::string>& env) {
    storage_args.push_back(NNKIT_CLI);
    storage_args.insert(storage_args.end(), args.begin(), args.end());
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      const std::string name = entry.substr(0, entry.find('='));
      bool replaced = false;
      for (const std::string& extra : env) {
        if (extra.substr(0, extra.find('=')) == name) replaced = true;
      }
      if (!replaced) storage_env.push_back(entry);
    }
    storage_env.insert(storage_env.end(), env.begin(), env.end());
    for (std::string& s : storage_args) argv.push_back(s.data());
    argv.push_back(nullptr);
    for (std::string& s : storage_env) envp.push_back(s.data());
    envp.push_back(nullptr);
  }
};

pid_t spawn(const std::vector<std::string>& args, const std::vector<std::string>& env,
            const fs::path& cwd, const fs::path& out, const fs::path& err) {
  ExecArgs exec(args, env);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    const int in_fd = ::open("/dev/null", O_RDONLY);
    const int out_fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err_fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in_fd < 0 || out_fd < 0 || err_fd < 0) ::_exit(126);
    ::dup2(in_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
    ::execve(exec.argv[0], exec.argv.data(), exec.envp.data());
    ::_exit(127);
  }
  return pid;
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

int next_id() {
  static int id = 0;
  return ++id;
}

}  // namespace

Child::Child(const std::vector<std::string>& args, const std::vector<std::string>& env,
             const fs::path& dir) {
  const std::string stem = "nnkit-" + std::to_string(next_id());
  out_ = dir / (stem + ".stdout");
  err_ = dir / (stem + ".stderr");
  pid_ = spawn(args, env, dir, out_, err_);
}

Child::~Child() {
  if (!reaped_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
  }
}

bool Child::running() {
  if (reaped_) return false;
  if (::waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
  return !reaped_;
}

void Child::signal(int sig) {
  if (!reaped_) ::kill(pid_, sig);
}

RunResult Child::wait(double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (running()) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "nnkit (pid " << pid_ << ") ran past " << timeout_s << " s; killed";
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status_, 0);
      reaped_ = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  RunResult result;
  result.exit_code = decode_status(status_);
  result.out = read_text(out_);
  result.err = read_text(err_);
  std::error_code ec;
  fs::remove(out_, ec);
  fs::remove(err_, ec);
  return result;
}

RunResult run_nnkit(const std::vector<std::string>& args, const std::vector<std::string>& env,
                    const fs::path& cwd, double timeout_s) {
  // Output files live in a folder of their own so `cwd` is not cluttered.
  static TempDir capture;
  const std::string stem = "run-" + std::to_string(next_id());
  const fs::path out = capture / (stem + ".stdout");
  const fs::path err = capture / (stem + ".stderr");
  const pid_t pid = spawn(args, env, cwd, out, err);
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (::waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "nnkit ran past " << timeout_s << " s; killed";
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  RunResult result;
  result.exit_code = decode_status(status);
  result.out = read_text(out);
  result.err = read_text(err);
  std::error_code ec;
  fs::remove(out, ec);
  fs::remove(err, ec);
  return result;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/nnkit-cli-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  if (std::getenv("NNKIT_KEEP_TEST_DIRS") != nullptr) return;
  std::error_code ec;
  // Restore write permission on anything a test made read-only, then remove.
  fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
  fs::remove_all(path_, ec);
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

fs::path source_dir() {
  const char* env = std::getenv("NNKIT_SOURCE_DIR");
  return env && *env ? fs::path(env) : fs::path(NNKIT_SOURCE_DIR_DEFAULT);
}

std::vector<nlohmann::json> read_jsonl(const fs::path& file) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_text(file));
  std::string line;
  while (std::getline(in, line)) {
    try {
      lines.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception& e) {
      ADD_FAILURE() << file << ": line " << lines.size() + 1 << " is not JSON (" << e.what()
                    << "): " << line;
    }
  }
  return lines;
}

std::map<int64_t, double> losses_by_step(const fs::path& metrics) {
  std::map<int64_t, double> out;
  for (const nlohmann::json& j : read_jsonl(metrics)) {
    if (j.contains("loss")) out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
  }
  return out;
}

std::string english_corpus() {
  return R"(The old lighthouse keeper climbed the spiral stairs every evening just before sunset.
He trimmed the wick, polished the great lens, and watched the ships pass along the rocky coast.
In the village below, the baker was already preparing the dough for the morning bread.
Children ran along the harbour wall, chasing gulls and shouting to the fishermen in their boats.
A small library stood at the corner of the market square, and its doors were always open.
The librarian knew every book by heart and could find a lost story in a matter of minutes.
On rainy afternoons, students gathered there to read about distant mountains and frozen seas.
Mathematics, she often said, is the art of giving the same name to different things.
The river that ran through the valley was wide and slow, and it carried leaves to the ocean.
Farmers planted wheat in the spring and harvested it when the fields turned the colour of gold.
Every autumn the town held a fair, with music, dancing, apple pies, and a contest of strength.
The oldest oak tree in the park had seen more than three hundred winters come and go.
Travellers who stopped at the inn were welcomed with warm soup and a seat beside the fire.
A good question is often more valuable than a quick answer, the teacher reminded her class.
The engineer checked the bridge twice before she allowed the first heavy truck to cross it.
When the power failed during the storm, the whole street lit candles and shared their food.
Learning to play the violin takes patience, practice, and a great deal of forgiveness.
The astronomer pointed her telescope at a faint smudge of light that was a distant galaxy.
Most of the stars we see at night are larger and brighter than our own quiet sun.
A cat slept in the window of the bookshop, ignoring the customers who came to admire it.
The train left the station at seven o'clock and arrived in the capital shortly after noon.
Good software is written twice: once to understand the problem, and once to solve it well.
The committee met on Tuesday to discuss the budget, but nobody could agree on anything.
In the desert, water is more precious than gold, and every traveller learns to carry enough.
The painter mixed blue and yellow on her palette until she found the green of the forest.
History is not only a list of kings and battles; it is also the story of ordinary people.
The recipe called for two cups of flour, one egg, a pinch of salt, and a spoon of honey.
After the long winter, the first warm day brought everyone outside to sit in the sunshine.
The doctor listened carefully to her patient and then explained the treatment in plain words.
A map is useful only if you know where you are standing when you begin to read it.
The choir rehearsed the same song for weeks until every voice moved together like one.
Snow fell quietly through the night, and by morning the whole city was white and silent.
The young programmer fixed the bug, wrote a test for it, and finally went home to sleep.
Bees visit thousands of flowers to make a single spoonful of honey for their hive.
The museum opened a new exhibition about ancient ships and the sailors who built them.
Kindness costs nothing, yet it is one of the most valuable gifts a person can give.
The wind turned to the north, and the sailors hurried to bring the boats back to shore.
She wrote letters to her grandmother every week, describing the city and its strange noises.
At the end of the day, the shopkeeper counted the coins, locked the door, and walked home.
The mountain path was steep and narrow, but the view from the top was worth every step.
)";
}

std::string tiny_config_yaml(const std::string& schedule) {
  return R"(# A tiny MoE model for the CLI tests.
seed: 1234
model:
  vocab_size: 260
  hidden_dim: 32
  n_layers: 2
  max_seq_len: 32
  norm: {type: rmsnorm, eps: 1.0e-5}
  attention:
    type: mqa
    n_heads: 4
    n_kv_heads: 2
    head_dim: 8
    rope: {base: 10000, ntk_alpha: 1}
  moe:
    router: {type: topk, top_k: 2, renormalize: true, aux_loss_weight: 0.01, capacity_factor: null}
    experts: {type: swiglu, n_experts: 4, ffn_dim: 32}
backend: {type: cpu, threads: 1}
tokenizer: {type: byte}
train:
  steps: 10
  batch_size: 4
  seq_len: 16
  grad_accum: 1
  checkpoint_every: 5
  eval_every: 5
  eval_batches: 2
  log_every: 1
  grad_clip: 1.0
  optimizer: {type: adamw, lr: 3.0e-3, beta1: 0.9, beta2: 0.95, eps: 1.0e-8, weight_decay: 0.1}
  schedule: )" +
         schedule +
         R"(
decode: [{type: top_k, k: 40}, {type: temperature, value: 0.8}]
)";
}

void CliTest::SetUp() {
  corpus_ = write("corpus.txt", english_corpus());
  tokens_ = path("corpus.tokens");
  config_ = write("tiny.yaml", tiny_config_yaml());
  const RunResult r = run_nnkit({"data", "prepare", corpus_.string(), "-o", tokens_.string()});
  ASSERT_EXIT_CODE(r, 0);
  ASSERT_TRUE(fs::exists(tokens_));
}

fs::path CliTest::write(const std::string& name, const std::string& text) const {
  const fs::path file = dir_ / name;
  write_text(file, text);
  return file;
}

void CliTest::train_ok(const fs::path& run, const std::vector<std::string>& extra,
                       const std::vector<std::string>& env) {
  std::vector<std::string> args = {"train",          config_.string(), "--data",
                                   tokens_.string(), "--out",          run.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run_nnkit(args, env, dir_.path());
  ASSERT_EXIT_CODE(r, 0);
}

}  // namespace nnkit::clitest
