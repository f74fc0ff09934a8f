// Purpose: `nnkit plot RUN_DIR [-o FILE]`: an SVG of training and validation loss against step,
// drawn from RUN_DIR/metrics.jsonl, openable in any browser.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "common.h"
#include "nnkit/error.h"
#include "nnkit/io/atomic_file.h"

namespace nnkit::cli {

namespace {

struct Series {
  std::vector<double> steps, values;
};

std::string polyline(const Series& s, double x0, double x1, double y0, double y1, double w,
                     double h, double pad) {
  std::ostringstream out;
  for (size_t i = 0; i < s.steps.size(); ++i) {
    const double x = pad + (s.steps[i] - x0) / std::max(x1 - x0, 1e-9) * (w - 2 * pad);
    const double y = h - pad - (s.values[i] - y0) / std::max(y1 - y0, 1e-9) * (h - 2 * pad);
    out << (i ? " " : "") << x << "," << y;
  }
  return out.str();
}

}  // namespace

int run_plot(const Args& raw) {
  CommandSpec spec{"plot",
                   "nnkit plot RUN_DIR [-o FILE]",
                   "Writes an SVG loss curve (training and validation loss by step).",
                   {{"--output", "FILE", "SVG file (default: RUN_DIR/loss.svg)", false, "-o"}},
                   "RUN_DIR  a training run directory (holds metrics.jsonl)"};
  const std::optional<ParsedArgs> parsed = parse_command(spec, raw);
  if (!parsed) return 0;  // --help was printed
  const ParsedArgs& args = *parsed;
  if (args.positionals().size() != 1) throw UsageError("cli", "`nnkit plot` needs one RUN_DIR");
  const std::filesystem::path run = args.positionals()[0];
  const std::filesystem::path metrics = run / "metrics.jsonl";
  std::ifstream in(metrics);
  if (!in)
    throw IoError("plot",
                  metrics.string() + " does not exist; is " + run.string() + " a run directory?");
  Series train, val;
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut short by a kill
    }
    if (!j.contains("step")) continue;
    const double step = j["step"].get<double>();
    if (j.contains("loss") && j["loss"].is_number()) {
      train.steps.push_back(step);
      train.values.push_back(j["loss"].get<double>());
    }
    if (j.contains("val_loss") && j["val_loss"].is_number()) {
      val.steps.push_back(step);
      val.values.push_back(j["val_loss"].get<double>());
    }
  }
  if (train.steps.empty()) throw IoError("plot", metrics.string() + " holds no training steps yet");
  double x1 = train.steps.back(), y0 = 1e300, y1 = -1e300;
  for (const Series* s : {&train, &val}) {
    for (double v : s->values) {
      if (std::isfinite(v)) y0 = std::min(y0, v), y1 = std::max(y1, v);
    }
  }
  y0 = std::floor(y0 * 2) / 2;
  y1 = std::ceil(y1 * 2) / 2;
  const double w = 800, h = 480, pad = 60, x0 = 0;
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h
      << "' font-family='sans-serif' font-size='13'>\n<rect width='100%' height='100%' "
         "fill='white'/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double v = y0 + (y1 - y0) * i / 5;
    const double y = h - pad - (h - 2 * pad) * i / 5;
    svg << "<line x1='" << pad << "' x2='" << w - pad << "' y1='" << y << "' y2='" << y
        << "' stroke='#ddd'/><text x='" << pad - 8 << "' y='" << y + 4 << "' text-anchor='end'>"
        << std::round(v * 100) / 100 << "</text>\n";
    const double xs = x0 + (x1 - x0) * i / 5;
    const double x = pad + (w - 2 * pad) * i / 5;
    svg << "<text x='" << x << "' y='" << h - pad + 18 << "' text-anchor='middle'>"
        << static_cast<long long>(xs) << "</text>\n";
  }
  svg << "<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='"
      << polyline(train, x0, x1, y0, y1, w, h, pad) << "'/>\n";
  if (!val.steps.empty()) {
    svg << "<polyline fill='none' stroke='#d62728' stroke-width='2' points='"
        << polyline(val, x0, x1, y0, y1, w, h, pad) << "'/>\n";
  }
  svg << "<text x='" << w / 2 << "' y='" << h - 15 << "' text-anchor='middle'>step</text>\n"
      << "<text x='18' y='" << h / 2 << "' transform='rotate(-90 18 " << h / 2
      << ")' text-anchor='middle'>loss (nats/token)</text>\n"
      << "<text x='" << w / 2 << "' y='30' text-anchor='middle' font-size='16'>" << run.string()
      << "</text>\n<text x='" << w - pad - 150 << "' y='" << pad
      << "' fill='#1f77b4'>train loss</text>\n"
      << "<text x='" << w - pad - 150 << "' y='" << pad + 18
      << "' fill='#d62728'>validation loss</text>\n"
      << "</svg>\n";
  const std::filesystem::path out = args.get_or("--output", (run / "loss.svg").string());
  write_file_atomic(out, svg.str());
  std::cout << "wrote " << out.string() << "\n";
  return 0;
}

}  // namespace nnkit::cli
