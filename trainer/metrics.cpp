#include "trainer/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <ctime>
#include <filesystem>
#include <stdexcept>

#include "trainer/version.h"

namespace sy {

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

std::string json_string(const std::string& value) {
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

void JsonLine::key(const std::string& name) {
  if (!body_.empty()) body_ += ", ";
  body_ += json_string(name) + ": ";
}

JsonLine& JsonLine::add(const std::string& name, double value) {
  key(name);
  body_ += json_number(value);
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, int64_t value) {
  key(name);
  body_ += std::to_string(value);
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, const std::string& value) {
  key(name);
  body_ += json_string(value);
  return *this;
}

namespace {
std::string json_array(const std::vector<double>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + json_number(values[i]);
  return out + "]";
}
}  // namespace

JsonLine& JsonLine::add(const std::string& name, const std::vector<double>& value) {
  key(name);
  body_ += json_array(value);
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, const std::vector<std::vector<double>>& value) {
  key(name);
  body_ += "[";
  for (size_t i = 0; i < value.size(); ++i) body_ += (i ? ", " : "") + json_array(value[i]);
  body_ += "]";
  return *this;
}

JsonLine& JsonLine::add_json(const std::string& name, const std::string& json) {
  key(name);
  body_ += json;
  return *this;
}

std::string utc_timestamp(std::chrono::system_clock::time_point when) {
  const int64_t ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(when.time_since_epoch()).count();
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char date[32], text[48];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &utc);
  std::snprintf(text, sizeof text, "%s.%03dZ", date, static_cast<int>(ms % 1000));
  return text;
}

LoadBalance load_balance(const std::vector<double>& load) {
  if (load.empty()) return {};
  double sum = 0, largest = 0;
  for (double x : load) {
    sum += x;
    largest = std::max(largest, x);
  }
  const double mean = sum / static_cast<double>(load.size());
  if (mean <= 0) return {};
  double squares = 0;
  for (double x : load) squares += (x - mean) * (x - mean);
  return {std::sqrt(squares / static_cast<double>(load.size())) / mean, largest / mean};
}

MetricsLog::MetricsLog(const std::string& path, bool append)
    : path_(path), opened_(std::chrono::steady_clock::now()) {
  file_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!file_) throw std::runtime_error(path + ": cannot open for writing");
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write_record(JsonLine& record) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_).count();
  char seconds[32];  // milliseconds are what the clocks resolve; 17 digits would be noise
  std::snprintf(seconds, sizeof seconds, "%.3f", elapsed);
  record.add("time", utc_timestamp(std::chrono::system_clock::now()))
      .add_json("elapsed_s", seconds);
  // Flushed per line so that a crash leaves every completed record readable.
  if (std::fprintf(file_, "%s\n", record.str().c_str()) < 0 || std::fflush(file_) != 0)
    throw std::runtime_error(path_ + ": write failed");
}

void MetricsLog::add_tensorboard(const std::string& dir) {
  tensorboard_ = std::make_unique<TensorBoardWriter>(dir);
}

void MetricsLog::write_tensorboard(int64_t step,
                                   const std::vector<std::pair<std::string, double>>& scalars) {
  if (tensorboard_) tensorboard_->write_scalars(step, scalars);
}

