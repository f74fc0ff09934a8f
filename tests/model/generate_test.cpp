// Purpose: nnkit::generate end to end on a small random model with the byte tokenizer and sampler
// chains from the decode plugins: seeded reproducibility, greedy decoding equal to the argmax of
// full-forward logits, stop strings, length limits, the empty prompt, prompts that do not fit the
// context, left-padded batches and streaming.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "nnkit/error.h"
#include "nnkit/generator.h"
#include "nnkit/sampler.h"
#include "nnkit/tokenizer.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

using Chain = std::vector<std::shared_ptr<Sampler>>;

Chain greedy_chain() {
  return {create<Sampler>("decode", "greedy")};
}
Chain sampling_chain() {
  return {create<Sampler>("decode", "temperature", {{"value", "1.0"}})};
}

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ModelSpec spec;
    spec.vocab_size = 260;  // tokenizer/byte
    spec.hidden_dim = 32;
    spec.max_seq_len = 32;
    spec_ = spec;
    model_ = build_model(spec, 77);
    tokenizer_ = create<Tokenizer>("tokenizer", "byte");
  }

  GenerationResult run_one(const Chain& chain, const std::string& prompt,
                           const GenerateOptions& options) {
    std::vector<GenerationResult> results =
        generate(*model_, *tokenizer_, chain, {prompt}, options);
    EXPECT_EQ(results.size(), 1u);
    return results.front();
  }

  // The id the full forward pass ranks first after `context` (no cache).
  int32_t full_forward_argmax(const std::vector<int32_t>& context) {
    const int64_t n = int64_t(context.size());
    const std::vector<float> logits = host_values(*model_, model_->logits(context, 1, n));
    const auto last = logits.begin() + (n - 1) * spec_.vocab_size;
    return int32_t(std::max_element(last, last + spec_.vocab_size) - last);
  }

  void expect_greedy_matches_full_forward(const GenerationResult& result) {
    std::vector<int32_t> context = result.prompt_ids;
    for (size_t step = 0; step < result.generated_ids.size(); ++step) {
      EXPECT_EQ(result.generated_ids[step], full_forward_argmax(context)) << "step " << step;
      context.push_back(result.generated_ids[step]);
    }
    if (result.stop_reason == "eos") {
      EXPECT_EQ(full_forward_argmax(context), tokenizer_->eos_id());
    }
  }

  ModelSpec spec_;
  std::unique_ptr<Transformer> model_;
  std::shared_ptr<Tokenizer> tokenizer_;
};

TEST_F(GenerateTest, SameSeedGivesSameIdsAndDifferentSeedsDiffer) {
  GenerateOptions options;
  options.max_new_tokens = 12;
  options.seed = 1;
  const GenerationResult first = run_one(sampling_chain(), "hello", options);
  const GenerationResult again = run_one(sampling_chain(), "hello", options);
  EXPECT_EQ(first.generated_ids, again.generated_ids);
  EXPECT_EQ(first.text, again.text);
  options.seed = 2;
  const GenerationResult other = run_one(sampling_chain(), "hello", options);
  EXPECT_NE(first.generated_ids, other.generated_ids);
}

TEST_F(GenerateTest, GreedyEqualsArgmaxOfFullForwardLogitsStepByStep) {
  GenerateOptions options;
  options.max_new_tokens = 12;
  const GenerationResult result = run_one(greedy_chain(), "abc", options);
  const std::vector<int32_t> prompt = {tokenizer_->bos_id(), 'a' + 4, 'b' + 4, 'c' + 4};
  EXPECT_EQ(result.prompt_ids, prompt);
  EXPECT_FALSE(result.generated_ids.empty());
  expect_greedy_matches_full_forward(result);
  EXPECT_EQ(result.text, tokenizer_->decode(result.generated_ids));
}

TEST_F(GenerateTest, EmptyPromptStartsFromBos) {
  GenerateOptions options;
  options.max_new_tokens = 6;
  const GenerationResult result = run_one(greedy_chain(), "", options);
  EXPECT_EQ(result.prompt_ids, std::vector<int32_t>{tokenizer_->bos_id()});
  ASSERT_FALSE(result.generated_ids.empty());
  expect_greedy_matches_full_forward(result);
}

TEST_F(GenerateTest, StopStringTruncatesTheTextAndStreamingConcatenatesToIt) {
  GenerateOptions options;
  options.max_new_tokens = 16;
  const GenerationResult free_run = run_one(greedy_chain(), "xyz", options);
  ASSERT_EQ(free_run.stop_reason, "length");
  ASSERT_GE(free_run.text.size(), 8u) << "the random model should emit byte tokens";
  const std::string stop = free_run.text.substr(5, 2);
  const std::string expected = free_run.text.substr(0, free_run.text.find(stop));

  options.stop = {"never-appears", stop};
  std::string streamed;
  const std::vector<GenerationResult> results =
      generate(*model_, *tokenizer_, greedy_chain(), {"xyz"}, options,
               [&](size_t index, const std::string& piece) {
                 EXPECT_EQ(index, 0u);
                 streamed += piece;
               });
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].stop_reason, "stop");
  EXPECT_EQ(results[0].text, expected);
  EXPECT_EQ(streamed, results[0].text);
  EXPECT_EQ(results[0].text.find(stop), std::string::npos);
}

