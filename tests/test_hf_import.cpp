// switchyard import (docs/export.md, "Import from Hugging Face transformers") and the
// safetensors reader under it: the reader's checks and conversions; export then import of small
// MoE and dense runs gives every parameter back bitwise (bf16: the rounded values), a sharded
// folder imports the same, and each refusal names its key, tensor or file.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "data/hf_tokenizer.h"
#include "data/tokenizer.h"
#include "tests/synthetic_corpus.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/export.h"
#include "trainer/hf_import.h"
#include "trainer/safetensors.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A safetensors file of one tensor per {name, dtype, shape, raw bytes}, laid out by hand.
std::string handmade_safetensors(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
  return bytes + header + data;
}

std::string reader_error(const fs::path& path) {
  try {
    SafetensorsReader reader(path.string());
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "(no error)";
}

// ---- the reader --------------------------------------------------------------------------------

TEST(SafetensorsReader, ReadsWhatTheWriterWrote) {
  const fs::path dir = temp_dir("sy_st_read");
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.1f, 1e-30f, -0.0f};
  for (const SafetensorsDType dtype : {SafetensorsDType::f32, SafetensorsDType::bf16}) {
    const fs::path path = dir / "a.safetensors";
    SafetensorsWriter writer(path.string(), {{"a", {2, 3}}, {"empty", {0}}}, dtype);
    writer.write_next(a);
    writer.write_next({});
    writer.finish();
    SafetensorsReader reader(path.string());
    ASSERT_EQ(reader.tensors().size(), 2u);
    EXPECT_EQ(reader.find("a")->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(reader.find("a")->dtype, dtype);
    EXPECT_EQ(reader.find("missing"), nullptr);
    const std::vector<float> got = reader.read_f32("a");
    for (size_t i = 0; i < a.size(); ++i) {
      const float want = dtype == SafetensorsDType::f32
                             ? a[i]
                             : bf16_bits_to_float(bf16_bits_round_nearest_even(a[i]));
      EXPECT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want)) << i;
    }
    EXPECT_TRUE(reader.read_f32("empty").empty());
  }
  fs::remove_all(dir);
}

TEST(SafetensorsReader, F16AndF64ConvertExactlyOrRounded) {
  // 1, -2, 65504 (the largest half), 2^-24 (the smallest subnormal), -0, infinity.
  const uint16_t half[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x7C00};
  const float want[] = {1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), -0.0f, INFINITY};
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(std::bit_cast<uint32_t>(f16_bits_to_float(half[i])),
              std::bit_cast<uint32_t>(want[i]));
  EXPECT_TRUE(std::isnan(f16_bits_to_float(0x7E00)));

  const fs::path dir = temp_dir("sy_st_f16");
  const double wide[] = {0.1, -3.0};
  std::string data(reinterpret_cast<const char*>(half), sizeof half);
  data.append(reinterpret_cast<const char*>(wide), sizeof wide);
  write_file(dir / "m.safetensors",
             handmade_safetensors(R"({"h":{"dtype":"F16","shape":[6],"data_offsets":[0,12]},)"
                                  R"("d":{"dtype":"F64","shape":[2],"data_offsets":[12,28]},)"
                                  R"("__metadata__":{"anything":"ignored"}})",
                                  data));
  SafetensorsReader reader((dir / "m.safetensors").string());
  EXPECT_EQ(reader.tensors()[0].name, "h") << "in file order";
  const std::vector<float> h = reader.read_f32("h");
  EXPECT_EQ(h[2], 65504.0f);
  EXPECT_EQ(h[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(reader.read_f32("d"), (std::vector<float>{0.1f, -3.0f}));
  fs::remove_all(dir);
}

TEST(SafetensorsReader, RefusesABrokenFileNamingIt) {
  const fs::path dir = temp_dir("sy_st_bad");
  const fs::path path = dir / "bad.safetensors";
  auto expect = [&](const std::string& header, const std::string& data, const std::string& what) {
    write_file(path, handmade_safetensors(header, data));
    const std::string error = reader_error(path);
    EXPECT_NE(error.find(path.string() + ": "), std::string::npos) << error;
    EXPECT_NE(error.find(what), std::string::npos) << error;
  };
  expect(R"({"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}})", "x",
         "tensor a: dtype I8 is not one of F32, BF16, F16, F64");
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234",
         "tensor a: data_offsets [0,8] are not within the 4 bytes of data (a truncated file?)");
  expect(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "1234",
         "tensor a: data_offsets [0,4] hold 4 bytes; shape [2] of F32 needs 8");
  expect(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
         "123456", "tensor b overlaps tensor a");
  expect(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "1234",
         "tensor a: shape [-1] is not of counts");
  expect(R"({"a": 5})", "", "tensor a: its header entry is not a JSON object");
  expect("[1, 2", "", "the header is not JSON");

  std::string bytes =
      handmade_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "1234");
  bytes[0] = static_cast<char>(0xFF);  // a header length past the end of the file
  write_file(path, bytes);
  EXPECT_NE(reader_error(path).find("header length 255 runs past the end of the file"),
            std::string::npos)
      << reader_error(path);
  write_file(path, "abc");
  EXPECT_NE(reader_error(path).find("3 bytes, too short"), std::string::npos);
  // A refused file is closed again (the fuzzer ran out of descriptors when it was not).
  auto open_descriptors = [] {
    return std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator());
  };
  const auto before = open_descriptors();
  for (int i = 0; i < 50; ++i) reader_error(path);
  EXPECT_EQ(open_descriptors(), before);
  fs::remove_all(dir);
}

