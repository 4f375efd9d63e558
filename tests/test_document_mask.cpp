// Document masking (docs/data.md, "Document masking"): the window's document starts and
// ignored boundary targets (document_window), the CPU ops with doc_start (rotary positions that
// restart, attention that stays inside each document), and the model: a sequence packed from
// several documents computes, token for token, what each document computes alone.
// The CUDA kernels are checked against these ops in test_cuda_document_mask.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <span>
#include <vector>

#include "data/sampler.h"
#include "data/token_file.h"
#include "model/backend.h"
#include "model/documents.h"
#include "model/transformer.h"
#include "parallel/local_exchange.h"
#include "tests/grad_check.h"
#include "tests/temp_folder.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"

namespace sy {
namespace {

// doc_start of one sequence of S tokens made of documents of these lengths (summing to S).
std::vector<int32_t> starts_of(const std::vector<int64_t>& lengths) {
  std::vector<int32_t> doc_start;
  int32_t start = 0;
  for (int64_t length : lengths) {
    doc_start.insert(doc_start.end(), length, start);
    start += static_cast<int32_t>(length);
  }
  return doc_start;
}

TEST(DocumentWindow, StartsRestartAndBoundaryTargetsAreIgnored) {
  // Documents start at tokens 0, 5 and 9 of the split; the window is tokens [3, 12).
  const std::vector<int64_t> starts{0, 5, 9};
  const int64_t S = 8;
  std::vector<int32_t> doc_start(S), targets(S, 7);
  document_window(starts, 3, S, doc_start.data(), targets.data());
  // Tokens 3, 4 continue document 0 (begun before the window); 5 .. 8 are document 1; 9, 10
  // document 2.
  EXPECT_EQ(doc_start, (std::vector<int32_t>{0, 0, 2, 2, 2, 2, 6, 6}));
  // Position s predicts token 3 + s + 1: tokens 5 and 9 start documents.
  EXPECT_EQ(targets, (std::vector<int32_t>{7, kIgnoreTarget, 7, 7, 7, kIgnoreTarget, 7, 7}));

  // A window that starts on a document start, and one past the last start.
  document_window(starts, 5, S, doc_start.data(), targets.data());
  EXPECT_EQ(doc_start, (std::vector<int32_t>{0, 0, 0, 0, 4, 4, 4, 4}));
  document_window(starts, 9, S, doc_start.data(), targets.data());
  EXPECT_EQ(doc_start, std::vector<int32_t>(S, 0));
}

class DocumentMaskFiles : public test::TempFolderTest {
 protected:
  DocumentMaskFiles() : TempFolderTest("sy_test_document_mask") {}
};

// A token file's document starts reach the training batches (doc_start and the ignored
// boundary targets) and the validation set; a file without them is refused by name.
TEST_F(DocumentMaskFiles, BatchesAndTheValidationSetFollowTheFilesDocuments) {
  const std::vector<int64_t> train_lengths{5, 9, 3, 20, 7, 11}, val_lengths{6, 8, 10};
  const std::string file = path("documents.h5");
  std::vector<int32_t> train;
  {
    TokenFileWriter writer(file, 256, "bytes", {}, {}, false, {}, /*documents=*/true);
    for (const auto& [lengths, is_val] : {std::pair{&train_lengths, false}, {&val_lengths, true}})
      for (int64_t length : *lengths) {
        is_val ? writer.start_document_val() : writer.start_document_train();
        const std::vector<int32_t> tokens(length, static_cast<int32_t>(length));
        if (!is_val) train.insert(train.end(), tokens.begin(), tokens.end());
        is_val ? writer.append_val(tokens.data(), length)
               : writer.append_train(tokens.data(), length);
      }
    writer.finish();
  }
  const TokenFile opened = open_token_file(file);
  ASSERT_NE(opened.train->document_starts(), nullptr);
  const std::vector<int64_t>& starts = *opened.train->document_starts();
  EXPECT_EQ(starts, (std::vector<int64_t>{0, 5, 14, 17, 37, 44}));

  const int64_t S = 8, B = 3;
  StepSampler sampler(opened.train, S, 7);
  sampler.mask_documents();
  std::vector<int32_t> inputs(B * S), targets(B * S), doc_start(B * S);
  for (int64_t step = 0; step < 10; ++step) {
    sampler.group(step, 1, B, inputs.data(), targets.data(), doc_start.data());
    for (int64_t b = 0; b < B; ++b) {
      const int64_t start = sampler.offset(step, B + b);
      for (int64_t s = 0; s < S; ++s) {
        // The latest document start at or before the token, as a position in the window.
        int64_t first = 0;
        for (int64_t p : starts)
          if (p <= start + s) first = std::max<int64_t>(p - start, 0);
        EXPECT_EQ(doc_start[b * S + s], first) << "step " << step << " token " << start + s;
        const bool crosses = std::count(starts.begin(), starts.end(), start + s + 1) > 0;
        EXPECT_EQ(targets[b * S + s], crosses ? kIgnoreTarget : train[start + s + 1]);
      }
    }
  }

  // The validation set: the starts among its first 2 * 8 + 1 tokens.
  const ValidationSet val = read_validation_set(*opened.val, 2, S, true, file + " /val");
  EXPECT_TRUE(val.documents);
  EXPECT_EQ(val.doc_starts, (std::vector<int64_t>{0, 6, 14}));

  const std::string plain = path("plain.h5");
  write_token_file(plain, train, train, 256, "bytes");
  const TokenFile without = open_token_file(plain);
  StepSampler unmasked(without.train, S, 7);
  test::expect_error([&] { unmasked.mask_documents(); },
                     {"training split: records no document boundaries", "data.document_mask"});
  test::expect_error([&] { read_validation_set(*without.val, 2, S, true, plain + " /val"); },
                     {"plain.h5 /val: records no document boundaries"});
}

class DocumentMaskOps : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Backend& be = *backend;

