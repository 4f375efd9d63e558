// switchyard export --format hf (docs/export.md) without transformers: tiny MoE and dense runs
// are exported, and model.safetensors is read back by a reader of our own (header JSON, dtypes,
// shapes, contiguous in-range offsets, values equal to the checkpoint's: exact in fp32, the
// round-to-nearest-even bf16 in bf16); the attention projection and rotary of the exported
// layout recomputed as transformers does equal ours; every refusal names its config key.
// transformers itself loads the export on the GPU machine: bench/hf_export/check.sh.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "data/chat_template.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "model/backend.h"
#include "tests/synthetic_corpus.h"
#include "trainer/config.h"
#include "trainer/export.h"
#include "trainer/safetensors.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ---- a safetensors reader of our own -----------------------------------------------------------
struct StTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;
};
struct StFile {
  nlohmann::json header;
  std::map<std::string, StTensor> tensors;
  std::vector<std::string> order;  // by offset
  std::string data;                // the bytes after the header

  std::vector<float> values(const std::string& name) const {
    const StTensor& t = tensors.at(name);
    std::vector<float> out;
    if (t.dtype == "F32") {
      out.resize((t.end - t.begin) / 4);
      std::memcpy(out.data(), data.data() + t.begin, out.size() * 4);
    } else {
      out.resize((t.end - t.begin) / 2);
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t bits;
        std::memcpy(&bits, data.data() + t.begin + 2 * i, 2);
        out[i] = std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
      }
    }
    return out;
  }
};

// Checks the layout as it reads (gtest failures), so that every test that reads checks it.
StFile read_safetensors(const fs::path& path) {
  StFile file;
  const std::string bytes = read_file(path);
  EXPECT_GE(bytes.size(), 8u);
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  EXPECT_LE(8 + length, bytes.size());
  EXPECT_EQ((8 + length) % 8, 0u) << "the data starts 8-byte aligned";
  const std::string text = bytes.substr(8, length);
  const size_t last = text.find_last_not_of(' ');
  EXPECT_EQ(text[last], '}') << "only spaces pad the header";
  file.header = nlohmann::json::parse(text);
  file.data = bytes.substr(8 + length);
  EXPECT_EQ(file.header.at("__metadata__"), nlohmann::json({{"format", "pt"}}));
  std::vector<std::pair<int64_t, std::string>> by_offset;
  for (auto it = file.header.begin(); it != file.header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    StTensor t;
    t.dtype = it.value().at("dtype").get<std::string>();
    t.shape = it.value().at("shape").get<std::vector<int64_t>>();
    t.begin = it.value().at("data_offsets").at(0).get<int64_t>();
    t.end = it.value().at("data_offsets").at(1).get<int64_t>();
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    EXPECT_EQ(t.end - t.begin, numel * (t.dtype == "F32" ? 4 : 2)) << it.key();
    file.tensors[it.key()] = t;
    by_offset.emplace_back(t.begin, it.key());
  }
  std::sort(by_offset.begin(), by_offset.end());
  int64_t expected_begin = 0;
  for (const auto& [begin, name] : by_offset) {
    EXPECT_EQ(begin, expected_begin) << name << ": offsets are contiguous from 0";
    expected_begin = file.tensors[name].end;
    file.order.push_back(name);
  }
  EXPECT_EQ(expected_begin, static_cast<int64_t>(file.data.size())) << "the data ends the file";
  return file;
}

// A dataset of the checkpoint, as fp32 (plain HDF5, as any reader would).
std::vector<float> read_dataset(const std::string& path, const std::string& name,
                                std::vector<int64_t>* shape = nullptr) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(file, 0) << path;
  const hid_t dataset = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  EXPECT_GE(dataset, 0) << name;
  const hid_t space = H5Dget_space(dataset);
  hsize_t dims[4] = {};
  const int rank = H5Sget_simple_extent_dims(space, dims, nullptr);
  int64_t numel = 1;
  if (shape) shape->clear();
  for (int i = 0; i < rank; ++i) {
    numel *= static_cast<int64_t>(dims[i]);
    if (shape) shape->push_back(static_cast<int64_t>(dims[i]));
  }
  std::vector<float> values(numel);
  EXPECT_GE(H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  H5Sclose(space);
  H5Dclose(dataset);
  H5Fclose(file);
  return values;
}