// ---- import ------------------------------------------------------------------------------------

// A transformers folder held in memory: config.json and every tensor as fp32, in file order.
struct Folder {
  json config;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  std::map<std::string, std::vector<float>> values;

  void write(const fs::path& dir) const {
    fs::create_directories(dir);
    write_file(dir / "config.json", config.dump(2));
    std::vector<SafetensorsEntry> entries;
    for (const auto& [name, shape] : shapes) entries.push_back({name, shape});
    SafetensorsWriter writer((dir / "model.safetensors").string(), entries, SafetensorsDType::f32);
    for (const auto& [name, shape] : shapes) writer.write_next(values.at(name));
    writer.finish();
  }
  void erase(const std::string& name) {
    std::erase_if(shapes, [&](const auto& entry) { return entry.first == name; });
    values.erase(name);
  }
};

Folder read_folder(const fs::path& dir) {
  Folder folder;
  folder.config = json::parse(read_file(dir / "config.json"));
  SafetensorsReader reader((dir / "model.safetensors").string());
  for (const SafetensorsTensor& tensor : reader.tensors()) {
    folder.shapes.emplace_back(tensor.name, tensor.shape);
    folder.values[tensor.name] = reader.read_f32(tensor.name);
  }
  return folder;
}

// Every /model dataset of a checkpoint as fp32 bits, by path.
std::map<std::string, std::vector<uint32_t>> model_tensors(const std::string& path) {
  std::map<std::string, std::vector<uint32_t>> tensors;
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(file, 0) << path;
  std::vector<std::string> names;
  scan_checkpoint_tensors(
      path,
      [&](const std::vector<TensorInfo>& all) {
        for (const TensorInfo& info : all) names.push_back(info.path);
      },
      nullptr);
  for (const std::string& name : names) {
    if (name.rfind("/model/", 0) != 0) continue;
    const hid_t dataset = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
    const hid_t space = H5Dget_space(dataset);
    std::vector<uint32_t> bits(H5Sget_simple_extent_npoints(space));
    EXPECT_GE(H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, bits.data()), 0);
    tensors[name] = std::move(bits);
    H5Sclose(space);
    H5Dclose(dataset);
  }
  H5Fclose(file);
  return tensors;
}

// The model: and moe: sections of a checkpoint's stored config.
std::string shaping_keys(const std::string& checkpoint) {
  const std::string yaml = read_checkpoint_header(checkpoint).config;
  std::string out;
  bool inside = false;
  for (size_t begin = 0; begin < yaml.size();) {
    const size_t end = yaml.find('\n', begin);
    const std::string line = yaml.substr(begin, end - begin);
    if (line[0] != ' ') inside = line == "model:" || line == "moe:";
    if (inside) out += line + "\n";
    begin = end + 1;
  }
  return out;
}

class HfImport : public ::testing::Test {
 public:
  static inline fs::path dir;
  static inline std::string moe_checkpoint, dense_checkpoint;

  static Config base(const std::string& run) {
    Config c;
    c.seed = 7;
    c.model = {256, 16, 16, 2, 2, 512, true};  // V, S, D, L, H, F (the default), tied
    c.moe.num_experts = 4;
    c.moe.routing.top_k = 2;
    c.moe.expert_hidden = 12;
    c.moe.aux_loss_coef = 0.02;
    c.train.micro_batch_size = 2;
    c.train.steps = 2;
    c.train.warmup_steps = 1;
    c.train.lr = 1e-2;
    c.data.path = (dir / "tokens.h5").string();
    c.eval.every = 0;
    c.eval.tokens = 32;
    c.run.dir = (dir / run).string();
    return c;
  }

  static void SetUpTestSuite() {
    dir = temp_dir("sy_hf_import");
    test::write_repeated_text((dir / "tokens.h5").string(),
                              "each expert writes back what it made of the token. ", 30, 90);
    moe_checkpoint = train(base("moe"), {.print = false}).last_checkpoint;
    Config dense = base("dense");
    dense.moe = MoeConfig{};  // dense, and the moe keys a Llama cannot carry at their defaults
    dense.model.ffn_hidden = 24;
    dense.model.tie_embeddings = false;  // lm_head.weight too
    dense_checkpoint = train(dense, {.print = false}).last_checkpoint;
    export_to(moe_checkpoint, "moe-fp32", "fp32");
    export_to(dense_checkpoint, "dense-fp32", "fp32");
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }

  static fs::path export_to(const std::string& checkpoint, const std::string& name,
                            const std::string& dtype) {
    ExportOptions options;
    options.checkpoint = checkpoint;
    options.output = (dir / name).string();
    options.dtype = dtype;
    options.overwrite = true;
    export_checkpoint(options);
    return dir / name;
  }
  static ImportResult import_from(const fs::path& folder, const std::string& output,
                                  bool overwrite = true) {
    return import_hf({folder.string(), (dir / output).string(), overwrite});
  }
  // The error of importing `folder` ("" when it imports).
  static std::string import_error(const fs::path& folder) {
    try {
      import_from(folder, "refused.h5");
    } catch (const ImportError& error) {
      EXPECT_FALSE(fs::exists(dir / "refused.h5")) << "nothing written";
      return error.what();
    }
    fs::remove(dir / "refused.h5");
    return "";
  }
  // A copy of the fp32 MoE export changed by `edit`, written to DIR/<name>.
  static fs::path variant(const std::string& name, const std::function<void(Folder&)>& edit,
                          const std::string& from = "moe-fp32") {
    Folder folder = read_folder(dir / from);
    edit(folder);
    fs::remove_all(dir / name);
    folder.write(dir / name);
    return dir / name;
  }
};

