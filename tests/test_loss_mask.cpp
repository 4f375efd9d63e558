// Loss masks (docs/data.md, "Loss masks"): a token file's /train_mask and /val_mask, the
// targets they ignore in training batches and validation, prepare-data --format sft, and the
// model's objective over counted targets only. The layouts' agreement on masked data is
// DistTrain.EquivalenceWithALossMask (tests/test_dist_train.cpp).
#include <gtest/gtest.h>
#include <hdf5.h>

#include <fstream>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/sampler.h"
#include "data/token_file.h"
#include "model/transformer.h"
#include "tests/temp_folder.h"
#include "trainer/config.h"

namespace sy {
namespace {

class LossMaskTest : public test::TempFolderTest {
 protected:
  LossMaskTest() : TempFolderTest("sy_test_loss_mask") {}
};

using test::expect_error;

// A split of n tokens and a mask that keeps every third token but the first of each ten.
void make_split(int64_t n, uint32_t salt, std::vector<int32_t>& tokens,
                std::vector<uint8_t>& mask) {
  tokens.resize(n);
  mask.resize(n);
  for (int64_t k = 0; k < n; k++) {
    tokens[k] = static_cast<int32_t>((k * 37 + salt) % 251);
    mask[k] = (k % 3 != 0 && k % 10 != 1) ? 1 : 0;
  }
}

TEST_F(LossMaskTest, WrittenReadAndAppliedToTrainingAndValidationTargets) {
  std::vector<int32_t> train, val;
  std::vector<uint8_t> train_mask, val_mask;
  make_split(500, 3, train, train_mask);
  make_split(130, 5, val, val_mask);
  const std::string file = path("masked.h5");
  {
    TokenFileWriter writer(file, 256, "bytes", {}, {}, /*masked=*/true);
    writer.append_train(train.data(), 300, train_mask.data());
    writer.append_train(train.data() + 300, 200, train_mask.data() + 300);
    writer.append_val(val.data(), 130, val_mask.data());
    writer.finish();
  }
  const TokenFile opened = open_token_file(file);
  ASSERT_TRUE(opened.train->masked());
  ASSERT_TRUE(opened.val->masked());
  std::vector<uint8_t> read(500);
  opened.train->read_mask(0, 500, read.data());
  EXPECT_EQ(read, train_mask);

  // Training targets: the shifted tokens, kIgnoreTarget where the target's mask is 0.
  const int64_t S = 16, B = 3;
  const StepSampler sampler(opened.train, S, 11);
  EXPECT_TRUE(sampler.masked());
  std::vector<int32_t> inputs(B * S), targets(B * S);
  int64_t ignored = 0;
  for (int64_t step = 0; step < 20; step++) {
    sampler.group(step, 1, B, inputs.data(), targets.data());
    for (int64_t b = 0; b < B; b++) {
      const int64_t start = sampler.offset(step, B + b);
      for (int64_t t = 0; t < S; t++) {
        EXPECT_EQ(inputs[b * S + t], train[start + t]);
        const int64_t target = start + t + 1;
        EXPECT_EQ(targets[b * S + t], train_mask[target] ? train[target] : kIgnoreTarget);
        ignored += train_mask[target] == 0;
      }
    }
  }
  EXPECT_GT(ignored, 0);

  // Validation: from the file by window and from the set held in memory, the same targets.
  const int64_t sequences = 4;
  const std::vector<int32_t> set = read_validation_tokens(*opened.val, sequences, S);
  const std::vector<uint8_t> set_mask = read_validation_mask(*opened.val, sequences, S);
  ASSERT_EQ(set_mask.size(), set.size());
  std::vector<int32_t> from_file(S), from_file_inputs(S), in_memory(S), in_memory_inputs(S);
  for (int64_t i = 0; i < sequences; i++) {
    validation_batch(*opened.val, i, 1, S, from_file_inputs.data(), from_file.data());
    validation_batch(set, set_mask, i, 1, S, in_memory_inputs.data(), in_memory.data());
    EXPECT_EQ(from_file, in_memory);
    for (int64_t t = 0; t < S; t++) {
      const int64_t target = i * S + t + 1;
      EXPECT_EQ(from_file[t], val_mask[target] ? val[target] : kIgnoreTarget);
    }
  }

  // A file written without masks reads unmasked: every target is the token.
  const std::string plain = path("plain.h5");
  write_token_file(plain, train, val, 256, "bytes");
  const TokenFile unmasked = open_token_file(plain);
  EXPECT_FALSE(unmasked.train->masked());
  EXPECT_TRUE(read_validation_mask(*unmasked.val, sequences, S).empty());
  EXPECT_FALSE(StepSampler(unmasked.train, S, 11).masked());
}

TEST_F(LossMaskTest, WriterAppendsWithoutAMaskAsAllTargets) {
  const std::vector<int32_t> tokens{1, 2, 3, 4, 5, 6};
  const std::vector<uint8_t> mask{0, 1, 0, 1, 1, 0};
  const std::string file = path("mixed.h5");
  {
    TokenFileWriter writer(file, 256, "bytes", {}, {}, true);
    writer.append_train(tokens.data(), 6, mask.data());
    writer.append_train(tokens.data(), 3);  // no mask: trained on
    writer.append_val(tokens.data(), 6);
    writer.finish();
  }
  const TokenFile opened = open_token_file(file);
  std::vector<uint8_t> read(9);
  opened.train->read_mask(0, 9, read.data());
  EXPECT_EQ(read, (std::vector<uint8_t>{0, 1, 0, 1, 1, 0, 1, 1, 1}));
  // A mask for a file written without one is a mistake, not silently dropped.
  TokenFileWriter unmasked(path("unmasked.h5"), 256, "bytes");
  expect_error([&] { unmasked.append_train(tokens.data(), 6, mask.data()); },
               {"a loss mask for a file written without one"});
}

// Adds dataset `name` of uint8 `values` to an existing token file.
void add_dataset(const std::string& file, const char* name, const std::vector<uint8_t>& values) {
  hid_t h5 = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(h5, 0);
  const hsize_t length = values.size();
  hid_t space = H5Screate_simple(1, &length, nullptr);
  hid_t dataset = H5Dcreate2(h5, name, H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(dataset, 0);
  ASSERT_GE(H5Dwrite(dataset, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  H5Dclose(dataset), H5Sclose(space), H5Fclose(h5);
}

TEST_F(LossMaskTest, DamagedMasksAreRefusedNamingTheFile) {
  const std::vector<int32_t> train{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, val{1, 2, 3};
  const std::string one = path("one.h5");
  write_token_file(one, train, val, 256, "bytes");
  add_dataset(one, "/train_mask", std::vector<uint8_t>(10, 1));
  expect_error([&] { open_token_file(one); },
               {one + ": has a loss mask for /train but not for /val"});

  const std::string short_mask = path("short.h5");
  write_token_file(short_mask, train, val, 256, "bytes");
  add_dataset(short_mask, "/train_mask", std::vector<uint8_t>(9, 1));
  add_dataset(short_mask, "/val_mask", std::vector<uint8_t>(3, 1));
  expect_error([&] { open_token_file(short_mask); },
               {short_mask + ": /train_mask: the loss mask has 9 values for 10 tokens"});

  const std::string two = path("two.h5");
  write_token_file(two, train, val, 256, "bytes");
  add_dataset(two, "/train_mask", {1, 1, 1, 1, 1, 2, 1, 1, 1, 1});
  add_dataset(two, "/val_mask", std::vector<uint8_t>(3, 1));
  const TokenFile opened = open_token_file(two);
  std::vector<uint8_t> read(10);
  expect_error([&] { opened.train->read_mask(0, 10, read.data()); },
               {two + ": token 2 at /train_mask[5] is outside [0, 2)"});
}

TEST_F(LossMaskTest, SftExamplesTrainOnTheResponseOnly) {
  const std::string input = path("chat.jsonl");
  {
    std::ofstream out(input);
    out << R"({"prompt": "Q: 2+2?", "response": " 4", "id": 1})"
        << "\n\n";
    out << R"({"prompt": "Q: hi", "response": " hello"})"
        << "\n";
    out << R"({"response": " b", "prompt": "a"})"
        << "\n";
  }
  PrepareOptions options;
  options.inputs = {input};
  options.format = "sft";
  options.output = path("sft.h5");
  options.val_fraction = 0.3;  // floor(0.7 * 3) = 2 training examples, 1 validation
  const PrepareStats stats = prepare_data(options);
  EXPECT_EQ(stats.documents, 3);
  EXPECT_EQ(stats.val_documents, 1);
  // bytes: no BOS, no EOS: each example ends with "\n", trained on.
  const std::string train_text = std::string("Q: 2+2?") + " 4\n" + "Q: hi" + " hello\n";
  EXPECT_EQ(stats.train_tokens, static_cast<int64_t>(train_text.size()));
  EXPECT_EQ(stats.train_targets, 3 + 7);
  const TokenFile opened = open_token_file(options.output);
  EXPECT_EQ(opened.chat_template, "");  // no conversation was rendered
  ASSERT_EQ(opened.train->size(), static_cast<int64_t>(train_text.size()));
  std::vector<int32_t> tokens(train_text.size());
  std::vector<uint8_t> mask(train_text.size());
  opened.train->read(0, opened.train->size(), tokens.data());
  opened.train->read_mask(0, opened.train->size(), mask.data());
  std::vector<uint8_t> expected_mask;
  for (const auto& [prompt, response] : std::vector<std::pair<std::string, std::string>>{
           {"Q: 2+2?", " 4\n"}, {"Q: hi", " hello\n"}}) {
    expected_mask.insert(expected_mask.end(), prompt.size(), 0);
    expected_mask.insert(expected_mask.end(), response.size(), 1);
  }
  EXPECT_EQ(mask, expected_mask);
  for (size_t k = 0; k < train_text.size(); k++)
    EXPECT_EQ(tokens[k], static_cast<unsigned char>(train_text[k]));
  std::vector<uint8_t> val_mask(4);
  opened.val->read_mask(0, 4, val_mask.data());  // "a b\n"
  EXPECT_EQ(val_mask, (std::vector<uint8_t>{0, 1, 1, 1}));
  // Each example is a document (docs/data.md, "Token file"), read through the masked split.
  ASSERT_NE(opened.train->document_starts(), nullptr);
  EXPECT_EQ(*opened.train->document_starts(), (std::vector<int64_t>{0, 10}));  // "Q: 2+2? 4\n"
  EXPECT_EQ(*opened.val->document_starts(), (std::vector<int64_t>{0}));

  // A multi-turn conversation as segments: every trained segment ends with "\n" (bytes has no
  // EOS), trained too.
  {
    std::ofstream out(input);
    out << R"({"segments": [{"text": "U: hi A:", "train": false}, {"text": " yo", "train": true},)"
        << R"( {"text": " U: and? A:", "train": false}, {"text": " ok", "train": true}]})"
        << "\n";
    out << R"({"prompt": "p", "response": "r"})"
        << "\n";
  }
  options.output = path("turns.h5");
  options.val_fraction = 0.5;
  const PrepareStats turns = prepare_data(options);
  const std::string turns_text = std::string("U: hi A:") + " yo\n" + " U: and? A:" + " ok\n";
  std::vector<uint8_t> turns_mask;
  for (const auto& [text, trained] : std::vector<std::pair<std::string, uint8_t>>{
           {"U: hi A:", 0}, {" yo\n", 1}, {" U: and? A:", 0}, {" ok\n", 1}})
    turns_mask.insert(turns_mask.end(), text.size(), trained);
  EXPECT_EQ(turns.train_tokens, static_cast<int64_t>(turns_text.size()));
  EXPECT_EQ(turns.train_targets, 4 + 4);
  const TokenFile turns_file = open_token_file(options.output);
  std::vector<uint8_t> read_turns(turns_text.size());
  turns_file.train->read_mask(0, turns_file.train->size(), read_turns.data());
  EXPECT_EQ(read_turns, turns_mask);
  EXPECT_EQ(read_token_file(options.output).train_doc_starts, (std::vector<int64_t>{0}));
  EXPECT_EQ(read_token_file(options.output).val_doc_starts, (std::vector<int64_t>{0}));
  for (const auto& [line, error] : std::vector<std::pair<std::string, std::string>>{
           {R"({"segments": []})", "line 1: field \"segments\" is not a non-empty array"},
           {R"({"segments": [{"text": "a"}]})",
            "line 1: segments[0]: field \"train\" must be true or false"},
           {R"({"segments": [{"text": "a", "train": true}, {"train": false}]})",
            "line 1: segments[1]: no field \"text\""},
           {R"({"segments": [3]})", "line 1: segments[0]: a JSON number, not an object"}}) {
    {
      std::ofstream out(input);
      out << line << "\n"
          << R"({"prompt": "p", "response": "r"})"
          << "\n";
    }
    expect_error([&] { prepare_data(options); }, {input + ": " + error});
  }
  options.output = path("sft.h5");

  // Both members are required, and must be strings.
  {
    std::ofstream out(input);
    out << R"({"prompt": "x", "answer": "y"})"
        << "\n";
  }
  expect_error([&] { prepare_data(options); }, {input + ": line 1: no field \"response\""});
  options.sft.response = "answer";
  options.val_fraction = 0.5;
  expect_error([&] { prepare_data(options); }, {"1 documents are too few"});
}

// A conversation's messages (OpenAI's role/content, ShareGPT's from/value) rendered in the chat
// format, the assistant's turns trained and each followed by the end ("\n" for bytes).
TEST_F(LossMaskTest, SftConversationsAreRenderedAndTrainOnTheAssistantsTurns) {
  const std::string input = path("chat.jsonl");
  {
    std::ofstream out(input);
    out << R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",)"
        << R"( "content": "yo"}, {"role": "user", "content": "and?"}, {"role": "assistant",)"
        << R"( "content": "ok"}], "id": 7})"
        << "\n";
    out << R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
        << "\n";
  }
  PrepareOptions options;
  options.inputs = {input};
  options.format = "sft";
  options.output = path("chat.h5");
  options.val_fraction = 0.5;
  options.sft.chat_template = ChatTemplate::kPlain;
  const PrepareStats stats = prepare_data(options);
  const std::vector<std::pair<std::string, uint8_t>> runs = {{"User: hi\nAssistant:", 0},
                                                             {" yo\n", 1},
                                                             {"\nUser: and?\nAssistant:", 0},
                                                             {" ok\n", 1},
                                                             {"\n", 0}};
  std::string text;
  std::vector<uint8_t> expected_mask;
  for (const auto& [run, trained] : runs) {
    text += run;
    expected_mask.insert(expected_mask.end(), run.size(), trained);
  }
  EXPECT_EQ(stats.train_tokens, static_cast<int64_t>(text.size()));
  EXPECT_EQ(stats.train_targets, 4 + 4);
  const TokenFile opened = open_token_file(options.output);
  EXPECT_EQ(opened.chat_template, "plain");  // inspect prints it, checkpoints carry it
  std::vector<int32_t> tokens(text.size());
  std::vector<uint8_t> mask(text.size());
  opened.train->read(0, opened.train->size(), tokens.data());
  opened.train->read_mask(0, opened.train->size(), mask.data());
  EXPECT_EQ(mask, expected_mask);
  for (size_t k = 0; k < text.size(); k++)
    EXPECT_EQ(tokens[k], static_cast<unsigned char>(text[k]));

  // ShareGPT's member, named by --messages-field, and its from/value messages.
  options.sft.messages = "conversations";
  options.output = path("sharegpt.h5");
  {
    std::ofstream out(input);
    out << R"({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})"
        << "\n"
        << R"({"conversations": [{"from": "gpt", "value": "c"}]})"
        << "\n";
  }
  prepare_data(options);
  const std::string sharegpt = "User: a\nAssistant: b\n\n";
  EXPECT_EQ(open_token_file(options.output).train->size(), static_cast<int64_t>(sharegpt.size()));

  options.sft.messages = "messages";
  options.output = path("bad.h5");
  for (const auto& [line, error] : std::vector<std::pair<std::string, std::string>>{
           {R"({"messages": []})", "line 1: no messages"},
           {R"({"messages": {"role": "user"}})",
            "line 1: field \"messages\" is a object, not an array of messages"},
           {R"({"messages": [{"role": "user", "content": "hi"}]})",
            "line 1: no assistant message, nothing to train on"},
           {R"({"messages": [{"role": "assistant", "content": null}]})",
            "line 1: messages[0]: field \"content\" is a null, not a string"},
           {R"({"messages": [{"content": "x"}]})", "line 1: messages[0]: no field \"role\""},
           {R"({"text": "x"})",
            "line 1: no field \"prompt\" and \"response\", \"messages\" or \"segments\""}}) {
    {
      std::ofstream out(input);
      out << line << "\n"
          << R"({"prompt": "p", "response": "r"})"
          << "\n";
    }
    expect_error([&] { prepare_data(options); }, {input + ": " + error});
    EXPECT_FALSE(std::ifstream(options.output).good());
  }
}

// Instruction datasets: Alpaca's instruction and input make the prompt, joined by a blank line
// where the input is not empty; with a chat template given, each pair is a user's message and
// the assistant's answer in it.
TEST_F(LossMaskTest, SftInstructionPairsJoinTheirPromptAndTakeTheChatTemplate) {
  const std::string input = path("alpaca.jsonl");
  {
    std::ofstream out(input);
    out << R"({"instruction": "Add.", "input": "2 and 2", "output": "4"})"
        << "\n"
        << R"({"instruction": "Say hi.", "input": "", "output": "hi"})"
        << "\n";
  }
  PrepareOptions options;
  options.inputs = {input};
  options.format = "sft";
  options.output = path("alpaca.h5");
  options.val_fraction = 0.5;
  options.sft.prompt = {"instruction", "input"};
  options.sft.response = "output";
  const auto split_text = [](const std::string& file, bool val) {
    const TokenFile opened = open_token_file(file);
    const TokenSource& split = val ? *opened.val : *opened.train;
    std::vector<int32_t> tokens(static_cast<size_t>(split.size()));
    std::vector<uint8_t> mask(tokens.size());
    split.read(0, split.size(), tokens.data());
    split.read_mask(0, split.size(), mask.data());
    std::string text, trained;
    for (size_t k = 0; k < tokens.size(); k++) {
      text += static_cast<char>(tokens[k]);
      trained += mask[k] ? '1' : '0';
    }
    return std::make_pair(text, trained);
  };
  prepare_data(options);
  EXPECT_EQ(open_token_file(options.output).chat_template, "");
  EXPECT_EQ(split_text(options.output, false),
            std::make_pair(std::string("Add.\n\n2 and 24\n"), std::string(13, '0') + "11"));
  EXPECT_EQ(split_text(options.output, true),
            std::make_pair(std::string("Say hi.hi\n"), std::string(7, '0') + "111"));

  options.sft.chat_template = ChatTemplate::kPlain;
  options.sft.pairs_in_template = true;
  options.output = path("alpaca_plain.h5");
  prepare_data(options);
  EXPECT_EQ(open_token_file(options.output).chat_template, "plain");
  const std::string context = "User: Add.\n\n2 and 2\nAssistant:";
  EXPECT_EQ(split_text(options.output, false),
            std::make_pair(context + " 4\n\n", std::string(context.size(), '0') + "1110"));
  EXPECT_EQ(split_text(options.output, true).first, "User: Say hi.\nAssistant: hi\n\n");

  // --system: first in every pair, and in every conversation that has no system message.
  {
    std::ofstream out(input);
    out << R"({"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content":)"
        << R"( "a"}, {"role": "assistant", "content": "b"}]})"
        << "\n"
        << R"({"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content":)"
        << R"( "d"}]})"
        << "\n"
        << R"({"instruction": "Say hi.", "input": "", "output": "hi"})"
        << "\n";
  }
  options.sft.system = "Be brief.";
  options.val_fraction = 0.4;  // floor(0.6 * 3) = 1 training example
  options.output = path("alpaca_system.h5");
  prepare_data(options);
  EXPECT_EQ(split_text(options.output, false).first, "System: Own.\nUser: a\nAssistant: b\n\n");
  EXPECT_EQ(split_text(options.output, true).first,
            "System: Be brief.\nUser: c\nAssistant: d\n\n"
            "System: Be brief.\nUser: Say hi.\nAssistant: hi\n\n");
  EXPECT_EQ(open_token_file(options.output).chat_system, "Be brief.");  // generate's default
  EXPECT_EQ(read_token_file(options.output).chat_system, "Be brief.");
  EXPECT_EQ(open_token_file(path("alpaca_plain.h5")).chat_system, "");

  // --system-field: a pair's own system message (OpenOrca's system_prompt), else --system's.
  {
    std::ofstream out(input);
    out << R"({"instruction": "a", "input": "", "output": "b", "system_prompt": "Own."})"
        << "\n"
        << R"({"instruction": "c", "input": "", "output": "d", "system_prompt": ""})"
        << "\n";
  }
  options.sft.system_field = "system_prompt";
  options.val_fraction = 0.5;
  options.output = path("orca.h5");
  prepare_data(options);
  EXPECT_EQ(split_text(options.output, false).first, "System: Own.\nUser: a\nAssistant: b\n\n");
  EXPECT_EQ(split_text(options.output, true).first, "System: Be brief.\nUser: c\nAssistant: d\n\n");
  options.sft.system_field.clear();
  options.sft.system.clear();

  options.output = path("bad.h5");
  for (const auto& [line, error] : std::vector<std::pair<std::string, std::string>>{
           {R"({"instruction": "a", "output": "b"})", "line 1: no field \"input\""},
           {R"({"instruction": "a", "input": 3, "output": "b"})",
            "line 1: field \"input\" is a number, not a string"},
           {R"({"text": "x"})",
            "line 1: no field \"instruction\", \"input\" and \"output\", "
            "\"messages\" or \"segments\""}}) {
    {
      std::ofstream out(input);
      out << line << "\n"
          << R"({"instruction": "p", "input": "", "output": "r"})"
          << "\n";
    }
    expect_error([&] { prepare_data(options); }, {input + ": " + error});
    EXPECT_FALSE(std::ifstream(options.output).good());
  }
}

// A dense model (no routing: sequences do not interact): a batch whose second sequence is all
// ignored targets, weighted 1/S per counted target, gives the loss and gradients of the first
// sequence alone. The ignored rows add exact zeros to every gradient sum.
TEST(LossMask, IgnoredTargetsContributeNothing) {
  Config config;
  config.model = {61, 12, 16, 2, 2, 24, false};  // V, S, D, L, H, F, tie
  config.moe.num_experts = 0;
  const auto run = [&](int64_t batch, bool ignore_second) {
    auto backend = make_cpu_backend();
    TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f32};
    options.dtype = options.master_dtype = DType::f64;
    Transformer model(*backend, options, nullptr);
    model.init_parameters(5);
    model.zero_grads();
    const int64_t S = config.model.seq_len, T = batch * S;
    std::vector<int32_t> inputs(T), targets(T);
    for (int64_t i = 0; i < T; ++i) {
      inputs[i] = static_cast<int32_t>((i * 7 + i * i) % 61);
      targets[i] = i >= S && ignore_second ? kIgnoreTarget : static_cast<int32_t>((i * 5 + 1) % 61);
    }
    const GroupStats stats =
        model.forward_backward(inputs, targets, batch, true, 1.0,
                               ignore_second ? std::optional<double>(1.0 / S) : std::nullopt);
    std::vector<std::vector<double>> grads;
    for (Param* param : model.params()) grads.push_back(backend->read(param->grad));
    return std::make_pair(stats, grads);
  };
  const auto [alone, alone_grads] = run(1, false);
  const auto [masked, masked_grads] = run(2, true);
  EXPECT_EQ(masked.lm_targets, config.model.seq_len);
  EXPECT_EQ(masked.tokens, 2 * config.model.seq_len);
  EXPECT_NEAR(masked.lm_loss, alone.lm_loss, 1e-12 * alone.lm_loss);
  EXPECT_NEAR(masked.lm_loss_sum, alone.lm_loss_sum, 1e-12 * alone.lm_loss_sum);
  ASSERT_EQ(masked_grads.size(), alone_grads.size());
  for (size_t p = 0; p < alone_grads.size(); ++p)
    for (size_t k = 0; k < alone_grads[p].size(); ++k)
      ASSERT_NEAR(masked_grads[p][k], alone_grads[p][k],
                  1e-12 + 1e-10 * std::abs(alone_grads[p][k]))
          << "param " << p << " element " << k;
}

}  // namespace
}  // namespace sy
