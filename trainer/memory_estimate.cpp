#include "trainer/memory_estimate.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "model/attention_workspace.h"
#include "model/lm_head.h"
#include "trainer/model_card.h"

namespace sy {

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// The process without the model on the CPU: MPI, OpenBLAS's buffers, HDF5, the allocator's
// slack (measured: ~80 MiB RSS for a model of a few KB, docs/config.md).
constexpr double kCpuProcessBytes = 96 * kMiB;

// Reads "Key:   123 kB" from a /proc file; -1 when absent.
double proc_kb(const char* path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      double kb = -1;
      fields >> kb;
      return kb;
    }
  return -1;
}

// A cgroup file holding one number ("max" or absent: -1, no limit known). Anything else is
// said on stderr and taken as no limit known, so that the check can still run on MemAvailable.
double cgroup_number(const char* path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text == "max") return -1;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !(value >= 0)) {
    std::fprintf(stderr, "warning: %s: '%s' is not a number of bytes; the memory check takes "
                 "this limit as unknown\n", path, text.c_str());
    return -1;
  }
  return value;
}

// checkpoint.async's snapshot on world rank 0 (trainer/checkpoint_snapshot.h): a whole
// checkpoint in host memory, every expert included, held from the start of the run: the fp32
// weights, AdamW's two moments, and the expert biases when bias balancing is on.
constexpr const char* kSnapshotItem = "checkpoint snapshot (rank 0)";

double snapshot_bytes(const Config& config, const ModelCard& card) {
  if (!config.checkpoint.async) return 0;
  const double copies = config.train.optimizer == OptimizerKind::adamw ? 3 : 1;
  const double biases = config.moe.bias_update_rate > 0
                            ? static_cast<double>(card.moe_layers) * config.moe.num_experts
                            : 0.0;
  return 4 * (copies * static_cast<double>(card.total_params) + biases);
}

}  // namespace

double checkpoint_snapshot_bytes(const Config& config) {
  return config.checkpoint.async ? snapshot_bytes(config, make_model_card(config)) : 0.0;
}

std::string snapshot_host_problem(double snapshot_bytes, const HostMemory& host) {
  if (host.bytes <= 0 || snapshot_bytes <= host.bytes) return "";
  return "checkpoint.async keeps a host copy of every checkpoint, about " +
         format_memory(snapshot_bytes) + " on world rank 0, but its host has " +
         format_memory(host.bytes) + " available (" + host.source +
         "); set checkpoint.async=false, or pass --set run.memory_check=false to start anyway";
}

double MemoryEstimate::total_bytes() const {
  double total = 0;
  for (const MemoryItem& item : items) total += item.bytes;
  return total;
}

std::string format_memory(double bytes) {
  char text[32];
  if (bytes >= 1024.0 * kMiB) std::snprintf(text, sizeof text, "%.1f GiB", bytes / (1024.0 * kMiB));
  else std::snprintf(text, sizeof text, "%.0f MiB", bytes / kMiB);
  return text;
}

std::string MemoryEstimate::describe(size_t biggest) const {
  std::vector<MemoryItem> sorted = items;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const MemoryItem& a, const MemoryItem& b) { return a.bytes > b.bytes; });
  std::string text = format_memory(total_bytes()) + " (";
  for (size_t i = 0; i < std::min(biggest, sorted.size()); ++i)
    text += (i ? ", " : "") + sorted[i].name + " " + format_memory(sorted[i].bytes);
  return text + (sorted.size() > biggest ? ", ...)" : ")");
}

namespace {
// How many of this rank's parameters hold bf16 gradients (bf16_grad_storage): the experts', and
// with Bf16Grads::all every GEMM weight's: all but the embedding table, the router and the gains.
double bf16_grad_params(const Config& config, const ModelCard& card, int64_t world_size) {
  const Bf16Grads grads = bf16_grad_storage(config, world_size);
  if (grads == Bf16Grads::none) return 0.0;
  const ModelConfig& m = config.model;
  const double local_experts =
      static_cast<double>(card.expert_params) /
      static_cast<double>(std::max<int64_t>(config.parallel.expert_parallel, 1));
  if (grads == Bf16Grads::experts) return local_experts;
  const double D = static_cast<double>(m.d_model), L = static_cast<double>(m.n_layers);
  const double embedding = static_cast<double>(m.vocab_size) * D;
  const double router =
      static_cast<double>(card.moe_layers) * D * static_cast<double>(config.moe.num_experts);
  const double gains = (2 * L + 1) * D;  // the QK-norm gains' few thousand left out
  const double other =
      static_cast<double>(card.params_per_rank) - local_experts - embedding - router;
  return local_experts + std::max(0.0, other - gains);
}
}  // namespace