TEST_F(HfImport, MoeRoundTripIsBitwise) {
  const ImportResult result = import_from(dir / "moe-fp32", "moe.h5");
  EXPECT_EQ(result.architecture, "MixtralForCausalLM");
  EXPECT_EQ(result.dtypes, std::vector<std::string>{"F32"});
  EXPECT_TRUE(result.tokenizer.empty());
  const std::string imported = (dir / "moe.h5").string();
  EXPECT_EQ(model_tensors(imported), model_tensors(moe_checkpoint));
  // model.ffn_hidden is not in a Mixtral; the run used the default, which the import keeps.
  EXPECT_EQ(shaping_keys(imported), shaping_keys(moe_checkpoint));
  const CheckpointHeader header = read_checkpoint_header(imported);
  EXPECT_EQ(header.step, 0);
  EXPECT_NE(header.provenance.find("imported_from: "), std::string::npos);

  // It loads into a model of its own stored config.
  const Config config = load_stored_config(header.config, imported, {});
  ModelSession session = make_model_session(config, world_comm());
  load_checkpoint(imported, config, *session.model, nullptr, session.groups, *session.backend);

  // export(import(export(x))) == export(x), byte for byte.
  const fs::path again = export_to(imported, "moe-again", "fp32");
  for (const char* file : {"config.json", "model.safetensors"})
    EXPECT_EQ(read_file(again / file), read_file(dir / "moe-fp32" / file)) << file;
}

TEST_F(HfImport, DenseUntiedRoundTripIsBitwise) {
  const ImportResult result = import_from(dir / "dense-fp32", "dense.h5");
  EXPECT_EQ(result.architecture, "LlamaForCausalLM");
  const std::string imported = (dir / "dense.h5").string();
  const auto tensors = model_tensors(imported);
  EXPECT_EQ(tensors, model_tensors(dense_checkpoint));
  EXPECT_EQ(tensors.count("/model/lm_head"), 1u);
  EXPECT_EQ(shaping_keys(imported), shaping_keys(dense_checkpoint));
}

// Grouped-query attention: num_key_value_heads becomes model.n_kv_heads, k_proj and v_proj
// their [D, Hkv*Dh] matrices.
TEST_F(HfImport, GroupedQueryAttentionRoundTripIsBitwise) {
  Config gqa = base("gqa-run");
  gqa.model.n_kv_heads = 1;
  const std::string checkpoint = train(gqa, {.print = false}).last_checkpoint;
  const std::string imported = (dir / "gqa.h5").string();
  import_from(export_to(checkpoint, "gqa-fp32", "fp32"), "gqa.h5");
  EXPECT_EQ(model_tensors(imported), model_tensors(checkpoint));
  EXPECT_EQ(shaping_keys(imported), shaping_keys(checkpoint));
  EXPECT_NE(shaping_keys(imported).find("n_kv_heads: 1"), std::string::npos);
}

// QK-norm and gates left unnormalised: an OLMoE (OlmoeForCausalLM), read back bitwise, with
// norm_topk_prob as moe.normalize_topk.
TEST_F(HfImport, OlmoeRoundTripIsBitwise) {
  Config olmoe = base("olmoe-run");
  olmoe.model.qk_norm = QkNorm::full;
  olmoe.moe.routing.normalize_topk = TopkNormalize::off;
  const std::string checkpoint = train(olmoe, {.print = false}).last_checkpoint;
  const std::string imported = (dir / "olmoe.h5").string();
  const ImportResult result = import_from(export_to(checkpoint, "olmoe-fp32", "fp32"), "olmoe.h5");
  EXPECT_EQ(result.architecture, "OlmoeForCausalLM");
  EXPECT_EQ(model_tensors(imported), model_tensors(checkpoint));
  EXPECT_EQ(shaping_keys(imported), shaping_keys(checkpoint));
  EXPECT_EQ(result.config.model.qk_norm, QkNorm::full);
  EXPECT_FALSE(result.config.moe.routing.normalizes());
  // norm_topk_prob true renormalises (the default at top_k 2); clip_qkv is refused.
  const ModelConfig renormalised =
      import_from(variant(
                      "olmoe-norm", [](Folder& folder) { folder.config["norm_topk_prob"] = true; },
                      "olmoe-fp32"),
                  "olmoe-norm.h5")
          .config.model;
  EXPECT_EQ(renormalised.qk_norm, QkNorm::full);
  EXPECT_NE(import_error(variant(
                             "olmoe-clip", [](Folder& folder) { folder.config["clip_qkv"] = 8.0; },
                             "olmoe-fp32"))
                .find("clip_qkv 8.0: our attention does not clamp"),
            std::string::npos);
}

