#include "trainer/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "trainer/version.h"

namespace sy {

namespace {

using Json = nlohmann::ordered_json;

// Appends `value` as JsonLine lays it out: nlohmann's text for every scalar, and a space after
// each ',' and ':' between the items of an array or object.
void append_spaced(std::string& out, const Json& value) {
  if (value.is_array()) {
    out += '[';
    for (size_t i = 0; i < value.size(); ++i) {
      if (i) out += ", ";
      append_spaced(out, value[i]);
    }
    out += ']';
  } else if (value.is_object()) {
    out += '{';
    bool first = true;
    for (const auto& [name, item] : value.items()) {
      if (!first) out += ", ";
      first = false;
      append_spaced(out, Json(name));
      out += ": ";
      append_spaced(out, item);
    }
    out += '}';
  } else {
    // A path or config name need not be UTF-8: replaced rather than refused (dump's default).
    out += value.dump(-1, ' ', false, Json::error_handler_t::replace);
  }
}

}  // namespace

void JsonLine::key(const std::string& name) {
  if (!body_.empty()) body_ += ", ";
  append_spaced(body_, Json(name));
  body_ += ": ";
}

JsonLine& JsonLine::add(const std::string& name, double value) {
  key(name);
  append_spaced(body_, Json(value));
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, int64_t value) {
  key(name);
  append_spaced(body_, Json(value));
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, const std::string& value) {
  key(name);
  append_spaced(body_, Json(value));
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, const std::vector<double>& value) {
  key(name);
  append_spaced(body_, Json(value));
  return *this;
}

JsonLine& JsonLine::add(const std::string& name, const std::vector<std::vector<double>>& value) {
  key(name);
  append_spaced(body_, Json(value));
  return *this;
}

JsonLine& JsonLine::add_fixed(const std::string& name, double value, int decimals) {
  key(name);
  if (!std::isfinite(value)) {
    body_ += "null";
    return *this;
  }
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  body_ += text;
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
  record.add("time", utc_timestamp(std::chrono::system_clock::now()))
      .add_fixed("elapsed_s", elapsed, 3);  // milliseconds: what the clocks resolve
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
  if (m.lm_targets >= 0) out.emplace_back("lm_targets", static_cast<double>(m.lm_targets));
  if (m.epoch >= 0) out.emplace_back("epoch", m.epoch);
  for (const auto& [key, epochs] : m.source_epochs) out.emplace_back(key, epochs);
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
  line.add("peak_memory_bytes", m.peak_memory_bytes);
  if (m.lm_targets >= 0) line.add("lm_targets", m.lm_targets);
  if (m.epoch >= 0) line.add("epoch", m.epoch);
  for (const auto& [key, epochs] : m.source_epochs) line.add(key, epochs);
  write_record(line);
}

void MetricsLog::write_eval(int64_t step, double val_loss) {
  write_tensorboard(step, {{"val_loss", val_loss}});
  JsonLine line;
  write_record(line.add("step", step).add("val_loss", val_loss));
}

void MetricsLog::write_eval(int64_t step, double val_loss, const std::string& unit,
                            double unit_value, int64_t val_tokens) {
  write_eval(step, val_loss, unit, unit_value, val_tokens, {});
}

void MetricsLog::write_eval(int64_t step, double val_loss, const std::string& unit,
                            double unit_value, int64_t val_tokens,
                            const std::vector<std::pair<std::string, double>>& more) {
  std::vector<std::pair<std::string, double>> scalars = {
      {"val_loss", val_loss},
      {"val_" + unit, unit_value},
      {"val_tokens", static_cast<double>(val_tokens)}};
  scalars.insert(scalars.end(), more.begin(), more.end());
  write_tensorboard(step, scalars);
  JsonLine line;
  line.add("step", step)
      .add("val_loss", val_loss)
      .add("val_" + unit, unit_value)
      .add("val_tokens", val_tokens);
  for (const auto& [key, value] : more) line.add(key, value);
  write_record(line);
}

// ---- reading metrics.jsonl ---------------------------------------------------------------------

namespace {

// A problem with one line; read_metrics prefixes "<path>:<line>: ".
struct LineError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// How an error message shows a value: a list, an object, or its text in quotes (a string
// without its JSON quotes: "got 'low'").
std::string describe(const Json& value) {
  if (value.is_array()) return "a list";
  if (value.is_object()) return "an object";
  if (value.is_string()) return "'" + value.get<std::string>() + "'";
  return "'" + value.dump(-1, ' ', false, Json::error_handler_t::replace) + "'";
}

// A number, or NaN for null (the writer's spelling of a non-finite value). A quoted number is a
// JSON string, not a number. `index` >= 0 names an item of the list under `key`: the name is
// built only for an error, since the lists are long.
double number(const Json& value, const std::string& key, int64_t index = -1) {
  if (value.is_number()) return value.get<double>();
  if (value.is_null()) return StepRecord::kAbsent;
  throw LineError(key + (index >= 0 ? "[" + std::to_string(index) + "]" : "") +
                  ": expected a number or null, got " + describe(value));
}

// The number under `key`, NaN when the line lacks it.
double optional_number(const Json& line, const char* key) {
  const auto found = line.find(key);
  return found == line.end() ? StepRecord::kAbsent : number(*found, key);
}

std::vector<double> list_of_numbers(const Json& list, const std::string& key) {
  if (!list.is_array()) throw LineError(key + ": expected a list, got " + describe(list));
  std::vector<double> values;
  values.reserve(list.size());
  for (const Json& item : list)
    values.push_back(number(item, key, static_cast<int64_t>(values.size())));
  return values;
}

// The list of numbers under `key` ([MoE layer]); absent or null gives an empty list.
std::vector<double> numbers(const Json& line, const char* key) {
  const auto found = line.find(key);
  if (found == line.end() || found->is_null()) return {};
  return list_of_numbers(*found, key);
}

// The list of lists of numbers under `key` ([MoE layer][expert]); absent or null gives an empty
// list.
std::vector<std::vector<double>> matrix(const Json& line, const char* key) {
  const auto found = line.find(key);
  if (found == line.end() || found->is_null()) return {};
  if (!found->is_array())
    throw LineError(std::string(key) + ": expected a list of lists, got " + describe(*found));
  std::vector<std::vector<double>> rows;
  for (const Json& row : *found) {
    std::string row_key = key;
    row_key += '[' + std::to_string(rows.size()) + ']';
    rows.push_back(list_of_numbers(row, row_key));
  }
  return rows;
}

// The line as a JSON object. nlohmann's message, "[json.exception.parse_error.101] parse error
// at line 1, column 41: syntax error ...", is kept from the column on.
Json parse_line(const std::string& text) {
  Json line;
  try {
    line = Json::parse(text);
  } catch (const Json::exception& error) {  // parse_error, or out_of_range for 1e999
    std::string what = error.what();
    const size_t column = what.find("column "), tag = what.find("] ");
    if (column != std::string::npos)
      what = " at " + what.substr(column);
    else
      what = ": " + (tag == std::string::npos ? what : what.substr(tag + 2));
    throw LineError("malformed JSON" + what);
  }
  if (!line.is_object()) throw LineError("expected a JSON object, got " + describe(line));
  return line;
}

int64_t step_of(const Json& line) {
  const auto found = line.find("step");
  if (found == line.end()) throw LineError("no \"step\" key");
  if (found->is_number_integer() &&
      (found->is_number_unsigned() ? found->get<uint64_t>() <= INT64_MAX
                                   : found->get<int64_t>() >= 0))
    return found->get<int64_t>();
  throw LineError("step: expected a non-negative integer, got " + describe(*found));
}

StepRecord parse_step(const Json& line, int64_t step) {
  StepRecord r;
  r.step = step;
  r.loss = number(line.at("loss"), "loss");
  r.lm_loss = optional_number(line, "lm_loss");
  r.aux_loss = optional_number(line, "aux_loss");
  r.z_loss = optional_number(line, "z_loss");
  r.lr = optional_number(line, "lr");
  r.grad_norm = optional_number(line, "grad_norm");
  r.tokens_per_s = optional_number(line, "tokens_per_s");
  r.dropped_frac = optional_number(line, "dropped_frac");
  r.peak_memory_bytes = optional_number(line, "peak_memory_bytes");
  r.has_rerouted_frac = line.contains("rerouted_frac");
  r.rerouted_frac = optional_number(line, "rerouted_frac");
  r.expert_load = matrix(line, "expert_load");
  r.expert_bias = matrix(line, "expert_bias");
  r.load_cv = numbers(line, "load_cv");
  r.load_max_mean = numbers(line, "load_max_mean");
  r.layer_dropped_frac = numbers(line, "layer_dropped_frac");
  r.router_entropy = numbers(line, "router_entropy");
  return r;
}

EvalRecord parse_eval(const Json& line, int64_t step) {
  EvalRecord e;
  e.step = step;
  e.val_loss = number(line.at("val_loss"), "val_loss");
  const std::string by_file = "val_loss/";
  for (const auto& [key, value] : line.items())
    if (key.rfind(by_file, 0) == 0 && key.size() > by_file.size())
      e.val_loss_by_file.emplace_back(key.substr(by_file.size()), number(value, key.c_str()));
  e.choice_accuracy = optional_number(line, "choice_accuracy");
  e.choice_accuracy_norm = optional_number(line, "choice_accuracy_norm");
  const auto tokens = line.find("val_tokens");
  if (tokens != line.end()) {
    if (!tokens->is_number_integer())
      throw LineError("val_tokens: expected an integer, got " + describe(*tokens));
    e.val_tokens = tokens->get<int64_t>();
  }
  return e;
}

// The MoE layer and expert counts are fixed for a run (resume refuses to change them): the first
// line that shows each sets it, and every later line must agree.
struct Shape {
  int64_t layers = -1, experts = -1;
  int64_t layers_line = 0, experts_line = 0;