MemoryEstimate estimate_memory_per_rank(const Config& config, int64_t world_size) {
  const ModelConfig& m = config.model;
  const MoeConfig& moe = config.moe;
  const bool cuda = config.run.backend == Device::cuda;
  const bool bf16 = config.run.precision == Precision::bf16;
  const double e = bf16 ? 2.0 : 4.0;  // bytes per activation element (the compute dtype)
  const double T = static_cast<double>(config.train.micro_batch_size) * m.seq_len;
  const double D = static_cast<double>(m.d_model), H = static_cast<double>(m.n_heads);
  const double S = static_cast<double>(m.seq_len), L = static_cast<double>(m.n_layers);
  const double TD = T * D * e;  // one [T, D] activation
  // One [T, H*Dh] (q, k, v, the context) and one [T, Hkv*Dh] (k and v before repeating).
  const double TQ = T * static_cast<double>(m.q_width()) * e;
  const double TKV = T * static_cast<double>(m.kv_width()) * e;
  const std::vector<bool> moe_mask = moe_layer_mask(config);
  const double moe_layers = static_cast<double>(std::count(moe_mask.begin(), moe_mask.end(), true));
  const double dense_layers = L - moe_layers;

  const ModelCard card = make_model_card(config);
  const double P = static_cast<double>(card.params_per_rank);
  MemoryEstimate estimate;
  auto add = [&](const std::string& name, double bytes) {
    if (bytes > 0) estimate.items.push_back({name, bytes});
  };
  add("parameters (fp32)", 4 * P);
  add("optimizer state", config.train.optimizer == OptimizerKind::adamw ? 8 * P : 0);
  // The GEMMs' and the embedding's bf16 copies are the high halves of their fp32 masters on
  // CUDA (DType::f32_split): counted in the parameters above. Only SY_CUDA_SPLIT_MASTERS=0, a
  // measurement knob, holds them apart (2 bytes a parameter more than this estimate).

  // Attention saves the probabilities [B, H, S, S] with the reference kernel (the CPU's auto),
  // else only the logsumexp per query and head (flash, cuDNN).
  const bool reference = m.attention_kernel == AttentionKernel::reference ||
                         (m.attention_kernel == AttentionKernel::automatic && !cuda);
  const double probabilities = reference ? config.train.micro_batch_size * H * S * S * e : 0;
  // What a layer keeps for backward (model/transformer.h, docs/cuda.md "Memory"): the block
  // input; the two norm outputs unless train.recompute reruns them (every mode but none); q, k,
  // v, the context and the attention statistics unless it reruns attention (attention, layer);
  // the residual sum and the FFN's h1 and h3 unless it reruns the layer (layer). An MoE block
  // always keeps its routing, received rows (x_recv) and expert outputs (y_perm). SwiGLU's
  // hidden is kept only under none (else backward rebuilds it in a scratch slot).
  const double TK = T * moe.routing.top_k;
  const double Fe = static_cast<double>(moe.expert_hidden), F = static_cast<double>(m.ffn_hidden);
  const Recompute recompute = config.train.recompute;
  const bool keep_norms = recompute == Recompute::none;
  const bool keep_attention = recompute == Recompute::none || recompute == Recompute::norms;
  const bool keep_layer = recompute != Recompute::layer;
  // QK-norm keeps the projections before their norms too (q_raw, k_raw) and their rstd, one per
  // row (full) or per row and head (per_head).
  const bool qk_norm = m.qk_norm != QkNorm::none;
  const double rstd_rows =
      m.qk_norm == QkNorm::per_head ? T * (H + static_cast<double>(m.kv_heads())) : 2 * T;
  const double qk_norm_part = qk_norm ? TQ + TKV + rstd_rows * 4 : 0.0;
  const double attention_part = 4 * TQ + T * H * 4 + probabilities + qk_norm_part;
  // A MoE layer's shared expert (moe.shared_expert_hidden) keeps its own h1 and h3.
  const double Fs = static_cast<double>(moe.shared_expert_hidden);
  // SwiGLU's hidden per layer; h1 and h3 are twice that.
  const double dense_hidden = T * F * e, expert_hidden = TK * Fe * e + T * Fs * e;
  const double dense_h = 2 * dense_hidden, expert_h = 2 * expert_hidden;
  const bool keep_hidden = recompute == Recompute::none;
  const double kept_dense = TD;
  const double kept_moe = TD + 2 * TK * D * e + 2 * T * moe.num_experts * 4 + TK * 8;
  double saved = dense_layers * kept_dense + moe_layers * kept_moe;
  if (keep_norms) saved += L * 2 * TD;
  if (keep_hidden) saved += dense_layers * dense_hidden + moe_layers * expert_hidden;
  if (keep_attention) saved += L * attention_part;
  if (keep_layer) saved += L * TD + dense_layers * dense_h + moe_layers * expert_h;
  // The memory plan (model/transformer.h): a gradient exists from its layer's backward to the
  // optimizer step, a block's saved activations from its forward to its backward. With one
  // micro-batch a step they meet only as backward trades one for the other: the peak holds the
  // larger of all the activations plus the gradients backward writes first (the LM head's and
  // the last block's) and all the gradients. Later micro-batches of an accumulation run their
  // forward with every gradient live.
  // Gradients in fp32, those held in bf16 (run.weight_grads) in 2 bytes.
  const double grads = 4 * P - 2 * bf16_grad_params(config, card, world_size);
  if (config.train.grad_accum_steps > 1) {
    add("gradients", grads);
    add("saved activations", saved);
  } else {
    const double head = 4.0 * static_cast<double>(m.vocab_size) * D;
    const double embeddings = m.tie_embeddings ? head : 2 * head;
    const double last_block = (grads - embeddings) / std::max(L, 1.0);
    add("saved activations or gradients (the larger)",
        std::max(saved + head + last_block, grads));
  }

  // One layer's forward temporaries and backward buffers (model/buffers.h Workspace), the
  // largest layer kind's, plus what recompute rebuilds into it for one layer.
  // Attention: its output and dx [T, D], dcontext, dq, dk and dv [T, H*Dh] (the norms add theirs
  // straight into the residual stream's gradient: no buffer of their own); on CUDA with cuDNN the
  // deterministic backward's dS workspace, a call's chunk of it (model/attention_workspace.h)
  // under the default budget's floor on a 132-SM GPU (H100, H200), and at least the floor (the
  // budget takes what the allocator already holds free); without run.deterministic, dQ summed
  // in f32 instead.
  // Grouped-query attention adds the Hkv heads' dk and dv (k and v too, in forward).
  const double grouped_kv = m.kv_heads() < m.n_heads ? 2 * TKV : 0.0;
  // QK-norm adds the projections' gradients before the norms (dq_raw, dk_raw).
  const double qk_norm_grads = qk_norm ? TQ + TKV : 0.0;
  double attention_backward = 2 * TD + 4 * TQ + grouped_kv + qk_norm_grads + probabilities;
  if (cuda && bf16 &&
      (m.attention_kernel == AttentionKernel::cudnn ||
       m.attention_kernel == AttentionKernel::automatic)) {
    const int64_t per_head = m.seq_len * m.seq_len * 2;
    const int64_t all = config.train.micro_batch_size * m.n_heads * per_head;
    const AttentionBackwardChunks chunk =
        attention_backward_chunks(config.train.micro_batch_size, m.n_heads, m.seq_len, all,
                                  {kAttentionWorkspaceFloor, false}, 132);
    attention_backward +=
        config.run.deterministic
            ? static_cast<double>(std::min(all, std::max(chunk.sequences * chunk.heads * per_head,
                                                         kAttentionWorkspaceFloor)))
            : T * static_cast<double>(m.q_width()) * 4;
  }
  // The FFN's out and du, and one [rows, F] slot for hidden/dhidden (none when hidden is kept).
  const double hidden_slot = keep_hidden ? 0.0 : 1.0;
  const double dense_backward = 2 * TD + hidden_slot * T * F * e;
  // MoE: dy_perm, the experts' dx, out, du and hidden/dhidden (the router reads the bf16 rows
  // directly); with expert_parallel > 1 also x_perm, the experts' output, dy_recv and dx_perm
  // (the exchange moves rows straight between them: no staging rows of its own).
  const double exchanged = config.parallel.expert_parallel > 1 ? 4 * TK * D * e : 0.0;
  // A shared expert adds its out and du; its hidden takes the same slot (the larger rows).
  const double moe_backward = 2 * TK * D * e + 2 * TD +
                              hidden_slot * std::max(TK * Fe, T * Fs) * e + exchanged +
                              (Fs > 0 ? 2 * TD : 0.0);
  double workspace = attention_backward + std::max(dense_layers > 0 ? dense_backward : 0.0,
                                                   moe_layers > 0 ? moe_backward : 0.0);
  if (!keep_norms) workspace += 2 * TD;
  if (!keep_attention) workspace += attention_part;
  if (!keep_layer)
    workspace += TD + std::max(dense_layers > 0 ? dense_h : 0.0, moe_layers > 0 ? expert_h : 0.0);
  // The residual stream, its fp32 gradient, the embedding output and the final norm's.
  workspace += 3 * TD + T * D * 4;
  add("activation workspace", workspace);
  // The LM head (model/lm_head.h): fp32 logits for a chunk of rows at a time and the dlogits of
  // all T rows in the compute dtype (in fp32 the dlogits are the logits, overwritten in place).
  const double V = static_cast<double>(m.vocab_size), chunk = LMHead::kChunkRows;
  add("logits and their gradient", bf16 ? std::min(chunk, T) * V * 4 + T * V * e : T * V * 4);

  if (!cuda) {
    // The training tokens stay on disk, read a window at a time (docs/data.md, Token files
    // larger than memory), whatever the size of the token files; a rank keeps the validation
    // set, int32.
    add("validation tokens", 4.0 * static_cast<double>(eval_sequences(config) * m.seq_len + 1));
    add("process (MPI, BLAS, HDF5)", kCpuProcessBytes);
    add(kSnapshotItem, snapshot_bytes(config, card));
  }
  return estimate;
}