// Qwen3 (per-head QK-norm, heads wider than D / H) and Qwen3-MoE (MoE in the layers that
// mlp_only_layers and decoder_sparse_step leave sparse), read back bitwise.
TEST_F(HfImport, Qwen3RoundTripIsBitwise) {
  Config qwen3 = base("qwen3-run");
  qwen3.moe = MoeConfig{};
  qwen3.model.ffn_hidden = 24;
  qwen3.model.qk_norm = QkNorm::per_head;
  qwen3.model.head_dim = 16;  // D 16, H 2: twice D / H
  qwen3.model.n_kv_heads = 1;
  std::string checkpoint = train(qwen3, {.print = false}).last_checkpoint;
  ImportResult result = import_from(export_to(checkpoint, "qwen3-fp32", "fp32"), "qwen3.h5");
  EXPECT_EQ(result.architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(model_tensors((dir / "qwen3.h5").string()), model_tensors(checkpoint));
  EXPECT_EQ(shaping_keys((dir / "qwen3.h5").string()), shaping_keys(checkpoint));

  Config moe = base("qwen3-moe-run");
  moe.model.ffn_hidden = 24;
  moe.model.qk_norm = QkNorm::per_head;
  moe.moe.layers = MoeLayers::listed({1});
  checkpoint = train(moe, {.print = false}).last_checkpoint;
  result = import_from(export_to(checkpoint, "qwen3-moe-fp32", "fp32"), "qwen3-moe.h5");
  EXPECT_EQ(result.architecture, "Qwen3MoeForCausalLM");
  EXPECT_EQ(model_tensors((dir / "qwen3-moe.h5").string()), model_tensors(checkpoint));
  EXPECT_EQ(shaping_keys((dir / "qwen3-moe.h5").string()), shaping_keys(checkpoint));
  // decoder_sparse_step 2 makes layer 1 (of 0, 1) the sparse one without mlp_only_layers.
  const fs::path stepped = variant(
      "qwen3-moe-step",
      [](Folder& folder) {
        folder.config["mlp_only_layers"] = json::array();
        folder.config["decoder_sparse_step"] = 2;
      },
      "qwen3-moe-fp32");
  import_from(stepped, "qwen3-moe-step.h5");
  EXPECT_EQ(model_tensors((dir / "qwen3-moe-step.h5").string()), model_tensors(checkpoint));
  // transformers 5 saves Qwen3-MoE's expert count as num_local_experts (its attribute_map).
  const fs::path renamed = variant(
      "qwen3-moe-local",
      [](Folder& folder) {
        folder.config["num_local_experts"] = folder.config["num_experts"];
        folder.config.erase("num_experts");
      },
      "qwen3-moe-fp32");
  import_from(renamed, "qwen3-moe-local.h5");
  EXPECT_EQ(model_tensors((dir / "qwen3-moe-local.h5").string()), model_tensors(checkpoint));
  EXPECT_NE(import_error(variant(
                             "qwen3-moe-both",
                             [](Folder& folder) { folder.config["num_local_experts"] = 8; },
                             "qwen3-moe-fp32"))
                .find("num_local_experts 8 and num_experts 4 disagree"),
            std::string::npos);
  EXPECT_NE(import_error(variant(
                             "qwen3-moe-far",
                             [](Folder& folder) { folder.config["mlp_only_layers"] = {5}; },
                             "qwen3-moe-fp32"))
                .find("mlp_only_layers holds 5, not a layer index below num_hidden_layers 2"),
            std::string::npos);
  EXPECT_NE(import_error(variant(
                             "qwen3-window",
                             [](Folder& folder) {
                               folder.config["use_sliding_window"] = true;
                               folder.config["sliding_window"] = 8;
                             },
                             "qwen3-fp32"))
                .find("sliding_window 8 is shorter than max_position_embeddings 16"),
            std::string::npos);
  EXPECT_NE(
      import_error(variant(
                       "qwen3-layer-types",
                       [](Folder& folder) {
                         folder.config["layer_types"] = {"full_attention", "sliding_attention"};
                       },
                       "qwen3-fp32"))
          .find("layer_types holds \"sliding_attention\""),
      std::string::npos);
}

// Mistral (read, never written): Llama's tensors, so a Llama export relabelled imports as the
// same weights; its sliding window refused as Mixtral's, MistralConfig's default 4096 applying
// when config.json leaves the key out (null: none).
TEST_F(HfImport, MistralIsReadAsLlama) {
  auto mistral = [](json& c) {
    c["architectures"] = {"MistralForCausalLM"};
    c["model_type"] = "mistral";
  };
  const fs::path folder = variant(
      "mistral-null-window",
      [&](Folder& f) {
        mistral(f.config);
        f.config["sliding_window"] = nullptr;
      },
      "dense-fp32");
  const ImportResult result = import_from(folder, "mistral.h5");
  EXPECT_EQ(result.architecture, "MistralForCausalLM");
  EXPECT_EQ(model_tensors((dir / "mistral.h5").string()), model_tensors(dense_checkpoint));
  EXPECT_NE(import_error(variant(
                             "mistral-window",
                             [&](Folder& f) {
                               mistral(f.config);
                               f.config.erase("sliding_window");
                               f.config["max_position_embeddings"] = 32768;
                             },
                             "dense-fp32"))
                .find("sliding_window 4096 (absent: MistralConfig's default) is shorter than "
                      "max_position_embeddings 32768"),
            std::string::npos);
}

// transformers 5's fused experts (save_pretrained(save_original_format=False)): per layer
// mlp.experts.gate_up_proj [E, 2F, D] and mlp.experts.down_proj [E, D, F], and Mixtral's router
// as mlp.gate.weight. They import as the per-expert tensors do.
TEST_F(HfImport, FusedExpertsImportAsPerExpertTensors) {
  const int64_t E = 4, F = 12, D = 16;
  auto fuse = [&](Folder& folder, const std::string& block, const char* const names[3]) {
    for (int64_t l = 0; l < 2; ++l) {
      const std::string layer = "model.layers." + std::to_string(l) + ".";
      std::vector<float> gate_up, down;
      for (int64_t e = 0; e < E; ++e) {
        const std::string expert = layer + block + "experts." + std::to_string(e) + ".";
        for (int part = 0; part < 3; ++part) {
          const std::string name = expert + names[part] + ".weight";
          const std::vector<float>& values = folder.values.at(name);
          (part < 2 ? gate_up : down)
              .insert((part < 2 ? gate_up : down).end(), values.begin(), values.end());
          folder.erase(name);
        }
      }
      // gate_up: each expert's gate rows then its up rows, as appended above.
      folder.shapes.emplace_back(layer + "mlp.experts.gate_up_proj",
                                 std::vector<int64_t>{E, 2 * F, D});
      folder.values[layer + "mlp.experts.gate_up_proj"] = gate_up;
      folder.shapes.emplace_back(layer + "mlp.experts.down_proj", std::vector<int64_t>{E, D, F});
      folder.values[layer + "mlp.experts.down_proj"] = down;
      if (block != "mlp.") {  // Mixtral's router is renamed too
        const std::string router = layer + block + "gate.weight";
        folder.shapes.emplace_back(layer + "mlp.gate.weight", std::vector<int64_t>{E, D});
        folder.values[layer + "mlp.gate.weight"] = folder.values.at(router);
        folder.erase(router);
      }
    }
  };
  const char* const mixtral[3] = {"w1", "w3", "w2"};
  import_from(
      variant("fused-mixtral", [&](Folder& folder) { fuse(folder, "block_sparse_moe.", mixtral); }),
      "fused-mixtral.h5");
  EXPECT_EQ(model_tensors((dir / "fused-mixtral.h5").string()), model_tensors(moe_checkpoint));

  Config olmoe = base("olmoe-fused-run");
  olmoe.model.qk_norm = QkNorm::full;
  const std::string checkpoint = train(olmoe, {.print = false}).last_checkpoint;
  export_to(checkpoint, "olmoe-unfused", "fp32");
  const char* const olmoe_names[3] = {"gate_proj", "up_proj", "down_proj"};
  import_from(variant(
                  "fused-olmoe", [&](Folder& folder) { fuse(folder, "mlp.", olmoe_names); },
                  "olmoe-unfused"),
              "fused-olmoe.h5");
  EXPECT_EQ(model_tensors((dir / "fused-olmoe.h5").string()), model_tensors(checkpoint));
  // A fused tensor of another shape is refused by name.
  EXPECT_NE(import_error(variant(
                             "fused-wrong",
                             [&](Folder& folder) {
                               fuse(folder, "mlp.", olmoe_names);
                               for (auto& [name, shape] : folder.shapes)
                                 if (name == "model.layers.0.mlp.experts.down_proj")
                                   shape = {E, F, D};
                             },
                             "olmoe-unfused"))
                .find("tensor model.layers.0.mlp.experts.down_proj has shape [4, 12, 16], "
                      "config.json needs [4, 16, 12]"),
            std::string::npos);
}

TEST_F(HfImport, Bf16GivesTheRoundedValues) {
  const ImportResult result = import_from(export_to(moe_checkpoint, "moe-bf16", "bf16"), "bf16.h5");
  EXPECT_EQ(result.dtypes, std::vector<std::string>{"BF16"});
  const auto original = model_tensors(moe_checkpoint);
  for (const auto& [name, bits] : model_tensors((dir / "bf16.h5").string())) {
    const std::vector<uint32_t>& before = original.at(name);
    ASSERT_EQ(bits.size(), before.size()) << name;
    for (size_t i = 0; i < bits.size(); ++i) {
      const uint16_t rounded = bf16_bits_round_nearest_even(std::bit_cast<float>(before[i]));
      ASSERT_EQ(bits[i], uint32_t{rounded} << 16) << name << "[" << i << "]";
    }
  }
}

TEST_F(HfImport, ShardedFolderImportsTheSame) {
  const Folder folder = read_folder(dir / "moe-fp32");
  const fs::path sharded = dir / "sharded";
  fs::create_directories(sharded);
  write_file(sharded / "config.json", folder.config.dump(2));
  json index;
  index["metadata"] = {{"total_size", 0}};
  const size_t half = folder.shapes.size() / 2;
  for (int shard = 0; shard < 2; ++shard) {
    const std::string name = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
    std::vector<SafetensorsEntry> entries;
    for (size_t i = shard ? half : 0; i < (shard ? folder.shapes.size() : half); ++i) {
      entries.push_back({folder.shapes[i].first, folder.shapes[i].second});
      index["weight_map"][folder.shapes[i].first] = name;
    }
    SafetensorsWriter writer((sharded / name).string(), entries, SafetensorsDType::f32);
    for (const SafetensorsEntry& entry : entries) writer.write_next(folder.values.at(entry.name));
    writer.finish();
  }
  write_file(sharded / "model.safetensors.index.json", index.dump(2));
  const ImportResult result = import_from(sharded, "sharded.h5");
  EXPECT_EQ(result.weights.size(), 2u);
  EXPECT_EQ(model_tensors((dir / "sharded.h5").string()), model_tensors(moe_checkpoint));

  // A weight_map that puts a tensor in the wrong shard is refused.
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
  write_file(sharded / "model.safetensors.index.json", index.dump(2));
  EXPECT_NE(import_error(sharded).find("weight_map puts model.norm.weight in "
                                       "model-00001-of-00002.safetensors, which does not hold it"),
            std::string::npos);
  // And a shard's tensor that the weight_map leaves out.
  index["weight_map"].erase("model.norm.weight");
  write_file(sharded / "model.safetensors.index.json", index.dump(2));
  EXPECT_NE(import_error(sharded).find(": tensor model.norm.weight is not where"),
            std::string::npos);
}

// rope_theta (transformers 4), rope_parameters.rope_theta (5) and rms_norm_eps become
// model.rope_theta and model.norm_eps; a key left out means transformers' default.
TEST_F(HfImport, RotaryThetaAndNormEpsAreRead) {
  auto imported_model = [&](const std::string& name, const std::function<void(json&)>& edit) {
    return import_from(variant(name, [&](Folder& folder) { edit(folder.config); }), name + ".h5")
        .config.model;
  };
  ModelConfig m = imported_model("theta4", [](json& c) {
    c["rope_theta"] = 500000.0;
    c.erase("rope_parameters");
    c["rms_norm_eps"] = 1e-6;
  });
  EXPECT_EQ(m.rope_theta, 500000.0);
  EXPECT_EQ(m.norm_eps, 1e-6);
  m = imported_model("theta5", [](json& c) {
    c.erase("rope_theta");
    c["rope_parameters"]["rope_theta"] = 1e6;
  });
  EXPECT_EQ(m.rope_theta, 1e6);
  EXPECT_EQ(m.norm_eps, 1e-5);
  m = imported_model("no-theta", [](json& c) {  // MixtralConfig's defaults
    c.erase("rope_theta");
    c.erase("rope_parameters");
    c.erase("rms_norm_eps");
  });
  EXPECT_EQ(m.rope_theta, 1e6);
  EXPECT_EQ(m.norm_eps, 1e-5);
  m = import_from(variant(
                      "llama-defaults",
                      [](Folder& folder) {
                        folder.config.erase("rms_norm_eps");
                        folder.config.erase("rope_theta");
                        folder.config.erase("rope_parameters");
                      },
                      "dense-fp32"),
                  "llama-defaults.h5")
          .config.model;  // LlamaConfig's defaults
  EXPECT_EQ(m.rope_theta, 10000.0);
  EXPECT_EQ(m.norm_eps, 1e-6);
}

// Scaled rotary: Llama 3.1's llama3 and linear, from transformers 4's rope_scaling or 5's
// rope_parameters, into model.rope_*; a round trip of a model trained with it is bitwise; the
// types that also scale attention or depend on the length, and two dicts that disagree, are
// refused.
TEST_F(HfImport, RopeScalingIsRead) {
  const json llama31 = {{"rope_type", "llama3"},
                        {"factor", 8.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}};
  auto imported_model = [&](const std::string& name, const std::function<void(json&)>& edit) {
    return import_from(variant(
                           name, [&](Folder& folder) { edit(folder.config); }, "dense-fp32"),
                       name + ".h5")
        .config.model;
  };
  ModelConfig m = imported_model("llama31-v4", [&](json& c) {
    c.erase("rope_parameters");
    c["rope_theta"] = 500000.0;
    c["rope_scaling"] = llama31;
  });
  EXPECT_EQ(m.rope_scaling, RopeScaling::llama3);
  EXPECT_EQ(m.rope_theta, 500000.0);
  EXPECT_EQ(m.rope_factor, 8.0);
  EXPECT_EQ(m.rope_original_max_position, 8192);
  m = imported_model("llama31-v5", [&](json& c) {
    c.erase("rope_theta");
    c["rope_parameters"] = llama31;
    c["rope_parameters"]["rope_theta"] = 500000.0;
  });
  EXPECT_EQ(m.rope_scaling, RopeScaling::llama3);
  EXPECT_EQ(m.rope_theta, 500000.0);
  m = imported_model("linear", [&](json& c) {
    c["rope_scaling"] = {{"type", "linear"}, {"factor", 2}};
    c.erase("rope_parameters");
  });
  EXPECT_EQ(m.rope_scaling, RopeScaling::linear);
  EXPECT_EQ(m.rope_factor, 2.0);

  Config scaled = base("llama31-run");
  scaled.moe = MoeConfig{};
  scaled.model.ffn_hidden = 24;
  scaled.model.rope_theta = 5e5;
  scaled.model.rope_scaling = RopeScaling::llama3;
  scaled.model.rope_factor = 8.0;
  scaled.model.rope_original_max_position = 200;  // Dh 8: pair 0 kept, 1 blended, 2 and 3 divided
  const std::string checkpoint = train(scaled, {.print = false}).last_checkpoint;
  import_from(export_to(checkpoint, "llama31-fp32", "fp32"), "llama31.h5");
  EXPECT_EQ(model_tensors((dir / "llama31.h5").string()), model_tensors(checkpoint));
  EXPECT_EQ(shaping_keys((dir / "llama31.h5").string()), shaping_keys(checkpoint));

  auto refused = [&](const std::string& name, const std::function<void(json&)>& edit) {
    return import_error(variant(
        name, [&](Folder& folder) { edit(folder.config); }, "dense-fp32"));
  };
  EXPECT_NE(refused("yarn",
                    [](json& c) {
                      c["rope_scaling"] = {{"rope_type", "yarn"}};
                    })
                .find("rope type \"yarn\" is not supported (default, linear and llama3 are)"),
            std::string::npos);
  EXPECT_NE(refused("no-factor",
                    [](json& c) {
                      c["rope_scaling"] = {{"rope_type", "linear"}};
                    })
                .find(": no factor"),
            std::string::npos);
  EXPECT_NE(refused("disagree",
                    [&](json& c) {
                      c["rope_scaling"] = llama31;
                      c["rope_parameters"]["rope_type"] = "default";
                    })
                .find("differs from rope_parameters"),
            std::string::npos);
  EXPECT_NE(refused("partial", [](json& c) { c["rope_parameters"]["partial_rotary_factor"] = 0.5; })
                .find("rope_parameters.partial_rotary_factor 0.5: not part of the default rotary"),
            std::string::npos);
}

TEST_F(HfImport, RefusesWhatOurModelComputesDifferently) {
  auto config_error = [&](const std::string& name, const std::function<void(json&)>& edit) {
    return import_error(variant(name, [&](Folder& folder) { edit(folder.config); }));
  };
  const std::string config_path = (dir / "gqa" / "config.json").string();
  EXPECT_EQ(config_error("gqa", [](json& c) { c["num_key_value_heads"] = 3; }),
            config_path +
                ": num_key_value_heads 3 does not divide num_attention_heads 2: each key/value "
                "head serves a whole group of query heads");
  EXPECT_NE(config_error("theta", [](json& c) { c["rope_theta"] = 500000.0; })
                .find("config.json: rope_theta 500000.0 differs from "
                      "rope_parameters.rope_theta 10000.0"),
            std::string::npos);
  EXPECT_NE(config_error("yarn",
                         [](json& c) {
                           c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
                         })
                .find("rope_scaling {"),
            std::string::npos);
  EXPECT_NE(
      config_error("gelu", [](json& c) { c["hidden_act"] = "gelu"; }).find("hidden_act \"gelu\""),
      std::string::npos);
  EXPECT_NE(
      config_error("bias", [](json& c) { c["attention_bias"] = true; }).find("attention_bias true"),
      std::string::npos);
  EXPECT_NE(config_error("window", [](json& c) { c["sliding_window"] = 8; })
                .find("sliding_window 8 is shorter than max_position_embeddings 16"),
            std::string::npos);
  EXPECT_NE(config_error("gemma", [](json& c) { c["architectures"] = {"GemmaForCausalLM"}; })
                .find("architectures [\"GemmaForCausalLM\"] is not supported"),
            std::string::npos);
  EXPECT_NE(config_error("olmoe-head-dim",
                         [](json& c) {
                           c["architectures"] = {"OlmoeForCausalLM"};
                           c["model_type"] = "olmoe";
                           c["head_dim"] = 16;
                         })
                .find("head_dim 16 differs from hidden_size / num_attention_heads = 8: OLMoE's "
                      "q_norm is as wide as hidden_size"),
            std::string::npos);
  // An impossible model, by the config's own validation.
  EXPECT_NE(config_error("odd", [](json& c) { c["num_experts_per_tok"] = 5; })
                .find("moe.top_k: 5 exceeds moe.num_experts (4)"),
            std::string::npos);
}

TEST_F(HfImport, RefusesTensorsThatDoNotFit) {
  const std::string gate = "model.layers.1.block_sparse_moe.gate.weight";
  EXPECT_NE(import_error(variant("missing", [&](Folder& f) { f.erase(gate); }))
                .find("model.safetensors: missing tensor " + gate),
            std::string::npos);
  const std::string error = import_error(variant("shape", [&](Folder& f) {
    for (auto& [name, shape] : f.shapes)
      if (name == gate) shape = {2, 32};
  }));
  EXPECT_NE(error.find("tensor " + gate + " has shape [2, 32], config.json needs [4, 16]"),
            std::string::npos)
      << error;
  EXPECT_NE(
      import_error(variant("extra",
                           [&](Folder& f) {
                             f.shapes.push_back({"model.layers.0.self_attn.q_proj.bias", {16}});
                             f.values["model.layers.0.self_attn.q_proj.bias"].assign(16, 0.0f);
                           }))
          .find("unexpected tensor model.layers.0.self_attn.q_proj.bias"),
      std::string::npos);
  // The rotary buffer older transformers saved is let pass.
  EXPECT_EQ(import_error(
                variant("inv-freq",
                        [&](Folder& f) {
                          f.shapes.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {4}});
                          f.values["model.layers.0.self_attn.rotary_emb.inv_freq"].assign(4, 1.0f);
                        })),
            "");
  // Tied: an lm_head.weight equal to the embedding is accepted, another refused.
  auto with_head = [&](float bump) {
    return [bump](Folder& f) {
      f.shapes.push_back({"lm_head.weight", {256, 16}});
      f.values["lm_head.weight"] = f.values.at("model.embed_tokens.weight");
      f.values["lm_head.weight"][5] += bump;
    };
  };
  EXPECT_EQ(import_error(variant("tied-same", with_head(0.0f))), "");
  EXPECT_NE(import_error(variant("tied-differs", with_head(1.0f)))
                .find("lm_head.weight differs from model.embed_tokens.weight, but "
                      "tie_word_embeddings is true"),
            std::string::npos);
}

