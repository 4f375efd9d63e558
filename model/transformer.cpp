#include "model/transformer.h"

#include <stdexcept>

#include "model/buffers.h"
#include "model/documents.h"
#include "model/rng.h"

namespace sy {

namespace {
constexpr uint64_t kInitDomain = 0x1A17'5EED'0000'0001ull;  // keeps init streams apart from data
constexpr double kInitStd = 0.02;
}  // namespace

Param Transformer::make_param(const std::string& path, const Shape& shape, bool is_expert,
                              bool compute_copy) {
  Param param;
  param.path = path;
  const bool separate_compute = compute_copy && options_.dtype != master_dtype_;
  // bf16 compute from f32 masters: where the backend can, the compute copy is the masters' own
  // high halves (f32_split) rather than a second tensor.
  const bool split = separate_compute && options_.dtype == DType::bf16 &&
                     master_dtype_ == DType::f32 && backend_.splits_bf16_masters();
  param.value = backend_.zeros(shape, split ? DType::f32_split : master_dtype_);
  // No gradient memory until a backward (or zero_grads) needs it: allocated between the
  // weights, it would leave holes that the activations fit badly.
  param.grad_state = Param::GradState::stale;
  if (split) param.compute = param.value.high_half();
  else if (separate_compute) param.compute = backend_.zeros(shape, options_.dtype);
  else param.compute = param.value;
  param.decay = shape.size() >= 2;
  param.is_expert = is_expert;
  return param;
}

Transformer::Transformer(Backend& backend, TransformerOptions options, TokenExchange* exchange)
    : backend_(backend), options_(std::move(options)) {
  if (options_.dtype == DType::i32)
    throw std::runtime_error("Transformer: the compute dtype must be a float dtype");
  if (options_.master_dtype != DType::f32 && options_.master_dtype != DType::f64)
    throw std::runtime_error(std::string("Transformer: the master dtype must be f32 or f64, got ") +
                             dtype_name(options_.master_dtype));
  master_dtype_ = options_.dtype == DType::f64 ? DType::f64 : options_.master_dtype;
  if (options_.bf16_grads != Bf16Grads::none && options_.dtype != DType::bf16)
    throw std::runtime_error(std::string("Transformer: bf16 weight gradients need the bf16 ") +
                             "compute dtype, got " + dtype_name(options_.dtype));
  if (options_.bf16_grad_storage > options_.bf16_grads)
    throw std::runtime_error(std::string("Transformer: bf16 gradient storage '") +
                             bf16_grads_name(options_.bf16_grad_storage) +
                             "' beyond the bf16 gradients '" +
                             bf16_grads_name(options_.bf16_grads) + "'");
  const ModelConfig& m = options_.model;
  const MoeConfig& moe = options_.moe;
  const int64_t D = m.d_model;
  if (static_cast<int64_t>(options_.moe_layers.size()) != m.n_layers)
    throw std::runtime_error("Transformer: moe_layers has " +
                             std::to_string(options_.moe_layers.size()) + " entries for " +
                             std::to_string(m.n_layers) + " layers");

  embedding_.table = make_param("embedding", {m.vocab_size, D});
  blocks_.resize(m.n_layers);
  Workspace* const shared = workspace_.get();
  const bool recompute_layer = options_.recompute == Recompute::layer;
  const bool recompute_norms = options_.recompute != Recompute::none;
  const bool keep_hidden = options_.recompute == Recompute::none;
  for (int64_t l = 0; l < m.n_layers; ++l) {
    const std::string prefix = "layers/" + std::to_string(l) + "/";
    Block& block = blocks_[l];
    for (RMSNorm* norm : {&block.attn_norm, &block.ffn_norm}) {
      norm->eps = m.norm_eps;
      norm->workspace = shared;
      norm->recompute = recompute_norms;
    }
    block.attn_norm.name = "attn_norm";
    block.ffn_norm.name = "ffn_norm";
    block.attn.workspace = shared;
    block.attn.recompute =
        options_.recompute == Recompute::attention || options_.recompute == Recompute::layer;
    block.attn_norm.gain = make_param(prefix + "attn_norm", {D}, false, false);
    block.attn.wq = make_param(prefix + "attn/wq", {D, m.q_width()});
    block.attn.wk = make_param(prefix + "attn/wk", {D, m.kv_width()});
    block.attn.wv = make_param(prefix + "attn/wv", {D, m.kv_width()});
    block.attn.kv_heads = m.kv_heads();
    block.attn.rotary = m.rotary();
    if (m.qk_norm != QkNorm::none) {
      const bool per_head = m.qk_norm == QkNorm::per_head;
      const int64_t q_gain = per_head ? m.head_width() : m.q_width();
      const int64_t k_gain = per_head ? m.head_width() : m.kv_width();
      block.attn.q_norm = make_param(prefix + "attn/q_norm", {q_gain}, false, false);
      block.attn.k_norm = make_param(prefix + "attn/k_norm", {k_gain}, false, false);
      block.attn.norm_eps = m.norm_eps;
    }
    block.attn.wo = make_param(prefix + "attn/wo", {m.q_width(), D});
    block.attn.kernel = m.attention_kernel;
    block.ffn_norm.gain = make_param(prefix + "ffn_norm", {D}, false, false);
    if (!options_.moe_layers[l]) {
      block.dense = std::make_unique<DenseFFN>();
      block.dense->w1 = make_param(prefix + "ffn/w1", {D, m.ffn_hidden});
      block.dense->w3 = make_param(prefix + "ffn/w3", {D, m.ffn_hidden});
      block.dense->w2 = make_param(prefix + "ffn/w2", {m.ffn_hidden, D});
      block.dense->workspace = shared;
      block.dense->recompute = recompute_layer;
      block.dense->keep_hidden = keep_hidden;
      continue;
    }
    if (!exchange) throw std::runtime_error("Transformer: MoE layers need a token exchange");
    if (exchange->num_experts() != moe.num_experts)
      throw std::runtime_error("Transformer: the token exchange serves " +
                               std::to_string(exchange->num_experts()) + " experts, the config " +
                               std::to_string(moe.num_experts));
    first_local_expert_ = exchange->first_local_expert();
    const int64_t local = exchange->num_local_experts(), F = moe.expert_hidden;
    block.moe = std::make_unique<MoELayer>();
    MoELayer& layer = *block.moe;
    layer.exchange = exchange;
    layer.workspace = shared;
    layer.experts.workspace = shared;
    layer.experts.recompute = recompute_layer;
    layer.experts.keep_hidden = keep_hidden;
    layer.router.weight = make_param(prefix + "moe/router", {D, moe.num_experts}, false, false);
    layer.router.settings = {moe.routing, moe.num_experts, moe.capacity_factor};
    if (moe.bias_update_rate > 0)
      layer.router.expert_bias = backend_.zeros({moe.num_experts}, master_dtype_);
    layer.experts.w1 = make_param(prefix + "moe/experts/w1", {local, D, F}, true);
    layer.experts.w3 = make_param(prefix + "moe/experts/w3", {local, D, F}, true);
    layer.experts.w2 = make_param(prefix + "moe/experts/w2", {local, F, D}, true);
    layer.experts.kernel = moe.expert_kernel;
    if (const int64_t Fs = moe.shared_expert_hidden; Fs > 0) {
      // Every rank holds the whole shared expert (not an expert slice): its gradient is reduced
      // over all ranks, as the attention's.
      block.shared = std::make_unique<DenseFFN>();
      block.shared->name = "shared";
      block.shared->w1 = make_param(prefix + "moe/shared/w1", {D, Fs});
      block.shared->w3 = make_param(prefix + "moe/shared/w3", {D, Fs});
      block.shared->w2 = make_param(prefix + "moe/shared/w2", {Fs, D});
      block.shared->workspace = shared;
      block.shared->recompute = recompute_layer;
      block.shared->keep_hidden = keep_hidden;
    }
  }
  final_norm_.gain = make_param("final_norm", {D}, false, false);
  final_norm_.eps = m.norm_eps;
  if (m.tie_embeddings)
    lm_head_.tied_table = &embedding_.table;
  else
    lm_head_.weight = make_param("lm_head", {D, m.vocab_size});
  for (Param* param : params()) param->bf16_grad = in_grad_set(*param, options_.bf16_grads);
}

namespace {
std::vector<Param*> block_params(Block& block) {
  std::vector<Param*> list{&block.attn_norm.gain, &block.attn.wq, &block.attn.wk, &block.attn.wv,
                           &block.attn.wo};
  if (block.attn.qk_normed()) list.insert(list.end(), {&block.attn.q_norm, &block.attn.k_norm});
  list.push_back(&block.ffn_norm.gain);
  if (block.dense)
    list.insert(list.end(), {&block.dense->w1, &block.dense->w3, &block.dense->w2});
  else
    list.insert(list.end(), {&block.moe->router.weight, &block.moe->experts.w1,
                             &block.moe->experts.w3, &block.moe->experts.w2});
  if (block.shared)
    list.insert(list.end(), {&block.shared->w1, &block.shared->w3, &block.shared->w2});
  return list;
}
}  // namespace

std::vector<Param*> Transformer::params() {
  std::vector<Param*> list{&embedding_.table};
  for (Block& block : blocks_) {
    const std::vector<Param*> own = block_params(block);
    list.insert(list.end(), own.begin(), own.end());
  }
  list.push_back(&final_norm_.gain);
  if (!lm_head_.tied_table) list.push_back(&lm_head_.weight);
  return list;
}

void Transformer::release_unwritten_grads() {
  for (Param* param : params())
    if (param->grad_state != Param::GradState::live) {
      param->grad = Tensor();
      param->grad_state = Param::GradState::stale;
    }
}

bool Transformer::in_grad_set(const Param& param, Bf16Grads set) const {
  if (param.is_expert) return set != Bf16Grads::none;
  // A GEMM weight has a bf16 compute copy; the embedding table is one too, but its gradient is a
  // scatter-add (and, tied, the LM head's GEMM adds into it as well).
  const bool gemm_weight =
      param.compute_value().dtype() == DType::bf16 && &param != &embedding_.table;
  return set == Bf16Grads::all && gemm_weight;
}

DType Transformer::grad_dtype(const Param& param) const {
  return in_grad_set(param, options_.bf16_grad_storage) ? DType::bf16 : master_dtype_;
}

void Transformer::acquire_grads(const std::vector<Param*>& params) {
  for (Param* param : params)
    if (!param->grad.defined())
      param->grad = backend_.alloc(param->value.shape(), grad_dtype(*param));
}

std::vector<const Router*> Transformer::routers() const {
  std::vector<const Router*> list;
  for (const Block& block : blocks_)
    if (block.moe) list.push_back(&block.moe->router);
  return list;
}

void Transformer::update_expert_bias(const std::vector<std::vector<double>>& load_counts) {
  const double rate = options_.moe.bias_update_rate;
  if (rate <= 0) return;
  size_t layer = 0;
  for (Block& block : blocks_) {
    if (!block.moe) continue;
    if (layer >= load_counts.size())
      throw std::runtime_error("update_expert_bias: no loads for MoE layer " + std::to_string(layer));
    const std::vector<double>& load = load_counts[layer++];
    Tensor& bias = block.moe->router.expert_bias;
    if (static_cast<int64_t>(load.size()) != bias.numel())
      throw std::runtime_error("update_expert_bias: " + std::to_string(load.size()) +
                               " loads for " + std::to_string(bias.numel()) + " experts");
    double total = 0;
    for (double count : load) total += count;
    const double mean = total / static_cast<double>(load.size());
    std::vector<double> values = backend_.read(bias);
    for (size_t e = 0; e < load.size(); ++e) {
      const double sign = (mean > load[e]) - (mean < load[e]);
      // In the bias's own precision, so that the update is the same whatever reads it back.
      values[e] = master_dtype_ == DType::f32
                      ? static_cast<double>(static_cast<float>(values[e]) +
                                            static_cast<float>(rate * sign))
                      : values[e] + rate * sign;
    }
    backend_.write(bias, std::span<const double>(values));
  }
}

std::vector<std::pair<std::string, Tensor>> Transformer::expert_biases() {
  std::vector<std::pair<std::string, Tensor>> list;
  for (size_t l = 0; l < blocks_.size(); ++l)
    if (blocks_[l].moe && blocks_[l].moe->router.expert_bias.defined())
      list.emplace_back("layers/" + std::to_string(l) + "/moe/expert_bias",
                        blocks_[l].moe->router.expert_bias);
  return list;
}

int64_t Transformer::num_moe_layers() const {
  int64_t count = 0;
  for (const Block& block : blocks_) count += block.moe != nullptr;
  return count;
}

void Transformer::init_parameters(uint64_t seed) {
  const uint64_t seed_key = key_combine(kInitDomain, seed);
  for (Param* param : params()) {
    if (param->value.ndim() == 1) {  // norm gains
      backend_.fill(param->value, 1.0);
      continue;
    }
    const uint64_t path_key = key_combine(seed_key, hash_string(param->path));
    // A stacked expert tensor is E_local slices, each drawn from its global expert's stream.
    const int64_t slices = param->is_expert ? param->value.dim(0) : 1;
    const int64_t slice_elems = param->value.numel() / slices;
    std::vector<double> values(param->value.numel());
    std::vector<NormalFill> fills;
    for (int64_t j = 0; j < slices; ++j) {
      const uint64_t expert = param->is_expert ? first_local_expert_ + j : 0;
      fills.push_back({key_combine(path_key, expert), values.data() + j * slice_elems, slice_elems});
    }
    fill_normal(fills, kInitStd);
    backend_.write(param->value, std::span<const double>(values));
  }
  refresh_compute_weights();
}

void Transformer::zero_grads() {
  for (Param* param : params()) {
    acquire_grads({param});
    backend_.fill(param->grad, 0.0);
    param->grad_state = Param::GradState::zero;
  }
}

void Transformer::refresh_compute_weights() {
  for (Param* param : params())
    if (param->compute.defined() && param->compute.data() != param->value.data())
      backend_.copy(param->compute, param->value);
}

std::vector<double> Transformer::logits_at(std::span<const int32_t> inputs, int64_t batch,
                                           int64_t sequence, int64_t position) {
  const int64_t S = options_.model.seq_len, T = batch * S;
  if (static_cast<int64_t>(inputs.size()) != T || sequence < 0 || sequence >= batch ||
      position < 0 || position >= S)
    throw std::runtime_error("Transformer::logits_at: position " + std::to_string(position) +
                             " of sequence " + std::to_string(sequence) + " outside " +
                             std::to_string(batch) + " x " + std::to_string(S) + " tokens");
  ensure(backend_, inputs_, {T}, DType::i32);
  backend_.write(inputs_, inputs);
  doc_start_ = Tensor();
  documents_ = DocumentList();
  forward(batch, false);
  return logits_of_row(sequence * S + position);
}

std::vector<double> Transformer::logits_of_row(int64_t row) {
  const Tensor& x_final = final_norm_.forward(backend_, residual_.back());
  ensure(backend_, sample_logits_, {1, lm_head_.vocab()}, stat_dtype(options_.dtype));
  lm_head_.project(backend_, sample_logits_, x_final.rows(row, row + 1));
  return backend_.read(sample_logits_);
}

double Transformer::sequence_loss_sum(std::span<const int32_t> inputs,
                                      std::span<const int32_t> targets) {
  const int64_t n = static_cast<int64_t>(inputs.size()), S = options_.model.seq_len;
  if (n < 1 || n > S || static_cast<int64_t>(targets.size()) != n)
    throw std::runtime_error("Transformer::sequence_loss_sum: " + std::to_string(n) +
                             " tokens and " + std::to_string(targets.size()) +
                             " targets; the model holds 1 to seq_len = " + std::to_string(S));
  ensure(backend_, inputs_, {n}, DType::i32);
  ensure(backend_, targets_, {n}, DType::i32);
  backend_.write(inputs_, inputs);
  backend_.write(targets_, targets);
  doc_start_ = Tensor();
  documents_ = DocumentList();
  forward(1, false, n);
  const Tensor& x_final = final_norm_.forward(backend_, residual_.back());
  lm_head_.enqueue(backend_, x_final, targets_, false, 1.0);
  return lm_head_.loss_sum(backend_);
}

std::vector<double> Transformer::decode_prompt(std::span<const int32_t> prompt) {
  const int64_t n = static_cast<int64_t>(prompt.size()), S = options_.model.seq_len;
  if (n < 1 || n > S)
    throw std::runtime_error("Transformer::decode_prompt: " + std::to_string(n) +
                             " tokens; the model holds 1 to seq_len = " + std::to_string(S));
  kv_cache_.resize(blocks_.size());
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const Shape cache_shape{S, blocks_[l].attn.wq.value.dim(1)};  // [S, H*Dh]
    ensure(backend_, kv_cache_[l].k, cache_shape, options_.dtype);
    ensure(backend_, kv_cache_[l].v, cache_shape, options_.dtype);
  }
  decoded_ = 0;
  return decode_tokens(prompt);
}