namespace {
// The TensorBoard scalars of one step record: the same keys and values as its JSON line.
std::vector<std::pair<std::string, double>> step_scalars(const StepMetrics& m) {
  std::vector<std::pair<std::string, double>> out = {
      {"loss", m.loss},
      {"lm_loss", m.lm_loss},
      {"aux_loss", m.aux_loss},
      {"z_loss", m.z_loss},
      {"lr", m.lr},
      {"grad_norm", m.grad_norm},
      {"tokens_per_s", m.tokens_per_s},
      {"dropped_frac", m.dropped_frac},
      {"rerouted_frac", m.rerouted_frac}};
  const auto per_layer = [&](const std::string& key, const std::vector<double>& values) {
    for (size_t l = 0; l < values.size(); ++l)
      out.emplace_back(key + "/layer" + std::to_string(l), values[l]);
  };
  const auto per_expert = [&](const std::string& key,
                              const std::vector<std::vector<double>>& values) {
    for (size_t l = 0; l < values.size(); ++l)
      for (size_t e = 0; e < values[l].size(); ++e)
        out.emplace_back(key + "/layer" + std::to_string(l) + "/expert" + std::to_string(e),
                         values[l][e]);
  };
  per_expert("expert_load", m.expert_load);
  per_layer("load_cv", m.load_cv);
  per_layer("load_max_mean", m.load_max_mean);
  per_layer("layer_dropped_frac", m.layer_dropped_frac);
  per_layer("router_entropy", m.router_entropy);
  per_expert("expert_bias", m.expert_bias);
  out.emplace_back("peak_memory_bytes", static_cast<double>(m.peak_memory_bytes));
  return out;
}
}  // namespace

void MetricsLog::write_step(const StepMetrics& m) {
  write_tensorboard(m.step, step_scalars(m));
  JsonLine line;
  line.add("step", m.step)
      .add("loss", m.loss)
      .add("lm_loss", m.lm_loss)
      .add("aux_loss", m.aux_loss)
      .add("z_loss", m.z_loss)
      .add("lr", m.lr)
      .add("grad_norm", m.grad_norm)
      .add("tokens_per_s", m.tokens_per_s)
      .add("dropped_frac", m.dropped_frac)
      .add("rerouted_frac", m.rerouted_frac)
      .add("expert_load", m.expert_load)
      .add("load_cv", m.load_cv)
      .add("load_max_mean", m.load_max_mean)
      .add("layer_dropped_frac", m.layer_dropped_frac)
      .add("router_entropy", m.router_entropy);
  if (!m.expert_bias.empty()) line.add("expert_bias", m.expert_bias);
  write_record(line.add("peak_memory_bytes", m.peak_memory_bytes));
}

void MetricsLog::write_eval(int64_t step, double val_loss) {
  write_tensorboard(step, {{"val_loss", val_loss}});
  JsonLine line;
  write_record(line.add("step", step).add("val_loss", val_loss));
}

void MetricsLog::write_eval(int64_t step, double val_loss, const std::string& unit,
                            double unit_value, int64_t val_tokens) {
  write_tensorboard(step, {{"val_loss", val_loss},
                           {"val_" + unit, unit_value},
                           {"val_tokens", static_cast<double>(val_tokens)}});
  JsonLine line;
  write_record(line.add("step", step)
                   .add("val_loss", val_loss)
                   .add("val_" + unit, unit_value)
                   .add("val_tokens", val_tokens));
}

RunConsole::~RunConsole() {
  if (log_) std::fclose(log_);
}

void RunConsole::open_log(const std::string& path) {
  if (!enabled_ || log_) return;
  log_ = std::fopen(path.c_str(), "a");
  if (!log_) throw std::runtime_error(path + ": cannot open for appending");
  log_path_ = path;
  const std::string earlier = std::move(before_open_);
  before_open_.clear();
  // Runs append to one log (a resume continues it): a header line tells them apart.
  log("---- switchyard " SY_VERSION " (git " SY_GIT_COMMIT ") train\n" + earlier);
}

void RunConsole::log(const std::string& text) {
  if (!log_) {
    before_open_ += text;
    return;
  }
  // Every line gets the time it was printed; a line printed in pieces gets it once.
  std::string stamped;
  const std::string stamp = utc_timestamp(std::chrono::system_clock::now()) + " ";
  for (char c : text) {
    if (at_line_start_) stamped += stamp;
    stamped += c;
    at_line_start_ = c == '\n';
  }
  // Flushed per print, like metrics.jsonl: a crash leaves everything printed before it.
  if (std::fputs(stamped.c_str(), log_) < 0 || std::fflush(log_) != 0)
    throw std::runtime_error(log_path_ + ": write failed");
}