TEST_F(HfImport, RefusesBrokenFilesAndOutputs) {
  const fs::path broken = variant("broken", [](Folder&) {});
  const fs::path weights = broken / "model.safetensors";
  std::string bytes = read_file(weights);
  write_file(weights, bytes.substr(0, bytes.size() - 10));  // truncated
  EXPECT_NE(import_error(broken).find("are not within the"), std::string::npos);
  std::string past_end = bytes;
  past_end[5] = 1;  // header length beyond 2^40
  write_file(weights, past_end);
  EXPECT_NE(import_error(broken).find(weights.string() + ": header length"), std::string::npos);
  std::string unknown = bytes;
  const size_t dtype = unknown.find("\"F32\"");
  unknown.replace(dtype, 5, "\"I32\"");
  write_file(weights, unknown);
  EXPECT_NE(import_error(broken).find("dtype I32 is not one of F32, BF16, F16, F64"),
            std::string::npos);

  fs::remove(weights);
  write_file(broken / "pytorch_model.bin", "not really");
  EXPECT_NE(import_error(broken).find("holds pytorch_model.bin only: convert it to safetensors"),
            std::string::npos);

  import_from(dir / "moe-fp32", "exists.h5");
  try {
    import_from(dir / "moe-fp32", "exists.h5", false);
    ADD_FAILURE() << "an existing output was overwritten";
  } catch (const ImportError& error) {
    EXPECT_EQ(std::string(error.what()),
              (dir / "exists.h5").string() + ": exists (pass --overwrite to replace it)");
  }
  EXPECT_NE(import_error(dir / "nowhere").find("not a folder"), std::string::npos);
}