std::vector<double> Transformer::decode_next(int32_t token) {
  if (decoded_ == 0) throw std::logic_error("Transformer::decode_next before decode_prompt");
  if (decoded_ >= options_.model.seq_len)
    throw std::runtime_error("Transformer::decode_next: the cache holds seq_len = " +
                             std::to_string(options_.model.seq_len) + " positions, all taken");
  return decode_tokens({&token, 1});
}

std::vector<double> Transformer::decode_tokens(std::span<const int32_t> tokens) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (const int32_t id : tokens)
    if (id < 0 || id >= options_.model.vocab_size)
      throw std::runtime_error("Transformer: token " + std::to_string(id) +
                               " outside the vocabulary [0, " +
                               std::to_string(options_.model.vocab_size) + ")");
  ensure(backend_, inputs_, {n}, DType::i32);
  backend_.write(inputs_, tokens);
  doc_start_ = Tensor();
  documents_ = DocumentList();
  forward(1, false, n, true);
  decoded_ += n;
  return logits_of_row(n - 1);
}

GroupStats Transformer::forward_backward(std::span<const int32_t> inputs,
                                         std::span<const int32_t> targets, int64_t batch,
                                         bool compute_grad, double loss_scale,
                                         std::optional<double> lm_target_scale,
                                         std::span<const int32_t> doc_start) {
  const ModelConfig& m = options_.model;
  const int64_t T = batch * m.seq_len;
  if (static_cast<int64_t>(inputs.size()) != T || static_cast<int64_t>(targets.size()) != T ||
      (!doc_start.empty() && static_cast<int64_t>(doc_start.size()) != T))
    throw std::runtime_error("Transformer: expected " + std::to_string(T) + " tokens (batch " +
                             std::to_string(batch) + " x seq_len " + std::to_string(m.seq_len) +
                             "), got " + std::to_string(inputs.size()) + " (" +
                             std::to_string(targets.size()) + " targets, " +
                             std::to_string(doc_start.size()) + " document starts)");
  ensure(backend_, inputs_, {T}, DType::i32);
  ensure(backend_, targets_, {T}, DType::i32);
  backend_.write(inputs_, inputs);
  backend_.write(targets_, targets);
  if (doc_start.empty()) {
    doc_start_ = Tensor();
    documents_ = DocumentList();
  } else {
    ensure(backend_, doc_start_, {T}, DType::i32);
    backend_.write(doc_start_, doc_start);
    const DocumentRows list = list_documents(doc_start, m.seq_len);
    const int64_t listed = static_cast<int64_t>(list.offsets.size());
    ensure(backend_, document_offsets_, {listed}, DType::i32);
    backend_.write(document_offsets_, std::span<const int32_t>(list.offsets));
    documents_ = {document_offsets_, list.longest};
  }
  // Gradients not yet written this step hold nothing: their memory goes back for the forward's
  // activations, and backward allocates each as it reaches its layer.
  if (compute_grad) release_unwritten_grads();
  forward(batch, compute_grad);
  const Tensor& x_final = final_norm_.forward(backend_, residual_.back());
  if (compute_grad) acquire_grads({lm_head_.tied_table ? lm_head_.tied_table : &lm_head_.weight});
  lm_head_.enqueue(backend_, x_final, targets_, compute_grad,
                   lm_target_scale.value_or(loss_scale / T));
  // The whole backward is enqueued before the host reads anything of this micro-batch (two
  // copies: the LM loss, then every MoE layer's router losses), so that the GPU never waits on
  // the host between the head and the layers.
  if (compute_grad) backward(batch, loss_scale);
  const double ce_sum = lm_head_.loss_sum(backend_);
  const std::vector<double> router_losses =
      router_losses_.defined() ? backend_.read(router_losses_) : std::vector<double>();

  GroupStats stats;
  stats.tokens = T;
  stats.lm_targets = T - std::count(targets.begin(), targets.end(), kIgnoreTarget);
  stats.lm_loss_sum = ce_sum;
  stats.lm_loss = stats.lm_targets > 0 ? ce_sum / stats.lm_targets : 0.0;
  size_t moe_index = 0;
  for (Block& block : blocks_) {
    if (!block.moe) continue;
    Router& router = block.moe->router;
    router.aux_loss = router_losses[3 * moe_index];
    router.z_loss = router_losses[3 * moe_index + 1];
    router.entropy = router_losses[3 * moe_index + 2];
    ++moe_index;
    stats.aux_loss += router.aux_loss;
    stats.z_loss += router.z_loss;
    stats.assignments += router.kept + router.dropped;
    stats.dropped += router.dropped;
    stats.rerouted += router.rerouted;
    stats.assignments_per_expert.push_back(router.assignments_on_host);
    stats.dropped_per_layer.push_back(router.dropped);
    stats.rerouted_per_layer.push_back(router.rerouted);
    stats.entropy_per_layer.push_back(router.entropy);
  }
  const int64_t n_moe = num_moe_layers();
  if (n_moe > 0) {
    stats.aux_loss /= n_moe;
    stats.z_loss /= n_moe;
  }
  stats.loss = stats.lm_loss + options_.moe.aux_loss_coef * stats.aux_loss +
               options_.moe.z_loss_coef * stats.z_loss;
  return stats;
}