  Tensor random(const Shape& shape, uint64_t seed) {
    Tensor t = be.alloc(shape, DType::f64);
    be.write(t, std::span<const double>(test::random_values(shape_numel(shape), seed)));
    return t;
  }
  Tensor ints(const std::vector<int32_t>& values) {
    Tensor t = be.alloc({static_cast<int64_t>(values.size())}, DType::i32);
    be.write(t, std::span<const int32_t>(values));
    return t;
  }
  // Rows [first, first + count) of x [T, D] copied to the start of a fresh [T, D] tensor whose
  // other rows keep `filler`'s values: the document alone at the start of a sequence.
  Tensor alone(const Tensor& x, const Tensor& filler, int64_t first, int64_t count) {
    std::vector<double> values = be.read(filler);
    const std::vector<double> source = be.read(x);
    const int64_t D = x.dim(1);
    std::copy_n(source.begin() + first * D, count * D, values.begin());
    Tensor out = be.alloc(x.shape(), DType::f64);
    be.write(out, std::span<const double>(values));
    return out;
  }
  std::vector<double> rows(const Tensor& x, int64_t first, int64_t count) {
    const std::vector<double> values = be.read(x);
    const int64_t D = x.dim(1);
    return {values.begin() + first * D, values.begin() + (first + count) * D};
  }
};

TEST_F(DocumentMaskOps, RotaryPositionsRestartAtEachDocument) {
  const int64_t S = 12, H = 2, Dh = 8, D = H * Dh;
  const std::vector<int64_t> lengths{5, 4, 3};
  Tensor packed = random({S, D}, 1), filler = random({S, D}, 2);
  Tensor doc_start = ints(starts_of(lengths));
  int64_t first = 0;
  for (int64_t length : lengths) {
    Tensor single = alone(packed, filler, first, length);
    be.rope_forward(single, 1, S, H);
    const std::vector<double> expected = rows(single, 0, length);
    Tensor copy = alone(packed, packed, 0, 0);
    be.rope_forward(copy, 1, S, H, Rotary{}, doc_start);
    EXPECT_EQ(rows(copy, first, length), expected) << "document at " << first;
    // Backward is the inverse rotation: it brings the rotated rows back.
    be.rope_backward(copy, 1, S, H, Rotary{}, doc_start);
    for (size_t i = 0; i < expected.size(); ++i)
      EXPECT_NEAR(rows(copy, first, length)[i], rows(packed, first, length)[i], 1e-15);
    first += length;
  }
}

// Attention of a packed sequence with doc_start against each document alone at the start of a
// sequence without it: the flash kernel gives the same bits (it visits the same keys in the same
// order), the BLAS path agrees to rounding. Forward (out, lse) and backward (dq, dk, dv).
TEST_F(DocumentMaskOps, AttentionOfAPackedSequenceIsEachDocumentAlone) {
  const int64_t S = 16, H = 2, Dh = 8, D = H * Dh;
  const std::vector<int64_t> lengths{6, 1, 7, 2};
  Tensor doc_start = ints(starts_of(lengths));
  Tensor q = random({S, D}, 11), k = random({S, D}, 12), v = random({S, D}, 13),
         dout = random({S, D}, 14), filler = random({S, D}, 15),
         zeros = be.alloc({S, D}, DType::f64);
  be.fill(zeros, 0.0);
  for (const bool flash : {true, false}) {
    SCOPED_TRACE(flash ? "flash" : "reference");
    Tensor out = be.alloc({S, D}, DType::f64), lse = be.alloc({1, H, S}, DType::f64),
           probs = be.alloc({1, H, S, S}, DType::f64);
    Tensor dq = be.alloc({S, D}, DType::f64), dk = be.alloc({S, D}, DType::f64),
           dv = be.alloc({S, D}, DType::f64);
    if (flash) {
      be.flash_attention_forward(out, lse, q, k, v, 1, S, H, doc_start);
      be.flash_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, 1, S, H, doc_start);
    } else {
      be.attention_forward(out, probs, q, k, v, 1, S, H, doc_start);
      be.attention_backward(dq, dk, dv, dout, q, k, v, probs, 1, S, H);
    }
    int64_t first = 0;
    for (int64_t length : lengths) {
      SCOPED_TRACE("document at " + std::to_string(first));
      Tensor q1 = alone(q, filler, first, length), k1 = alone(k, filler, first, length),
             v1 = alone(v, filler, first, length), dout1 = alone(dout, zeros, first, length);
      Tensor out1 = be.alloc({S, D}, DType::f64), lse1 = be.alloc({1, H, S}, DType::f64);
      Tensor dq1 = be.alloc({S, D}, DType::f64), dk1 = be.alloc({S, D}, DType::f64),
             dv1 = be.alloc({S, D}, DType::f64);
      if (flash) {
        be.flash_attention_forward(out1, lse1, q1, k1, v1, 1, S, H);
        be.flash_attention_backward(dq1, dk1, dv1, dout1, q1, k1, v1, out1, lse1, 1, S, H);
      } else {
        be.attention_forward(out1, probs, q1, k1, v1, 1, S, H);
        be.attention_backward(dq1, dk1, dv1, dout1, q1, k1, v1, probs, 1, S, H);
      }
      // The filler's queries after the document see its keys in the lone run; their zero
      // output gradient adds exact zeros to the keys' dk and dv.
      for (auto [packed, single, name] : {std::tuple{&out, &out1, "out"},
                                          {&dq, &dq1, "dq"},
                                          {&dk, &dk1, "dk"},
                                          {&dv, &dv1, "dv"}}) {
        const std::vector<double> a = rows(*packed, first, length), b = rows(*single, 0, length);
        if (flash) {
          EXPECT_EQ(a, b) << name;
        } else {
          for (size_t i = 0; i < a.size(); ++i)
            ASSERT_NEAR(a[i], b[i], 1e-13 * (1 + std::abs(b[i]))) << name << " " << i;
        }
      }
      if (flash) {
        const std::vector<double> lse_packed = be.read(lse), lse_alone = be.read(lse1);
        for (int64_t h = 0; h < H; ++h)
          for (int64_t s = 0; s < length; ++s)
            EXPECT_EQ(lse_packed[h * S + first + s], lse_alone[h * S + s]) << "lse";
      }
      first += length;
    }
  }
}