TEST_F(HfImport, SentencePieceTokenizerGoesIntoTheCheckpoint) {
  const fs::path sp = dir / "sp-train";
  fs::create_directories(sp);
  {
    std::ofstream text(sp / "corpus.txt");
    for (int line = 0; line < 300; ++line)
      text << "the router sends token " << line << " to expert " << line % 4 << ".\n";
  }
  SentencePieceTrainOptions options;
  options.inputs = {(sp / "corpus.txt").string()};
  options.vocab_size = 300;
  options.output = (sp / "tok.model").string();
  ASSERT_EQ(train_sentencepiece(options), 300);

  // Too many pieces for vocab_size 256.
  const fs::path small = variant("sp-small", [](Folder&) {});
  fs::copy_file(options.output, small / "tokenizer.model");
  EXPECT_NE(import_error(small).find("tokenizer.model: 300 pieces, more than config.json's "
                                     "vocab_size 256"),
            std::string::npos);

  // vocab_size 320: the embedding grows by 64 rows.
  const fs::path fits = variant("sp-fits", [](Folder& f) {
    f.config["vocab_size"] = 320;
    for (auto& [name, shape] : f.shapes)
      if (name == "model.embed_tokens.weight") shape = {320, 16};
    f.values["model.embed_tokens.weight"].resize(320 * 16, 0.25f);
  });
  fs::copy_file(options.output, fits / "tokenizer.model");
  const ImportResult result = import_from(fits, "sp.h5");
  EXPECT_EQ(result.tokenizer, "tokenizer.model");
  TokenData stored;
  ASSERT_TRUE(read_checkpoint_tokenizer((dir / "sp.h5").string(), stored));
  EXPECT_EQ(stored.tokenizer, "sentencepiece");
  EXPECT_EQ(stored.tokenizer_model, read_file(options.output));
  EXPECT_EQ(tokenizer_of(stored, "sp.h5")->vocab_size(), 300);
}