void Transformer::forward(int64_t batch, bool training, int64_t seq, bool decode) {
  const ModelConfig& m = options_.model;
  if (seq == 0) seq = m.seq_len;
  // Global-batch balancing is a training objective: evaluation routes the same either way and
  // need not wait for the other ranks.
  const bool balance_over_world = training && options_.moe.aux_loss_scope == AuxLossScope::global;
  // Each router writes its aux, z and entropy into its row of router_losses_, read in one copy.
  const int64_t n_moe = num_moe_layers();
  if (n_moe > 0) ensure(backend_, router_losses_, {n_moe, 3}, DType::f64);
  int64_t moe_index = 0;
  for (Block& block : blocks_) {
    if (!block.moe) continue;
    block.moe->balance_over_world = balance_over_world;
    block.moe->router.losses_out = router_losses_.rows(moe_index, moe_index + 1);
    ++moe_index;
  }
  const int64_t T = batch * seq, D = m.d_model;
  const AttentionShape shape{batch, seq, m.n_heads, doc_start_, documents_};
  residual_.resize(m.n_layers + 1);
  for (Tensor& x : residual_) ensure(backend_, x, {T, D}, options_.dtype);

  embedding_.forward(backend_, residual_[0], inputs_);
  // Each residual sum is written by the norm that reads it next (add_rmsnorm_forward: one pass
  // fewer over [T, D]), except the last block's output, whose norm runs after this, and the
  // output of a block with a shared expert, which joins after the routed experts'.
  const Tensor* attn_in = nullptr;
  if (m.n_layers > 0) attn_in = &blocks_[0].attn_norm.forward(backend_, residual_[0]);
  for (int64_t l = 0; l < m.n_layers; ++l) {
    Block& block = blocks_[l];
    // x_mid = x + attention(rmsnorm(x))
    const Tensor& attn_out =
        decode ? block.attn.decode(backend_, *attn_in, shape, kv_cache_[l], decoded_)
               : block.attn.forward(backend_, *attn_in, shape);
    const Tensor x_mid = residual_mid(l, T);
    // x_next = x_mid + ffn(rmsnorm(x_mid))
    const Tensor& ffn_in = block.ffn_norm.forward_sum(backend_, x_mid, residual_[l], attn_out);
    const Tensor& ffn_out =
        block.dense ? block.dense->forward(backend_, ffn_in) : block.moe->forward(backend_, ffn_in);
    const bool last = l + 1 == m.n_layers;
    if (!last && !block.shared) {
      attn_in = &blocks_[l + 1].attn_norm.forward_sum(backend_, residual_[l + 1], x_mid, ffn_out);
      continue;
    }
    backend_.add_into(residual_[l + 1], x_mid, ffn_out);
    // x_next += the shared expert's output (after the routed experts', in this order everywhere)
    if (block.shared) backend_.add(residual_[l + 1], block.shared->forward(backend_, ffn_in), 1.0);
    if (!last) attn_in = &blocks_[l + 1].attn_norm.forward(backend_, residual_[l + 1]);
  }
}