TEST_F(DocumentMaskOps, AllZeroDocStartIsNoMask) {
  const int64_t B = 2, S = 9, H = 2, Dh = 4, T = B * S, D = H * Dh;
  Tensor q = random({T, D}, 21), k = random({T, D}, 22), v = random({T, D}, 23);
  Tensor out = be.alloc({T, D}, DType::f64), lse = be.alloc({B, H, S}, DType::f64);
  Tensor out0 = be.alloc({T, D}, DType::f64), lse0 = be.alloc({B, H, S}, DType::f64);
  be.flash_attention_forward(out, lse, q, k, v, B, S, H);
  be.flash_attention_forward(out0, lse0, q, k, v, B, S, H, ints(std::vector<int32_t>(T, 0)));
  EXPECT_EQ(be.read(out), be.read(out0));
  EXPECT_EQ(be.read(lse), be.read(lse0));
}

TEST_F(DocumentMaskOps, AStartThatIsNotADocumentsIsRefused) {
  const int64_t S = 4, H = 1, D = 4;
  Tensor x = random({S, D}, 31);
  // Position 2 claims a document that starts at 1, but position 1 belongs to the one at 0.
  test::expect_error(
      [&] {
        be.rope_forward(x, 1, S, H, Rotary{}, ints({0, 0, 1, 1}));
      },
      {"rope_forward", "doc_start[2] = 1", "position 2"});
  test::expect_error(
      [&] {
        be.rope_forward(x, 1, S, H, Rotary{}, ints({0, 2, 2, 2}));
      },
      {"doc_start[1] = 2"});
  test::expect_error(
      [&] {
        be.rope_forward(x, 1, S, H, Rotary{}, ints({0, 0, 0}));
      },
      {"doc_start"});
}