  void check_layers(size_t count, const std::string& key, int64_t line) {
    if (count == 0) return;
    if (layers < 0) {
      layers = static_cast<int64_t>(count);
      layers_line = line;
    } else if (static_cast<int64_t>(count) != layers) {
      throw LineError(key + " has " + std::to_string(count) + " MoE layers, line " +
                      std::to_string(layers_line) + " had " + std::to_string(layers));
    }
  }
  void check_experts(const std::vector<std::vector<double>>& rows, const std::string& key,
                     int64_t line) {
    check_layers(rows.size(), key, line);
    for (size_t l = 0; l < rows.size(); ++l) {
      const int64_t count = static_cast<int64_t>(rows[l].size());
      if (experts < 0) {
        experts = count;
        experts_line = line;
      } else if (count != experts) {
        throw LineError(key + "[" + std::to_string(l) + "] has " + std::to_string(count) +
                        " experts, line " + std::to_string(experts_line) + " had " +
                        std::to_string(experts));
      }
    }
  }
  void check(const StepRecord& r, int64_t line) {
    check_experts(r.expert_load, "expert_load", line);
    check_experts(r.expert_bias, "expert_bias", line);
    check_layers(r.load_cv.size(), "load_cv", line);
    check_layers(r.load_max_mean.size(), "load_max_mean", line);
    check_layers(r.layer_dropped_frac.size(), "layer_dropped_frac", line);
    check_layers(r.router_entropy.size(), "router_entropy", line);
  }
};

bool blank(const std::string& line) { return line.find_first_not_of(" \t\r") == std::string::npos; }

}  // namespace

MetricsRecords read_metrics(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  MetricsRecords records;
  Shape shape;
  std::string text;
  while (std::getline(in, text)) {
    const int64_t line_number = ++records.lines;
    if (blank(text)) continue;
    try {
      const Json line = parse_line(text);
      const int64_t step = step_of(line);
      const bool is_step = line.contains("loss"), is_eval = line.contains("val_loss");
      if (!is_step && !is_eval)
        throw LineError("neither \"loss\" (a step line) nor \"val_loss\" (an eval line)");
      if (is_step) {
        records.steps.push_back(parse_step(line, step));
        shape.check(records.steps.back(), line_number);
      }
      if (is_eval) records.evals.push_back(parse_eval(line, step));
    } catch (const LineError& error) {
      throw std::runtime_error(path + ":" + std::to_string(line_number) + ": " + error.what());
    }
  }
  if (in.bad()) throw std::runtime_error(path + ": read failed");
  records.moe_layers = std::max<int64_t>(shape.layers, 0);
  records.experts = std::max<int64_t>(shape.experts, 0);
  return records;
}

std::vector<std::string> truncate_metrics_after(const std::string& path, int64_t last_step) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return {};
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::vector<std::string> notes;
  std::ostringstream kept;
  std::string text;
  for (int64_t line_number = 1; std::getline(in, text); ++line_number) {
    if (blank(text)) continue;
    try {
      if (step_of(parse_line(text)) > last_step) continue;
    } catch (const LineError& problem) {
      notes.push_back(path + ":" + std::to_string(line_number) + ": " + problem.what() +
                      ": dropped (a line torn by a crash?)");
      continue;
    }
    kept << text << '\n';
  }
  if (in.bad()) throw std::runtime_error(path + ": read failed");
  in.close();
  const std::string temporary = path + ".tmp";
  std::ofstream out(temporary, std::ios::trunc);
  out << kept.str();
  out.close();
  if (!out) throw std::runtime_error(temporary + ": cannot write");
  std::filesystem::rename(temporary, path, error);
  if (error) throw std::runtime_error(path + ": cannot replace: " + error.message());
  return notes;
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