void Transformer::backward(int64_t batch, double loss_scale) {
  const ModelConfig& m = options_.model;
  const AttentionShape shape{batch, m.seq_len, m.n_heads, doc_start_, documents_};
  const int64_t n_moe = num_moe_layers();
  const double d_aux = n_moe ? loss_scale * options_.moe.aux_loss_coef / n_moe : 0.0;
  const double d_z = n_moe ? loss_scale * options_.moe.z_loss_coef / n_moe : 0.0;

  // dresidual carries the gradient of the residual stream down the blocks.
  ensure(backend_, dresidual_, residual_.back().shape(), options_.dtype);
  acquire_grads({&final_norm_.gain});
  final_norm_.backward_into(backend_, dresidual_, lm_head_.dx, residual_.back(), false);
  for (int64_t l = m.n_layers - 1; l >= 0; --l) {
    Block& block = blocks_[l];
    acquire_grads(block_params(block));
    if (options_.recompute == Recompute::layer) recompute_block(l, shape);
    const bool rerun_norms =
        options_.recompute == Recompute::norms || options_.recompute == Recompute::attention;
    if (rerun_norms) block.ffn_norm.forward(backend_, residual_mid(l, dresidual_.dim(0)));
    const Tensor& ffn_in = block.ffn_norm.out;
    const Tensor& dffn_in = block.dense
                                ? block.dense->backward(backend_, dresidual_, ffn_in)
                                : block.moe->backward(backend_, dresidual_, ffn_in, d_aux, d_z);
    // The shared expert's input gradient joins the experts' (its own slots: no aliasing).
    if (block.shared)
      backend_.add(dffn_in, block.shared->backward(backend_, dresidual_, ffn_in), 1.0);
    const Tensor x_mid = residual_mid(l, dresidual_.dim(0));
    block.ffn_norm.backward_into(backend_, dresidual_, dffn_in, x_mid, true);

    if (rerun_norms) block.attn_norm.forward(backend_, residual_[l]);
    const Tensor& attn_in = block.attn_norm.out;
    if (options_.recompute == Recompute::attention) block.attn.forward(backend_, attn_in, shape);
    const Tensor& dattn_in = block.attn.backward(backend_, dresidual_, attn_in, shape);
    block.attn_norm.backward_into(backend_, dresidual_, dattn_in, residual_[l], true);
    release_saved(l);
    if (grads_finished_) {
      const std::vector<Param*> finished = block_params(block);
      zero_unwritten_grads(finished);
      grads_finished_(finished);
    }
  }
  acquire_grads({&embedding_.table});
  embedding_.backward(backend_, dresidual_, inputs_);
  residual_[0] = Tensor();
  zero_unwritten_grads(params());
}