// list_documents: the rows where documents start (every sequence's first among them), then B*S,
// and the longest; the flash ops take the list beside doc_start, and refuse one that disagrees.
TEST_F(DocumentMaskOps, DocumentsAreListedAndAListThatDisagreesIsRefused) {
  const int64_t B = 2, S = 6, H = 1, Dh = 2, T = B * S, D = H * Dh;
  std::vector<int32_t> starts = starts_of({2, 3, 1});
  const std::vector<int32_t> second = starts_of({6});
  starts.insert(starts.end(), second.begin(), second.end());
  const DocumentRows list = list_documents(starts, S);
  EXPECT_EQ(list.offsets, (std::vector<int32_t>{0, 2, 5, 6, 12}));
  EXPECT_EQ(list.longest, 6);
  EXPECT_EQ(list_documents(std::vector<int32_t>(T, 0), S).offsets,
            (std::vector<int32_t>{0, 6, 12}));

  Tensor q = random({T, D}, 41), k = random({T, D}, 42), v = random({T, D}, 43);
  Tensor out = be.alloc({T, D}, DType::f64), lse = be.alloc({B, H, S}, DType::f64);
  Tensor listed_out = be.alloc({T, D}, DType::f64), listed_lse = be.alloc({B, H, S}, DType::f64);
  const Tensor doc_start = ints(starts);
  be.flash_attention_forward(out, lse, q, k, v, B, S, H, doc_start);
  be.flash_attention_forward(listed_out, listed_lse, q, k, v, B, S, H, doc_start,
                             {ints(list.offsets), list.longest});
  EXPECT_EQ(be.read(listed_out), be.read(out));
  EXPECT_EQ(be.read(listed_lse), be.read(lse));
  test::expect_error(
      [&] {
        be.flash_attention_forward(out, lse, q, k, v, B, S, H, doc_start, {ints({0, 2, 6, 12}), 6});
      },
      {"flash_attention_forward", "documents listed (3, the longest 6 tokens)",
       "not doc_start's (4, the longest 6)"});
  test::expect_error(
      [&] {
        be.flash_attention_forward(out, lse, q, k, v, B, S, H, doc_start, {ints(list.offsets), 5});
      },
      {"the longest 5 tokens"});
  test::expect_error(
      [&] {
        be.flash_attention_forward(out, lse, q, k, v, B, S, H, Tensor(),
                                   {ints(list.offsets), list.longest});
      },
      {"documents listed without doc_start"});
  test::expect_error(
      [&] {
        be.flash_attention_forward(out, lse, q, k, v, B, S, H, doc_start,
                                   {ints(list.offsets), S + 1});
      },
      {"documents.longest 7 outside 1 to S = 6"});
}