TEST_F(GenerateTest, StreamingPiecesConcatenateToTheFinalTextOfEverySequence) {
  GenerateOptions options;
  options.max_new_tokens = 10;
  options.seed = 4;
  std::map<size_t, std::string> streamed;
  std::map<size_t, int> pieces;
  const std::vector<GenerationResult> results =
      generate(*model_, *tokenizer_, sampling_chain(), {"one", "a longer one"}, options,
               [&](size_t index, const std::string& piece) {
                 streamed[index] += piece;
                 ++pieces[index];
               });
  ASSERT_EQ(results.size(), 2u);
  for (size_t b = 0; b < results.size(); ++b) {
    EXPECT_EQ(streamed[b], results[b].text) << "sequence " << b;
    if (results[b].text.size() > 1) {
      EXPECT_GT(pieces[b], 1) << "text arrives as it is made";
    }
  }
}

TEST_F(GenerateTest, MaxNewTokensIsRespectedWithStopReasonLength) {
  GenerateOptions options;
  options.seed = 3;
  for (int64_t limit : {1, 5}) {
    options.max_new_tokens = limit;
    const GenerationResult result = run_one(sampling_chain(), "abc", options);
    EXPECT_EQ(int64_t(result.generated_ids.size()), limit);
    EXPECT_EQ(result.stop_reason, "length");
  }
  options.max_new_tokens = 0;
  const GenerationResult none = run_one(sampling_chain(), "abc", options);
  EXPECT_TRUE(none.generated_ids.empty());
  EXPECT_TRUE(none.text.empty());
  EXPECT_EQ(none.stop_reason, "length");
}

TEST_F(GenerateTest, PromptLongerThanTheContextThrowsOrKeepsItsTail) {
  const std::string prompt(40, 'q');
  const std::string tail_marker = "TAIL";
  const std::string long_prompt = prompt + tail_marker;  // 44 bytes + BOS = 45 tokens
  GenerateOptions options;
  options.max_new_tokens = 4;
  try {
    run_one(greedy_chain(), long_prompt, options);
    ADD_FAILURE() << "a prompt of 45 tokens must not fit a context of 32";
  } catch (const UsageError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("45 tokens"), std::string::npos) << message;
    EXPECT_NE(message.find("context of 32"), std::string::npos) << message;
    EXPECT_NE(message.find("4 new tokens"), std::string::npos) << message;
  }

  options.truncate_prompt = true;
  const GenerationResult result = run_one(greedy_chain(), long_prompt, options);
  ASSERT_EQ(result.prompt_ids.size(), 32u - 4u);  // the context minus the new tokens
  EXPECT_EQ(result.prompt_ids.front(), tokenizer_->bos_id());
  const std::vector<int32_t> body = tokenizer_->encode(long_prompt);
  EXPECT_TRUE(std::equal(result.prompt_ids.begin() + 1, result.prompt_ids.end(),
                         body.end() - int64_t(result.prompt_ids.size() - 1)));
  EXPECT_EQ(result.generated_ids.size(), 4u);
  expect_greedy_matches_full_forward(result);
}

TEST_F(GenerateTest, MaxNewTokensThatFillTheContextThrow) {
  GenerateOptions options;
  options.max_new_tokens = 32;  // == model.max_seq_len: no room for BOS
  EXPECT_THROW(run_one(greedy_chain(), "", options), UsageError);
  options.context_limit = 16;
  options.max_new_tokens = 20;
  EXPECT_THROW(run_one(greedy_chain(), "", options), UsageError);
  options.max_new_tokens = 15;  // BOS + 15 fits 16
  EXPECT_EQ(run_one(greedy_chain(), "", options).generated_ids.size(), 15u);
}

TEST_F(GenerateTest, LeftPaddedBatchGivesEachPromptItsOwnResult) {
  GenerateOptions options;
  options.max_new_tokens = 8;
  options.seed = 5;
  const std::vector<std::string> prompts = {"ab", "a much longer prompt"};
  // Greedy: a prompt's continuation does not depend on its batch neighbours or padding.
  const std::vector<GenerationResult> batch =
      generate(*model_, *tokenizer_, greedy_chain(), prompts, options);
  ASSERT_EQ(batch.size(), 2u);
  for (size_t b = 0; b < prompts.size(); ++b) {
    EXPECT_EQ(batch[b].generated_ids, run_one(greedy_chain(), prompts[b], options).generated_ids)
        << "prompt " << b;
  }
  // Sampling: prompt i draws from a generator seeded by (seed, i), so prompt 0 alone matches.
  const std::vector<GenerationResult> sampled =
      generate(*model_, *tokenizer_, sampling_chain(), prompts, options);
  EXPECT_EQ(sampled[0].generated_ids, run_one(sampling_chain(), prompts[0], options).generated_ids);
}

}  // namespace
}  // namespace nnkit::test