void Transformer::zero_unwritten_grads(const std::vector<Param*>& params) {
  for (Param* param : params)
    if (param->grad_state == Param::GradState::stale) {
      acquire_grads({param});
      backend_.fill(param->grad, 0.0);
      param->grad_state = Param::GradState::zero;
    }
}

// Block `layer`'s backward is done: what its forward kept goes back to the allocator (for the
// gradients and the layers below), its output among it; the next forward allocates it again.
void Transformer::release_saved(int64_t layer) {
  Block& block = blocks_[layer];
  block.attn_norm.release_saved();
  block.attn.release_saved();
  block.ffn_norm.release_saved();
  if (block.dense) block.dense->release_saved();
  if (block.moe) block.moe->release_saved();
  if (block.shared) block.shared->release_saved();
  if (layer < static_cast<int64_t>(residual_mid_.size())) residual_mid_[layer] = Tensor();
  residual_[layer + 1] = Tensor();
}

Tensor Transformer::residual_mid(int64_t layer, int64_t tokens) {
  const Shape shape{tokens, options_.model.d_model};
  if (options_.recompute == Recompute::layer)
    return workspace_->get(backend_, "residual_mid", shape, options_.dtype);
  residual_mid_.resize(options_.model.n_layers);
  return ensure(backend_, residual_mid_[layer], shape, options_.dtype);
}

// The forward's block `layer` again, on the same input and weights: bitwise the same
// activations. The router's results and the exchanged rows are still those of the forward.
void Transformer::recompute_block(int64_t layer, const AttentionShape& shape) {
  Block& block = blocks_[layer];
  const Tensor& attn_in = block.attn_norm.forward(backend_, residual_[layer]);
  const Tensor& attn_out = block.attn.forward(backend_, attn_in, shape);
  const Tensor x_mid = residual_mid(layer, attn_in.dim(0));
  const Tensor& ffn_in = block.ffn_norm.forward_sum(backend_, x_mid, residual_[layer], attn_out);
  if (block.dense)
    block.dense->forward(backend_, ffn_in);
  else
    block.moe->recompute_experts(backend_);
  if (block.shared) block.shared->forward(backend_, ffn_in);
}

}  // namespace sy
