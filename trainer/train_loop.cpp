#include "trainer/train_loop.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "data/sampler.h"
#include "data/token_file.h"
#include "optim/clip.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "trainer/evaluate.h"
#include "trainer/metrics.h"
#include "trainer/model_card.h"
#include "trainer/session.h"

namespace sy {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void write_resolved_config(const Config& config, const std::filesystem::path& run_dir) {
  const std::filesystem::path path = run_dir / "config.yaml";
  std::ofstream out(path);
  out << config_to_yaml(config);
  if (!out) throw std::runtime_error(path.string() + ": cannot write the resolved config");
}

TokenData load_tokens(const Config& config) {
  TokenData data = read_token_file(config.data.path);
  if (data.vocab_size > config.model.vocab_size)
    throw std::runtime_error(config.data.path + ": vocab_size " + std::to_string(data.vocab_size) +
                             " exceeds model.vocab_size " +
                             std::to_string(config.model.vocab_size));
  return data;
}

// Sums the per-group statistics of one step into its metrics (means over groups).
struct StepAccumulator {
  int64_t groups = 0, assignments = 0, dropped = 0, tokens = 0;
  double loss = 0, lm_loss = 0, aux_loss = 0, z_loss = 0;
  std::vector<std::vector<double>> load_counts;

  void add(const GroupStats& stats) {
    ++groups;
    tokens += stats.tokens;
    loss += stats.loss;
    lm_loss += stats.lm_loss;
    aux_loss += stats.aux_loss;
    z_loss += stats.z_loss;
    assignments += stats.assignments;
    dropped += stats.dropped;
    load_counts.resize(stats.assignments_per_expert.size());
    for (size_t l = 0; l < load_counts.size(); ++l) {
      load_counts[l].resize(stats.assignments_per_expert[l].size());
      for (size_t e = 0; e < load_counts[l].size(); ++e)
        load_counts[l][e] += stats.assignments_per_expert[l][e];
    }
  }

  void finish(StepMetrics& m) const {
    m.loss = loss / groups;
    m.lm_loss = lm_loss / groups;
    m.aux_loss = aux_loss / groups;
    m.z_loss = z_loss / groups;
    m.dropped_frac = assignments ? static_cast<double>(dropped) / assignments : 0.0;
    m.expert_load = load_counts;
    for (std::vector<double>& layer : m.expert_load) {
      double total = 0;
      for (double count : layer) total += count;
      for (double& count : layer) count = total > 0 ? count / total : 0.0;
    }
  }
};

}  // namespace

TrainSummary train(const Config& config, const TrainOptions& options) {
  const std::filesystem::path run_dir = config.run.dir;
  std::filesystem::create_directories(run_dir);
  write_resolved_config(config, run_dir);

  const TokenData data = load_tokens(config);
  const StepSampler sampler(data.train, config.model.seq_len, config.seed);
  if (config.eval.batches > 0 &&
      max_validation_batches(data.val.size(), config.train.micro_batch_size,
                             config.model.seq_len) < config.eval.batches)
    throw std::runtime_error(config.data.path + ": eval.batches " +
                             std::to_string(config.eval.batches) + " needs more validation tokens than the " +
                             std::to_string(data.val.size()) + " it has");

  ModelSession session = make_model_session(config);
  Backend& backend = *session.backend;
  Transformer& model = *session.model;
  std::vector<Param*> params = model.params();
  std::unique_ptr<Optimizer> optimizer = make_optimizer(config.train);
  MetricsLog metrics_log((run_dir / "metrics.jsonl").string());

  if (options.print) {
    std::printf("%s", format_model_card(config, make_model_card(config)).c_str());
    std::printf("  run dir %s, data %s (%zu train / %zu val tokens)\n", run_dir.c_str(),
                config.data.path.c_str(), data.train.size(), data.val.size());
    std::fflush(stdout);
  }

  const TrainConfig& tc = config.train;
  const int64_t world = 1, rank = 0;
  const int64_t B = tc.micro_batch_size, S = config.model.seq_len;
  const double loss_scale = 1.0 / static_cast<double>(world * tc.grad_accum_steps);
  std::vector<int32_t> inputs(B * S), targets(B * S);

  TrainSummary summary;
  const Clock::time_point run_start = Clock::now();
  Clock::time_point interval_start = run_start;
  int64_t interval_tokens = 0;
  for (int64_t step = 0; step < tc.steps; ++step) {
    model.zero_grads();
    StepAccumulator acc;
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      const int64_t group = micro * world + rank;  // SPEC.md section 3
      sampler.group(step, group, B, inputs.data(), targets.data());
      acc.add(model.forward_backward(inputs, targets, B, true, loss_scale));
    }
    const double grad_norm = std::sqrt(global_grad_norm_squared(backend, params));
    clip_gradients(backend, params, grad_norm, tc.grad_clip);
    const double lr = lr_at(tc, step);
    optimizer->step(backend, params, lr);

    StepMetrics metrics;
    metrics.step = step + 1;
    metrics.lr = lr;
    metrics.grad_norm = grad_norm;
    acc.finish(metrics);
    summary.losses.push_back(metrics.loss);
    interval_tokens += acc.tokens;
    if (!std::isfinite(metrics.loss))
      throw std::runtime_error("step " + std::to_string(step + 1) + ": loss is not finite (" +
                               std::to_string(metrics.loss) + "); lower train.lr or set train.grad_clip");

    const bool last = step + 1 == tc.steps;
    if ((step + 1) % config.run.log_every == 0 || last) {
      const double interval_s = seconds_since(interval_start);
      metrics.tokens_per_s = interval_s > 0 ? interval_tokens / interval_s : 0.0;
      metrics.eta_s = seconds_since(run_start) / (step + 1) * (tc.steps - step - 1);
      metrics_log.write_step(metrics);
      if (options.print) std::printf("%s\n", progress_line(metrics, tc.steps).c_str());
      interval_start = Clock::now();
      interval_tokens = 0;
    }
    const bool eval_now = config.eval.batches > 0 &&
                          ((config.eval.every > 0 && (step + 1) % config.eval.every == 0) || last);
    if (eval_now) {
      const Clock::time_point eval_start = Clock::now();
      summary.final_val_loss = evaluate(model, data.val, B, config.eval.batches);
      metrics_log.write_eval(step + 1, summary.final_val_loss);
      if (options.print)
        std::printf("eval   step %6lld | val_loss %.4f | %d batches in %.1fs\n",
                    static_cast<long long>(step + 1), summary.final_val_loss,
                    static_cast<int>(config.eval.batches), seconds_since(eval_start));
      interval_start += Clock::now() - eval_start;  // evaluation does not count as training time
    }
    if (options.print) std::fflush(stdout);
  }
  summary.steps = tc.steps;
  summary.seconds = seconds_since(run_start);
  summary.tokens_per_s = summary.seconds > 0 ? tc.steps * world * tc.grad_accum_steps * B * S /
                                                   summary.seconds
                                             : 0.0;
  if (options.print)
    std::printf("done: %lld steps in %.1fs (%.0f tokens/s), final val_loss %.4f\n",
                static_cast<long long>(tc.steps), summary.seconds, summary.tokens_per_s,
                summary.final_val_loss);
  return summary;
}

}  // namespace sy