namespace {
std::string vformat(const char* format, std::va_list args) {
  std::va_list measure;
  va_copy(measure, args);
  const int length = std::vsnprintf(nullptr, 0, format, measure);
  va_end(measure);
  if (length <= 0) return "";
  std::string text(static_cast<size_t>(length) + 1, '\0');
  std::vsnprintf(text.data(), text.size(), format, args);
  text.resize(static_cast<size_t>(length));
  return text;
}
}  // namespace

void RunConsole::print(const char* format, ...) {
  if (!enabled_) return;
  std::va_list args;
  va_start(args, format);
  const std::string text = vformat(format, args);
  va_end(args);
  std::fputs(text.c_str(), stdout);
  log(text);
}

void RunConsole::write(std::FILE* stream, const char* format, ...) {
  if (!enabled_) return;
  std::va_list args;
  va_start(args, format);
  const std::string text = vformat(format, args);
  va_end(args);
  std::fputs(text.c_str(), stream);
  log(text);
}

void RunConsole::append_if_exists(const std::string& path, const std::string& line) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) return;
  if (std::FILE* file = std::fopen(path.c_str(), "a")) {
    std::fprintf(file, "%s %s\n", utc_timestamp(std::chrono::system_clock::now()).c_str(),
                 line.c_str());
    std::fclose(file);
  }
}

namespace {
std::string format_duration(double seconds) {
  const int64_t total = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  char text[32];
  if (total >= 3600)
    std::snprintf(text, sizeof text, "%lldh%02lldm", static_cast<long long>(total / 3600),
                  static_cast<long long>(total % 3600 / 60));
  else
    std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(total / 60),
                  static_cast<long long>(total % 60));
  return text;
}
}  // namespace

// The balance of each MoE layer at a glance: "cv/max 0.12/1.3 0.40/2.1"; beyond four layers,
// the worst layer only.
std::string balance_summary(const StepMetrics& m) {
  const size_t layers = m.load_cv.size();
  if (layers == 0) return "";
  char text[64];
  std::string out = " | cv/max";
  if (layers > 4) {
    size_t worst = 0;
    for (size_t l = 1; l < layers; ++l)
      if (m.load_cv[l] > m.load_cv[worst]) worst = l;
    std::snprintf(text, sizeof text, " worst L%zu %.2f/%.1f", worst, m.load_cv[worst],
                  m.load_max_mean[worst]);
    return out + text;
  }
  for (size_t l = 0; l < layers; ++l) {
    std::snprintf(text, sizeof text, " %.2f/%.1f", m.load_cv[l], m.load_max_mean[l]);
    out += text;
  }
  return out;
}

std::string progress_line(const StepMetrics& m, int64_t total_steps) {
  char text[360];
  std::snprintf(text, sizeof text,
                "step %6lld/%lld | loss %.4f (lm %.4f aux %.4f z %.4f) | lr %.2e | gnorm %.3f | "
                "%.0f tok/s | dropped %.2f%%",
                static_cast<long long>(m.step), static_cast<long long>(total_steps), m.loss,
                m.lm_loss, m.aux_loss, m.z_loss, m.lr, m.grad_norm, m.tokens_per_s,
                100.0 * m.dropped_frac);
  std::string line = text;
  if (m.rerouted_frac > 0) {
    std::snprintf(text, sizeof text, " (rerouted %.2f%%)", 100.0 * m.rerouted_frac);
    line += text;
  }
  line += balance_summary(m) + " | eta " + format_duration(m.eta_s);
  if (m.peak_memory_bytes > 0) {
    std::snprintf(text, sizeof text, " | mem %.2f GiB", m.peak_memory_bytes / 1073741824.0);
    line += text;
  }
  return line;
}

}  // namespace sy