// The bf16 nearest to `value`, ties to the even mantissa, found by comparing the two candidates
// in double: an independent statement of what bf16_bits_round_nearest_even computes.
float bf16_nearest(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const float down = std::bit_cast<float>(bits & 0xFFFF0000u);
  const float up = std::bit_cast<float>((bits & 0xFFFF0000u) + 0x10000u);
  const double to_down = std::abs(static_cast<double>(value) - down);
  const double to_up = std::abs(static_cast<double>(up) - value);
  if (to_down != to_up) return to_down < to_up ? down : up;
  return ((bits >> 16) & 1u) == 0 ? down : up;
}

class Export : public ::testing::Test {
 public:
  static inline fs::path dir;
  static inline std::string moe_checkpoint, dense_checkpoint, mixed_checkpoint;

  static Config base(const std::string& run) {
    Config c;
    c.seed = 5;
    c.model = {256, 16, 16, 2, 2, 24, true};  // V, S, D, L, H, F, tied
    c.moe.num_experts = 4;
    c.moe.routing.top_k = 2;
    c.moe.expert_hidden = 12;
    c.train.micro_batch_size = 2;
    c.train.steps = 3;
    c.train.warmup_steps = 1;
    c.train.lr = 1e-2;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 0;
    c.eval.tokens = 32;
    c.run.dir = (dir / run).string();
    return c;
  }
  static std::string train_run(const Config& c) {
    return train(c, {.print = false}).last_checkpoint;
  }

  static void SetUpTestSuite() {
    dir = fs::temp_directory_path() / ("sy_export_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    test::write_repeated_text((dir / "tokens.h5").string(),
                              "the router sends each token to two experts; the experts write "
                              "back what they made of it. ",
                              30, 90);
    moe_checkpoint = train_run(base("moe"));
    Config dense = base("dense");
    dense.moe.num_experts = 0;
    dense.model.tie_embeddings = false;  // lm_head exported too
    dense_checkpoint = train_run(dense);
    Config mixed = base("mixed");
    mixed.moe.layers = MoeLayers::every_nth(2);
    mixed.train.steps = 1;
    mixed_checkpoint = train_run(mixed);
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }

  static ExportResult run_export(const std::string& checkpoint, const std::string& out,
                                 const std::string& dtype) {
    ExportOptions options;
    options.checkpoint = checkpoint;
    options.output = (dir / out).string();
    options.dtype = dtype;
    options.overwrite = true;
    return export_checkpoint(options);
  }
};