// A folder with tokenizer.json (and its tokenizer_config.json's EOS) and no tokenizer.model: the
// checkpoint carries the JSON and the EOS, and export writes both back for transformers.
TEST_F(HfImport, TokenizerJsonGoesIntoTheCheckpointAndBack) {
  if (!hf_tokenizers_available()) GTEST_SKIP() << "built without ICU (libicu-dev)";
  const nlohmann::json tokenizer_json = {
      {"added_tokens",
       {{{"id", 2}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", nlohmann::json::array()}}}};
  const fs::path folder = variant("tokenizer-json", [](Folder&) {});
  std::ofstream(folder / "tokenizer.json") << tokenizer_json.dump();
  std::ofstream(folder / "tokenizer_config.json") << R"({"eos_token": "<|endoftext|>"})";
  const ImportResult result = import_from(folder, "json.h5");
  EXPECT_EQ(result.tokenizer, "tokenizer.json");
  TokenData stored;
  ASSERT_TRUE(read_checkpoint_tokenizer((dir / "json.h5").string(), stored));
  EXPECT_EQ(stored.tokenizer, "huggingface");
  EXPECT_EQ(stored.tokenizer_model, read_file(folder / "tokenizer.json"));
  EXPECT_EQ(stored.tokenizer_eos_token, "<|endoftext|>");
  const auto tokenizer = tokenizer_of(stored, "json.h5");
  EXPECT_EQ(tokenizer->eos_id(), 2);
  EXPECT_EQ(tokenizer->encode("ab<|endoftext|>"), (std::vector<int32_t>{0, 1, 2}));

  const fs::path exported = export_to((dir / "json.h5").string(), "json-export", "fp32");
  EXPECT_EQ(read_file(exported / "tokenizer.json"), read_file(folder / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(exported / "tokenizer.model"));
  const auto config = nlohmann::json::parse(read_file(exported / "tokenizer_config.json"));
  EXPECT_EQ(config["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");

  // A tokenizer.json of another kind leaves the import without a tokenizer, and says why.
  const fs::path wordpiece = variant("tokenizer-wordpiece", [](Folder&) {});
  nlohmann::json other = tokenizer_json;
  other["model"]["type"] = "WordPiece";
  std::ofstream(wordpiece / "tokenizer.json") << other.dump();
  const ImportResult without = import_from(wordpiece, "wordpiece.h5");
  EXPECT_TRUE(without.tokenizer.empty());
  bool noted = false;
  for (const std::string& note : without.notes)
    noted = noted || note.find("model WordPiece is not supported") != std::string::npos;
  EXPECT_TRUE(noted);
}

}  // namespace
}  // namespace sy