HostMemory host_available_memory() {
  HostMemory result;
  const double available_kb = proc_kb("/proc/meminfo", "MemAvailable");
  if (available_kb > 0) {
    result.bytes = available_kb * 1024.0;
    result.source = "MemAvailable";
  }
  // cgroup v2, then v1: the job's limit (Slurm's --mem) binds before the host's free memory.
  const char* limits[][2] = {{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                             {"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes"}};
  for (const auto& [limit_path, usage_path] : limits) {
    const double limit = cgroup_number(limit_path), usage = cgroup_number(usage_path);
    if (limit <= 0 || usage < 0 || limit > 1e18) continue;  // v1's "no limit" is ~2^63
    const double room = std::max(0.0, limit - usage);
    if (result.bytes == 0 || room < result.bytes) {
      result.bytes = room;
      result.source = "cgroup limit " + format_memory(limit);
    }
    break;
  }
  return result;
}

double resident_bytes() { return std::max(0.0, proc_kb("/proc/self/status", "VmRSS") * 1024.0); }
double peak_resident_bytes() {
  return std::max(0.0, proc_kb("/proc/self/status", "VmHWM") * 1024.0);
}

std::string memory_check_problem(const MemoryEstimate& estimate, double needed, double available,
                                 const std::string& where) {
  if (available <= 0 || needed <= available) return "";
  return "the run needs about " + format_memory(needed) + " but " + where + " has " +
         format_memory(available) + " available; estimate per rank " + estimate.describe() +
         "; lower train.micro_batch_size, set train.recompute, add expert_parallel ranks, or "
         "pass --set run.memory_check=false to start anyway";
}

MemoryCheck check_memory(const Config& config, Backend& backend, CommHandle world, bool writer) {
  const MemoryEstimate estimate = estimate_memory_per_rank(config, comm_size(world));
  double needed = estimate.total_bytes(), available = 0;
  std::string where;
  std::string host_problem;
  if (backend.device() != Device::cpu) {
    available = static_cast<double>(backend.available_memory_bytes());
    where = backend.name();
    // The device estimate leaves out host memory; the snapshot is the one large host item.
    const double snapshot = sum_over_host(world, writer ? checkpoint_snapshot_bytes(config) : 0.0).sum;
    if (snapshot > 0) host_problem = snapshot_host_problem(snapshot, host_available_memory());
  } else {
    const HostShare held_by_host = sum_over_host(world, resident_bytes());
    const int ranks = held_by_host.ranks;
    const double held_by_node = held_by_host.sum;
    const HostMemory host = host_available_memory();
    if (host.bytes > 0) available = host.bytes + held_by_node;
    // Every rank of the host needs the estimate but the snapshot, which only the writer holds.
    double snapshot = 0;
    for (const MemoryItem& item : estimate.items)
      if (item.name == kSnapshotItem) snapshot = item.bytes;
    needed = (needed - snapshot) * ranks + sum_over_host(world, writer ? snapshot : 0.0).sum;
    where = "this host (" + (host.source.empty() ? std::string("unknown") : host.source) + ", " +
            std::to_string(ranks) + (ranks == 1 ? " rank)" : " ranks)");
  }
  MemoryCheck check;
  check.summary = "memory estimate " + estimate.describe() + " per rank; " +
                  (available > 0 ? format_memory(available) : std::string("unknown")) +
                  " available on " + where;
  if (config.run.memory_check) {
    check.problem = memory_check_problem(estimate, needed, available, where);
    if (check.problem.empty()) check.problem = host_problem;
  }
  else check.summary += " (run.memory_check off)";
  return check;
}

}  // namespace sy