// The model: one sequence packed from documents A and B, with doc_start, against a batch of A
// alone and B alone, each padded with tokens whose targets are ignored. Every counted target is
// the same prediction from the same context, so the loss sums and every gradient agree to
// rounding (the sums run in another order). Dense and MoE (dropless; the router losses, which
// see the padding, weighted 0), reference and flash attention, with grouped-query heads.
TEST(DocumentMaskModel, APackedSequenceComputesWhatEachDocumentComputesAlone) {
  for (const bool moe : {false, true})
    for (const AttentionKernel kernel : {AttentionKernel::reference, AttentionKernel::flash}) {
      SCOPED_TRACE(std::string(moe ? "moe " : "dense ") +
                   (kernel == AttentionKernel::flash ? "flash" : "reference"));
      Config config;
      config.model = {61, 16, 16, 2, 4, 24, false};  // V, S, D, L, H, F, tie
      config.model.n_kv_heads = 2;
      config.model.attention_kernel = kernel;
      config.moe.num_experts = moe ? 4 : 0;
      config.moe.routing.top_k = 2;
      config.moe.expert_hidden = 8;
      config.moe.aux_loss_coef = 0.0;
      config.moe.z_loss_coef = 0.0;
      const int64_t S = config.model.seq_len, length_a = 7;
      std::vector<int32_t> tokens(2 * S + 1);
      for (size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = static_cast<int32_t>((i * 7 + i * i * 3 + 1) % 61);
      const auto run = [&](std::span<const int32_t> inputs, std::span<const int32_t> targets,
                           int64_t batch, std::span<const int32_t> doc_start) {
        auto backend = make_cpu_backend();
        TransformerOptions options{config.model, config.moe, moe_layer_mask(config), DType::f64};
        options.master_dtype = DType::f64;
        LocalExchange exchange(*backend, config.moe.num_experts);
        Transformer model(*backend, options, moe ? &exchange : nullptr);
        model.init_parameters(5);
        model.zero_grads();
        const GroupStats stats =
            model.forward_backward(inputs, targets, batch, true, 1.0, 1.0, doc_start);
        std::vector<std::vector<double>> grads;
        for (Param* param : model.params()) grads.push_back(backend->read(param->grad));
        return std::make_pair(stats, grads);
      };
      // Packed: A = tokens[0, 7), B = tokens[7, 16); A's last target (B's first token) ignored.
      std::vector<int32_t> inputs(tokens.begin(), tokens.begin() + S), targets(S);
      for (int64_t s = 0; s < S; ++s) targets[s] = tokens[s + 1];
      targets[length_a - 1] = kIgnoreTarget;
      const auto [packed, packed_grads] =
          run(inputs, targets, 1, starts_of({length_a, S - length_a}));
      // Alone: sequence 0 is A then padding, sequence 1 is B then padding.
      std::vector<int32_t> inputs2(2 * S, 3), targets2(2 * S, kIgnoreTarget);
      for (int64_t s = 0; s < length_a; ++s) {
        inputs2[s] = inputs[s];
        targets2[s] = targets[s];
      }
      for (int64_t s = length_a; s < S; ++s) {
        inputs2[S + s - length_a] = inputs[s];
        targets2[S + s - length_a] = targets[s];
      }
      const auto [alone, alone_grads] = run(inputs2, targets2, 2, {});
      EXPECT_EQ(packed.lm_targets, S - 1);
      EXPECT_EQ(alone.lm_targets, S - 1);
      EXPECT_NEAR(packed.lm_loss_sum, alone.lm_loss_sum, 1e-12 * alone.lm_loss_sum);
      ASSERT_EQ(packed_grads.size(), alone_grads.size());
      for (size_t p = 0; p < alone_grads.size(); ++p)
        for (size_t i = 0; i < alone_grads[p].size(); ++i)
          ASSERT_NEAR(packed_grads[p][i], alone_grads[p][i],
                      1e-12 + 1e-9 * std::abs(alone_grads[p][i]))
              << "param " << p << " element " << i;
    }
}

}  // namespace
}  // namespace sy