TEST_F(Export, MoeFp32IsTheCheckpointExactly) {
  const ExportResult result = run_export(moe_checkpoint, "moe-fp32", "fp32");
  EXPECT_EQ(result.architecture, "MixtralForCausalLM");
  const StFile st = read_safetensors(dir / "moe-fp32" / "model.safetensors");
  // embed, per layer (2 norms, 4 attention, gate, 4 experts x 3), final norm; tied: no lm_head
  EXPECT_EQ(st.tensors.size(), 1u + 2 * (2 + 4 + 1 + 4 * 3) + 1);
  EXPECT_EQ(result.tensors, static_cast<int64_t>(st.tensors.size()));
  EXPECT_EQ(st.tensors.count("lm_head.weight"), 0u);
  for (const auto& [name, t] : st.tensors) EXPECT_EQ(t.dtype, "F32") << name;
  EXPECT_EQ(st.order.front(), "model.embed_tokens.weight");

  // Shapes: transformers' [out, in].
  EXPECT_EQ(st.tensors.at("model.embed_tokens.weight").shape, (std::vector<int64_t>{256, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.1.self_attn.k_proj.weight").shape,
            (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.0.block_sparse_moe.gate.weight").shape,
            (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.1.block_sparse_moe.experts.3.w1.weight").shape,
            (std::vector<int64_t>{12, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.1.block_sparse_moe.experts.3.w2.weight").shape,
            (std::vector<int64_t>{16, 12}));
  EXPECT_EQ(st.tensors.at("model.norm.weight").shape, (std::vector<int64_t>{16}));

  // Values: bit for bit, through the transpose.
  EXPECT_EQ(st.values("model.embed_tokens.weight"), read_dataset(moe_checkpoint, "/model/embedding"));
  EXPECT_EQ(st.values("model.layers.1.post_attention_layernorm.weight"),
            read_dataset(moe_checkpoint, "/model/layers/1/ffn_norm"));
  std::vector<int64_t> shape;
  const std::vector<float> wo = read_dataset(moe_checkpoint, "/model/layers/0/attn/wo", &shape);
  const std::vector<float> o_proj = st.values("model.layers.0.self_attn.o_proj.weight");
  for (int64_t i = 0; i < 16; ++i)
    for (int64_t j = 0; j < 16; ++j) ASSERT_EQ(o_proj[j * 16 + i], wo[i * 16 + j]) << i << "," << j;
  const std::vector<float> router = read_dataset(moe_checkpoint, "/model/layers/1/moe/router");
  const std::vector<float> gate = st.values("model.layers.1.block_sparse_moe.gate.weight");
  for (int64_t i = 0; i < 16; ++i)
    for (int64_t e = 0; e < 4; ++e) ASSERT_EQ(gate[e * 16 + i], router[i * 4 + e]);
  const std::vector<float> w2 = read_dataset(moe_checkpoint, "/model/layers/1/moe/experts/w2", &shape);
  ASSERT_EQ(shape, (std::vector<int64_t>{4, 12, 16}));
  const std::vector<float> w2_e2 = st.values("model.layers.1.block_sparse_moe.experts.2.w2.weight");
  for (int64_t f = 0; f < 12; ++f)
    for (int64_t d = 0; d < 16; ++d) ASSERT_EQ(w2_e2[d * 12 + f], w2[(2 * 12 + f) * 16 + d]);

  const nlohmann::json config = nlohmann::json::parse(read_file(dir / "moe-fp32" / "config.json"));
  EXPECT_EQ(config.at("architectures"), nlohmann::json::array({"MixtralForCausalLM"}));
  EXPECT_EQ(config.at("num_local_experts"), 4);
  EXPECT_EQ(config.at("num_experts_per_tok"), 2);
  EXPECT_EQ(config.at("intermediate_size"), 12);
  EXPECT_EQ(config.at("head_dim"), 8);
  EXPECT_EQ(config.at("num_key_value_heads"), 2);
  EXPECT_EQ(config.at("rms_norm_eps").get<double>(), 1e-5);
  EXPECT_EQ(config.at("rope_theta").get<double>(), 10000.0);
  EXPECT_EQ(config.at("tie_word_embeddings"), true);
  EXPECT_EQ(config.at("vocab_size"), 256);
  EXPECT_TRUE(config.at("eos_token_id").is_null());
  EXPECT_EQ(config.at("dtype"), "float32");
  // The byte tokenizer: nothing to write.
  EXPECT_FALSE(fs::exists(dir / "moe-fp32" / "tokenizer.model"));
  EXPECT_FALSE(fs::exists(dir / "moe-fp32" / "model.safetensors.tmp"));
}

// transformers computes q_proj(x) and then rotates with cos/sin of cat(freqs, freqs) and
// rotate_half (modeling_mixtral.apply_rotary_pos_emb). Written out here from the exported tensor,
// it must equal our q = x @ wq followed by our backend's rope: the exported q/k rows need no
// permutation because our rotary already pairs i with i + Dh/2.
TEST_F(Export, AttentionProjectionAndRotaryAsTransformersComputeThem) {
  run_export(moe_checkpoint, "moe-rope", "fp32");
  const StFile st = read_safetensors(dir / "moe-rope" / "model.safetensors");
  const int64_t S = 16, D = 16, H = 2, Dh = D / H;
  std::mt19937 random(7);
  std::normal_distribution<float> normal;
  std::vector<float> x(S * D);
  for (float& v : x) v = normal(random);

  for (const char* which : {"q", "k"}) {
    const std::string ours_name = std::string("/model/layers/1/attn/w") + which;
    const std::vector<float> w = read_dataset(moe_checkpoint, ours_name);
    std::unique_ptr<Backend> backend = make_cpu_backend();
    Tensor xt = backend->alloc({S, D}, DType::f32), wt = backend->alloc({D, D}, DType::f32);
    Tensor q = backend->alloc({S, D}, DType::f32);
    backend->write(xt, std::span<const float>(x));
    backend->write(wt, std::span<const float>(w));
    backend->gemm(q, xt, false, wt, false, 1.0, 0.0);
    backend->rope_forward(q, 1, S, H);
    const std::vector<double> ours = backend->read(q);

    const std::vector<float> proj =
        st.values(std::string("model.layers.1.self_attn.") + which + "_proj.weight");
    for (int64_t s = 0; s < S; ++s) {
      std::vector<double> y(D, 0.0);  // y = proj @ x[s], proj [out, in]
      for (int64_t o = 0; o < D; ++o)
        for (int64_t i = 0; i < D; ++i) y[o] += static_cast<double>(proj[o * D + i]) * x[s * D + i];
      for (int64_t h = 0; h < H; ++h) {
        const double* head = y.data() + h * Dh;
        for (int64_t j = 0; j < Dh; ++j) {
          const int64_t i = j % (Dh / 2);  // emb = cat(freqs, freqs)
          const double angle = s * std::pow(10000.0, -2.0 * i / Dh);
          const double rotated_half = j < Dh / 2 ? -head[j + Dh / 2] : head[j - Dh / 2];
          const double expected = head[j] * std::cos(angle) + rotated_half * std::sin(angle);
          EXPECT_NEAR(ours[s * D + h * Dh + j], expected, 1e-5)
              << which << " position " << s << " head " << h << " dim " << j;
        }
      }
    }
  }
}

TEST_F(Export, Bf16IsRoundToNearestEven) {
  // The rounding itself, at its edges.
  EXPECT_EQ(bf16_bits_round_nearest_even(1.0f), 0x3F80);
  EXPECT_EQ(bf16_bits_round_nearest_even(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie, even
  EXPECT_EQ(bf16_bits_round_nearest_even(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie, up to even
  EXPECT_EQ(bf16_bits_round_nearest_even(std::bit_cast<float>(0x3F808001u)), 0x3F81);  // past half
  EXPECT_EQ(bf16_bits_round_nearest_even(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(bf16_bits_round_nearest_even(std::numeric_limits<float>::max()), 0x7F80);  // to inf
  EXPECT_EQ(bf16_bits_round_nearest_even(std::numeric_limits<float>::quiet_NaN()) & 0x7FC0, 0x7FC0);
  EXPECT_EQ(bf16_bits_round_nearest_even(std::bit_cast<float>(0x7F800001u)) & 0x7FC0, 0x7FC0)
      << "a signalling NaN must not round to infinity";

  const ExportResult result = run_export(moe_checkpoint, "moe-bf16", "bf16");
  const StFile st = read_safetensors(dir / "moe-bf16" / "model.safetensors");
  for (const auto& [name, t] : st.tensors) EXPECT_EQ(t.dtype, "BF16") << name;
  EXPECT_EQ(result.safetensors_bytes, static_cast<int64_t>(fs::file_size(dir / "moe-bf16" / "model.safetensors")));
  const std::vector<float> table = read_dataset(moe_checkpoint, "/model/embedding");
  const std::vector<float> exported = st.values("model.embed_tokens.weight");
  ASSERT_EQ(exported.size(), table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    ASSERT_EQ(exported[i], bf16_nearest(table[i])) << i;
    ASSERT_LE(std::abs(exported[i] - table[i]), std::abs(table[i]) * 0x1p-8f) << i;
  }
  const nlohmann::json config = nlohmann::json::parse(read_file(dir / "moe-bf16" / "config.json"));
  EXPECT_EQ(config.at("dtype"), "bfloat16");
}

TEST_F(Export, DenseIsLlamaWithItsOwnHead) {
  const ExportResult result = run_export(dense_checkpoint, "dense", "fp32");
  EXPECT_EQ(result.architecture, "LlamaForCausalLM");
  const StFile st = read_safetensors(dir / "dense" / "model.safetensors");
  EXPECT_EQ(st.tensors.size(), 1u + 2 * (2 + 4 + 3) + 1 + 1);
  EXPECT_EQ(st.order.back(), "lm_head.weight");
  EXPECT_EQ(st.tensors.at("lm_head.weight").shape, (std::vector<int64_t>{256, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.0.mlp.gate_proj.weight").shape, (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.0.mlp.down_proj.weight").shape, (std::vector<int64_t>{16, 24}));
  const std::vector<float> head = read_dataset(dense_checkpoint, "/model/lm_head");  // [D, V]
  const std::vector<float> exported = st.values("lm_head.weight");                   // [V, D]
  for (int64_t d = 0; d < 16; ++d)
    for (int64_t v = 0; v < 256; ++v) ASSERT_EQ(exported[v * 16 + d], head[d * 256 + v]);
  const std::vector<float> w3 = read_dataset(dense_checkpoint, "/model/layers/1/ffn/w3");  // [D, F]
  const std::vector<float> up = st.values("model.layers.1.mlp.up_proj.weight");           // [F, D]
  for (int64_t d = 0; d < 16; ++d)
    for (int64_t f = 0; f < 24; ++f) ASSERT_EQ(up[f * 16 + d], w3[d * 24 + f]);
  const nlohmann::json config = nlohmann::json::parse(read_file(dir / "dense" / "config.json"));
  EXPECT_EQ(config.at("model_type"), "llama");
  EXPECT_EQ(config.at("intermediate_size"), 24);
  EXPECT_EQ(config.at("tie_word_embeddings"), false);
  EXPECT_EQ(config.count("num_local_experts"), 0u);
}

// Grouped-query attention: k_proj and v_proj of the key/value heads, num_key_value_heads said.
TEST_F(Export, GroupedQueryAttentionKeepsItsKeyValueHeads) {
  Config c = base("gqa");
  c.model.n_kv_heads = 1;
  c.train.steps = 1;
  run_export(train_run(c), "gqa", "fp32");
  const StFile st = read_safetensors(dir / "gqa" / "model.safetensors");
  for (const char* name : {"k_proj", "v_proj"})  // [Hkv*Dh, D] = [8, 16]
    EXPECT_EQ(st.tensors.at(std::string("model.layers.0.self_attn.") + name + ".weight").shape,
              (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.0.self_attn.q_proj.weight").shape,
            (std::vector<int64_t>{16, 16}));
  const nlohmann::json config = nlohmann::json::parse(read_file(dir / "gqa" / "config.json"));
  EXPECT_EQ(config.at("num_attention_heads"), 2);
  EXPECT_EQ(config.at("num_key_value_heads"), 1);
}

// QK-norm in an MoE model: OLMoE's names (q_norm, k_norm, mlp.gate, experts' gate/up/down_proj)
// and norm_topk_prob; a dense model with QK-norm has no transformers class here.
TEST_F(Export, QkNormMoeIsOlmoe) {
  Config c = base("olmoe");
  c.model.qk_norm = QkNorm::full;
  c.train.steps = 1;
  const ExportResult result = run_export(train_run(c), "olmoe", "fp32");
  EXPECT_EQ(result.architecture, "OlmoeForCausalLM");
  const StFile st = read_safetensors(dir / "olmoe" / "model.safetensors");
  EXPECT_EQ(st.tensors.at("model.layers.1.self_attn.q_norm.weight").shape,
            (std::vector<int64_t>{16}));
  EXPECT_EQ(st.tensors.at("model.layers.1.self_attn.k_norm.weight").shape,
            (std::vector<int64_t>{16}));
  EXPECT_EQ(st.tensors.at("model.layers.0.mlp.gate.weight").shape, (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.0.mlp.experts.3.down_proj.weight").shape,
            (std::vector<int64_t>{16, 12}));
  EXPECT_EQ(st.tensors.count("model.layers.0.block_sparse_moe.gate.weight"), 0u);
  const nlohmann::json config = nlohmann::json::parse(read_file(dir / "olmoe" / "config.json"));
  EXPECT_EQ(config.at("model_type"), "olmoe");
  EXPECT_EQ(config.at("num_experts"), 4);
  EXPECT_EQ(config.at("norm_topk_prob"), true);  // top_k 2: the default renormalises

  Config dense = base("qk-dense");
  dense.moe.num_experts = 0;
  EXPECT_EQ(hf_export_problem(dense), "");
  dense.model.qk_norm = QkNorm::full;
  EXPECT_NE(hf_export_problem(dense).find("model.qk_norm: full normalises q and k; Llama has no "
                                          "QK-norm"),
            std::string::npos);
  // OLMoE's q_norm is hidden_size wide: heads of another width do not fit it.
  Config wide = base("olmoe-wide");
  wide.model.qk_norm = QkNorm::full;
  wide.model.head_dim = 16;
  EXPECT_EQ(hf_export_problem(wide).rfind("model.head_dim: 16", 0), 0u) << hf_export_problem(wide);
}

// Per-head QK-norm: a dense model is a Qwen3, one with MoE layers a Qwen3-MoE, whose
// mlp_only_layers carries any mix of dense and MoE layers; heads wider than D / H (head_dim)
// make q_proj [H*Dh, D] and o_proj [D, H*Dh].
TEST_F(Export, PerHeadQkNormIsQwen3) {
  Config c = base("qwen3");
  c.model.qk_norm = QkNorm::per_head;
  c.model.head_dim = 16;  // D 16, H 2: twice D / H
  c.model.n_kv_heads = 1;
  c.moe.num_experts = 0;
  c.train.steps = 1;
  ExportResult result = run_export(train_run(c), "qwen3", "fp32");
  EXPECT_EQ(result.architecture, "Qwen3ForCausalLM");
  StFile st = read_safetensors(dir / "qwen3" / "model.safetensors");
  const std::string attention = "model.layers.1.self_attn.";
  EXPECT_EQ(st.tensors.at(attention + "q_proj.weight").shape, (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(st.tensors.at(attention + "k_proj.weight").shape, (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(st.tensors.at(attention + "o_proj.weight").shape, (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(st.tensors.at(attention + "q_norm.weight").shape, (std::vector<int64_t>{16}));
  EXPECT_EQ(st.tensors.at(attention + "k_norm.weight").shape, (std::vector<int64_t>{16}));
  nlohmann::json config = nlohmann::json::parse(read_file(dir / "qwen3" / "config.json"));
  EXPECT_EQ(config.at("model_type"), "qwen3");
  EXPECT_EQ(config.at("head_dim"), 16);
  EXPECT_EQ(config.at("use_sliding_window"), false);

  Config moe = base("qwen3-moe");
  moe.model.qk_norm = QkNorm::per_head;
  moe.model.ffn_hidden = 24;
  moe.moe.layers = MoeLayers::listed({1});
  moe.train.steps = 1;
  result = run_export(train_run(moe), "qwen3-moe", "fp32");
  EXPECT_EQ(result.architecture, "Qwen3MoeForCausalLM");
  st = read_safetensors(dir / "qwen3-moe" / "model.safetensors");
  EXPECT_EQ(st.tensors.at("model.layers.0.mlp.gate_proj.weight").shape,
            (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.1.mlp.gate.weight").shape, (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(st.tensors.at("model.layers.1.mlp.experts.3.up_proj.weight").shape,
            (std::vector<int64_t>{12, 16}));
  config = nlohmann::json::parse(read_file(dir / "qwen3-moe" / "config.json"));
  EXPECT_EQ(config.at("mlp_only_layers"), nlohmann::json::array({0}));
  EXPECT_EQ(config.at("decoder_sparse_step"), 1);
  EXPECT_EQ(config.at("intermediate_size"), 24);
  EXPECT_EQ(config.at("moe_intermediate_size"), 12);
  EXPECT_EQ(config.at("num_experts"), 4);
  EXPECT_EQ(config.at("norm_topk_prob"), true);
}

TEST_F(Export, RefusesWhatTransformersCannotExpress) {
  // A real checkpoint: layers 0 dense, 1 MoE.
  ExportOptions options;
  options.checkpoint = mixed_checkpoint;
  options.output = (dir / "mixed-export").string();
  try {
    export_checkpoint(options);
    FAIL() << "a mixed MoE/dense model was exported";
  } catch (const ExportError& error) {
    EXPECT_NE(std::string(error.what()).find("moe.layers: layers 1 are MoE and 0 dense"),
              std::string::npos)
        << error.what();
  }
  EXPECT_FALSE(fs::exists(dir / "mixed-export")) << "nothing is written for a refused model";

  // Each key that cannot be mapped, named first in its one line.
  const std::vector<std::pair<std::function<void(Config&)>, std::string>> cases = {
      {[](Config& c) { c.moe.routing.score = RouterScore::sigmoid; }, "moe.router_score: sigmoid"},
      {[](Config& c) { c.moe.bias_update_rate = 0.001; }, "moe.bias_update_rate: 0.001"},
      {[](Config& c) { c.moe.shared_expert_hidden = 16; }, "moe.shared_expert_hidden: 16"},
      {[](Config& c) { c.moe.capacity_factor = 1.25; }, "moe.capacity_factor: 1.25"},
      {[](Config& c) { c.moe.routing.top_k = 1; },
       "moe.normalize_topk: default (false at top_k 1)"},
      {[](Config& c) { c.moe.routing.normalize_topk = TopkNormalize::off; },
       "moe.normalize_topk: false"},
  };
  for (const auto& [change, expected] : cases) {
    Config c = base("unused");
    change(c);
    const std::string problem = hf_export_problem(c);
    EXPECT_EQ(problem.rfind(expected, 0), 0u) << problem;
    EXPECT_EQ(problem.find('\n'), std::string::npos);
  }
  Config normalised_top1 = base("unused");
  normalised_top1.moe.routing.top_k = 1;
  normalised_top1.moe.routing.normalize_topk = TopkNormalize::on;
  EXPECT_EQ(hf_export_problem(normalised_top1), "") << "top-1 renormalised is Mixtral's gate 1";
  Config dense = base("unused");
  dense.moe.num_experts = 0;
  dense.moe.routing.score = RouterScore::sigmoid;  // no router in a dense model
  EXPECT_EQ(hf_export_problem(dense), "");
}

TEST_F(Export, OutputFolderRules) {
  fs::create_directories(dir / "busy");
  std::ofstream(dir / "busy" / "notes.txt") << "mine";
  ExportOptions options;
  options.checkpoint = moe_checkpoint;
  options.output = (dir / "busy").string();
  try {
    export_checkpoint(options);
    FAIL() << "wrote into a non-empty folder";
  } catch (const ExportError& error) {
    EXPECT_NE(std::string(error.what()).find("is not empty (pass --overwrite"), std::string::npos)
        << error.what();
  }
  EXPECT_FALSE(fs::exists(dir / "busy" / "model.safetensors"));
  options.overwrite = true;
  export_checkpoint(options);
  EXPECT_TRUE(fs::exists(dir / "busy" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "busy" / "notes.txt")) << "overwrite replaces only our files";

  options.dtype = "fp16";
  EXPECT_THROW(export_checkpoint(options), ExportError);
  options.dtype = "bf16";
  options.checkpoint = (dir / "absent.h5").string();
  EXPECT_THROW(export_checkpoint(options), ExportError);
}

// A SentencePiece run: its model file goes along as tokenizer.model, byte for byte, with a
// tokenizer_config.json naming LlamaTokenizer; a byte run's --overwrite export then removes them.
TEST_F(Export, SentencePieceTokenizerGoesAlong) {
  const fs::path sp = dir / "sp";
  fs::create_directories(sp);
  {
    const std::vector<std::string> words = {"router", "expert", "token", "gate", "layer", "the",
                                            "sends", "each", "of", "two", "writes", "back",
                                            "norm", "weights", "mixture", "dense"};
    std::ofstream text(sp / "corpus.txt", std::ios::binary);
    uint32_t state = 99;
    for (int line = 0; line < 400; ++line) {
      for (int w = 0; w < 8; ++w) {
        state = state * 1664525u + 1013904223u;
        text << (w ? " " : "") << words[(state >> 16) % words.size()];
      }
      text << (line % 5 == 0 ? ", step " + std::to_string(line) + ".\n" : ".\n");
    }
  }
  SentencePieceTrainOptions options;
  options.inputs = {(sp / "corpus.txt").string()};
  options.vocab_size = 320;
  options.output = (sp / "tok.model").string();
  ASSERT_EQ(train_sentencepiece(options), 320);
  prepare_data((sp / "corpus.txt").string(), "text", (sp / "tokens.h5").string(), options.output,
               0.1);
  Config c = base("sp-run");
  c.model.vocab_size = 320;
  c.data.path = (sp / "tokens.h5").string();
  c.train.steps = 1;
  const std::string checkpoint = train_run(c);

  const ExportResult result = run_export(checkpoint, "sp-export", "bf16");
  const fs::path out = dir / "sp-export";
  EXPECT_EQ(read_file(out / "tokenizer.model"), read_file(sp / "tok.model"));
  const nlohmann::json tokenizer = nlohmann::json::parse(read_file(out / "tokenizer_config.json"));
  EXPECT_EQ(tokenizer.at("tokenizer_class"), "LlamaTokenizer");
  EXPECT_EQ(tokenizer.at("add_bos_token"), false);
  EXPECT_EQ(nlohmann::json::parse(read_file(out / "config.json")).at("vocab_size"), 320);
  ASSERT_FALSE(result.notes.empty());
  EXPECT_NE(result.notes[0].find("SentencePiece"), std::string::npos) << result.notes[0];

  // A fine-tune on conversations: its chat format goes along as the Jinja template that
  // apply_chat_template runs (rendered as we render:
  // ChatTemplate.JinjaRendersTheConversationAsWeDo).
  {
    std::ofstream chat(sp / "chat.jsonl");
    for (int k = 0; k < 300; ++k)
      chat << R"({"messages": [{"role": "user", "content": "the expert )" << k
           << R"(?"}, {"role": "assistant", "content": "each router of two writes back."}]})"
           << "\n";
  }
  PrepareOptions chat;
  chat.format = "sft";
  chat.inputs = {(sp / "chat.jsonl").string()};
  chat.output = (sp / "chat.h5").string();
  chat.tokenizer = options.output;
  chat.sft.chat_template = ChatTemplate::kLlama3;
  chat.sft.system = "Answer in one line.";  // put first in each, and carried to the export
  prepare_data(chat);
  Config chat_run = c;
  chat_run.run.dir = (dir / "sp-chat").string();
  chat_run.data.path = chat.output;
  const ExportResult chat_result = run_export(train_run(chat_run), "sp-chat-export", "bf16");
  const nlohmann::json chat_config =
      nlohmann::json::parse(read_file(dir / "sp-chat-export" / "tokenizer_config.json"));
  EXPECT_EQ(chat_config.at("chat_template"),
            chat_template_jinja(ChatTemplate::kLlama3, "Answer in one line."));
  EXPECT_EQ(chat_result.notes.back(),
            "chat template: llama3 with its system message, as tokenizer_config.json's "
            "chat_template");
  EXPECT_FALSE(tokenizer.contains("chat_template"));

  run_export(moe_checkpoint, "sp-export", "bf16");  // --overwrite with a byte model
  EXPECT_FALSE(fs::exists(out / "tokenizer.model"));
  EXPECT_FALSE(fs::exists(out / "tokenizer_config.json"));
}

TEST(Safetensors, WriterRefusesWhatItWasNotTold) {
  const fs::path path = fs::temp_directory_path() / ("sy_st_" + std::to_string(::getpid()) + ".safetensors");
  {
    SafetensorsWriter writer(path.string(), {{"a", {2, 3}}, {"b", {}}}, SafetensorsDType::f32);
    const std::vector<float> five(5, 1.0f);
    EXPECT_THROW(writer.write_next(five), std::runtime_error);  // a is 6 values
    const std::vector<float> six = {1, 2, 3, 4, 5, 6};
    writer.write_next(six);
    EXPECT_THROW(writer.finish(), std::runtime_error);  // b not written
    const std::vector<float> scalar = {7};
    writer.write_next(scalar);
    writer.finish();
  }
  const StFile st = read_safetensors(path);
  EXPECT_EQ(st.values("a"), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(st.values("b"), (std::vector<float>{7}));
  EXPECT_EQ(st.tensors.at("b").shape, std::vector<int64_t>{});
  fs::remove(path);
  {
    SafetensorsWriter abandoned(path.string(), {{"a", {1}}}, SafetensorsDType::bf16);
  }
  EXPECT_FALSE(fs::exists(path.string() + ".tmp")) << "an unfinished file is removed";
  EXPECT_FALSE(fs::exists(path));
  EXPECT_THROW(SafetensorsWriter(path.string(), {{"a", {1}}, {"a", {2}}}, SafetensorsDType::f32),
               std::runtime_error);
}

}  // namespace
}  // namespace sy
