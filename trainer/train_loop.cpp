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
#include "parallel/grad_sync.h"
#include "parallel/param_gather.h"
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
  if (config.eval.batches > 0 &&
      max_validation_batches(data.val.size(), config.train.micro_batch_size,
                             config.model.seq_len) < config.eval.batches)
    throw std::runtime_error(config.data.path + ": eval.batches " +
                             std::to_string(config.eval.batches) +
                             " needs more validation tokens than the " +
                             std::to_string(data.val.size()) + " it has");
  return data;
}

// Every rank reads the token file itself; a rank that cannot is reported by rank 0.
TokenData load_tokens_on_every_rank(const Config& config, Communicator& world) {
  TokenData data;
  std::string problem;
  try {
    data = load_tokens(config);
  } catch (const std::exception& error) {
    problem = error.what();
  }
  agree_or_throw(world, problem);
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

  // Sums every field over the ranks, so that the metrics cover the whole step.
  void reduce(Communicator& world) {
    std::vector<double> sums{loss, lm_loss, aux_loss, z_loss};
    world.all_reduce_host(sums, ReduceOp::sum);
    loss = sums[0], lm_loss = sums[1], aux_loss = sums[2], z_loss = sums[3];
    std::vector<int64_t> counts{groups, assignments, dropped, tokens};
    for (const std::vector<double>& layer : load_counts)
      for (double count : layer) counts.push_back(static_cast<int64_t>(count));
    world.all_reduce_host(counts, ReduceOp::sum);
    groups = counts[0], assignments = counts[1], dropped = counts[2], tokens = counts[3];
    size_t next = 4;
    for (std::vector<double>& layer : load_counts)
      for (double& count : layer) count = static_cast<double>(counts[next++]);
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
  ModelSession session = make_model_session(config, options.world);
  Backend& backend = *session.backend;
  Transformer& model = *session.model;
  ProcessGroups& groups = session.groups;
  Communicator& world = *groups.world;
  const bool lead = world.rank() == 0;  // rank 0 alone prints and writes files

  const std::filesystem::path run_dir = config.run.dir;
  std::unique_ptr<MetricsLog> metrics_log;
  std::string problem;
  if (lead) {
    try {
      std::filesystem::create_directories(run_dir);
      write_resolved_config(config, run_dir);
      metrics_log = std::make_unique<MetricsLog>((run_dir / "metrics.jsonl").string());
    } catch (const std::exception& error) {
      problem = error.what();
    }
  }
  agree_or_throw(world, problem);
  const TokenData data = load_tokens_on_every_rank(config, world);
  const StepSampler sampler(data.train, config.model.seq_len, config.seed);

  std::vector<Param*> params = model.params();
  std::unique_ptr<Optimizer> optimizer = make_optimizer(config.train);

  const TrainConfig& tc = config.train;
  const int64_t W = world.size(), rank = world.rank();
  const int64_t B = tc.micro_batch_size, S = config.model.seq_len;
  if (options.print && lead) {
    std::printf("%s", format_model_card(config, make_model_card(config)).c_str());
    std::printf("  %lld ranks (expert_parallel %lld, grad_accum_steps %lld): global batch %lld "
                "sequences\n",
                static_cast<long long>(W), static_cast<long long>(config.parallel.expert_parallel),
                static_cast<long long>(tc.grad_accum_steps),
                static_cast<long long>(W * tc.grad_accum_steps * B));
    std::printf("  run dir %s, data %s (%zu train / %zu val tokens)\n", run_dir.c_str(),
                config.data.path.c_str(), data.train.size(), data.val.size());
    std::fflush(stdout);
  }

  // SPEC.md section 3: the step's objective is the mean over its W*A routing groups.
  const double loss_scale = 1.0 / static_cast<double>(W * tc.grad_accum_steps);
  std::vector<int32_t> inputs(B * S), targets(B * S);

  TrainSummary summary;
  const Clock::time_point run_start = Clock::now();
  Clock::time_point interval_start = run_start;
  int64_t interval_tokens = 0;
  for (int64_t step = 0; step < tc.steps; ++step) {
    model.zero_grads();
    StepAccumulator acc;
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      const int64_t group = micro * W + rank;  // SPEC.md section 3
      sampler.group(step, group, B, inputs.data(), targets.data());
      acc.add(model.forward_backward(inputs, targets, B, true, loss_scale));
    }
    synchronize_gradients(params, groups);
    const double grad_norm = distributed_grad_norm(backend, params, groups);
    clip_gradients(backend, params, grad_norm, tc.grad_clip);
    const double lr = lr_at(tc, step);
    optimizer->step(backend, params, lr);

    acc.reduce(world);
    StepMetrics metrics;
    metrics.step = step + 1;
    metrics.lr = lr;
    metrics.grad_norm = grad_norm;
    acc.finish(metrics);
    summary.losses.push_back(metrics.loss);
    summary.dropped_any |= metrics.dropped_frac > 0;
    interval_tokens += acc.tokens;
    if (!std::isfinite(metrics.loss) || !std::isfinite(grad_norm))
      throw CollectiveError("step " + std::to_string(step + 1) + ": loss " +
                            std::to_string(metrics.loss) + ", grad_norm " +
                            std::to_string(grad_norm) +
                            " (not finite); lower train.lr or set train.grad_clip");

    const bool last = step + 1 == tc.steps;
    if ((step + 1) % config.run.log_every == 0 || last) {
      const double interval_s = seconds_since(interval_start);
      metrics.tokens_per_s = interval_s > 0 ? interval_tokens / interval_s : 0.0;
      metrics.eta_s = seconds_since(run_start) / (step + 1) * (tc.steps - step - 1);
      if (lead) metrics_log->write_step(metrics);
      if (options.print && lead) std::printf("%s\n", progress_line(metrics, tc.steps).c_str());
      interval_start = Clock::now();
      interval_tokens = 0;
    }
    const bool eval_now = config.eval.batches > 0 &&
                          ((config.eval.every > 0 && (step + 1) % config.eval.every == 0) || last);
    if (eval_now) {
      const Clock::time_point eval_start = Clock::now();
      summary.final_val_loss = evaluate(model, data.val, B, config.eval.batches, world);
      if (lead) metrics_log->write_eval(step + 1, summary.final_val_loss);
      if (options.print && lead)
        std::printf("eval   step %6lld | val_loss %.4f | %d batches in %.1fs\n",
                    static_cast<long long>(step + 1), summary.final_val_loss,
                    static_cast<int>(config.eval.batches), seconds_since(eval_start));
      interval_start += Clock::now() - eval_start;  // evaluation does not count as training time
    }
    if (options.print && lead) std::fflush(stdout);
  }
  summary.steps = tc.steps;
  summary.seconds = seconds_since(run_start);
  summary.tokens_per_s =
      summary.seconds > 0 ? tc.steps * W * tc.grad_accum_steps * B * S / summary.seconds : 0.0;
  if (options.print && lead)
    std::printf("done: %lld steps in %.1fs (%.0f tokens/s), final val_loss %.4f\n",
                static_cast<long long>(tc.steps), summary.seconds, summary.tokens_per_s,
                summary.final_val_loss);
  if (options.collect_parameters)
    for (Param* param : params) {
      std::vector<double> full = gather_to_rank0(param->value, param->is_expert, groups, backend);
      if (lead) summary.parameters.emplace_back(param->path, std::move(full));
    }
  return summary;
}

}  // namespace sy
