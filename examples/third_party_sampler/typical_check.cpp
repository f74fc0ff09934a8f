// Purpose: checks of typical::filter on distributions worked out by hand. Exits non-zero on the
// first failure (run by `ctest` in this project's build folder).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "typical_filter.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

// Logits log(p_i), so that softmax gives back p.
std::vector<float> logits_of(const std::vector<double>& p) {
  std::vector<float> logits;
  for (double x : p) logits.push_back(static_cast<float>(std::log(x)));
  return logits;
}

// The ids that kept a finite logit.
std::vector<int> kept(const std::vector<float>& logits) {
  std::vector<int> ids;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isfinite(logits[i])) ids.push_back(static_cast<int>(i));
  }
  return ids;
}

}  // namespace

int main() {
  const float inf = std::numeric_limits<float>::infinity();
  {
    // Uniform: every surprisal equals the entropy; ties go to the lower id.
    std::vector<float> row = logits_of({0.25, 0.25, 0.25, 0.25});
    expect(typical::filter(row, 0.5) == 2, "uniform, mass 0.5 keeps 2");
    expect((kept(row) == std::vector<int>{0, 1}), "uniform keeps ids 0 and 1");
  }
  {
    // p = [0.7, 0.1, 0.1, 0.1]: H = 0.940; |-log 0.7 - H| = 0.584 < |-log 0.1 - H| = 1.362.
    std::vector<float> row = logits_of({0.7, 0.1, 0.1, 0.1});
    typical::filter(row, 0.5);
    expect((kept(row) == std::vector<int>{0}), "peaked, mass 0.5 keeps the mode only");
    row = logits_of({0.7, 0.1, 0.1, 0.1});
    typical::filter(row, 0.75);
    expect((kept(row) == std::vector<int>{0, 1}), "peaked, mass 0.75 keeps the mode and id 1");
  }
  {
    // p = [0.4, 0.05 x 12]: H = 2.164; the mode (surprisal 0.916, distance 1.248) is LESS typical
    // than the 0.05 tokens (surprisal 2.996, distance 0.832), so they are kept first.
    std::vector<double> p(13, 0.05);
    p[0] = 0.4;
    std::vector<float> row = logits_of(p);
    expect(typical::filter(row, 0.5) == 10, "mass 0.5 keeps ten 0.05-tokens");
    expect((kept(row) == std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}),
           "the mode is not in the typical set");
    row = logits_of(p);
    expect(typical::filter(row, 0.61) == 13, "mass 0.61 needs every token");
  }
  {
    // Already filtered (-inf) and NaN entries stay out; the rest is renormalised: [0.7, 0.1, 0.1,
    // 0.1] as above.
    std::vector<float> row = logits_of({0.7, 0.1, 0.1, 0.1});
    row.insert(row.begin() + 1, -inf);
    row.push_back(std::numeric_limits<float>::quiet_NaN());
    typical::filter(row, 0.75);
    expect((kept(row) == std::vector<int>{0, 2}), "filtered entries stay filtered");
    expect(std::isinf(row[5]) && row[5] < 0, "NaN becomes -inf");
  }
  {
    // At least one token, whatever the mass; mass 1 keeps every token.
    std::vector<float> row = logits_of({0.5, 0.3, 0.2});
    expect(typical::filter(row, 1e-9) == 1, "a tiny mass keeps one token");
    row = logits_of({0.5, 0.3, 0.2});
    expect(typical::filter(row, 1.0) == 3, "mass 1 keeps all");
  }
  {
    // Nothing finite: left alone. +inf entries take all the mass.
    std::vector<float> row = {-inf, -inf};
    expect(typical::filter(row, 0.9) == 0 && std::isinf(row[0]), "all -inf is left alone");
    row = {1.0f, inf, 2.0f, inf};
    expect(typical::filter(row, 0.9) == 2, "+inf entries are the typical set");
    expect((kept(row).empty() && row[1] == inf && row[3] == inf && row[0] == -inf),
           "+inf entries kept, others filtered");
  }
  if (failures == 0) std::printf("typical_check: all checks passed\n");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
