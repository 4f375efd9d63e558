// Document masking (model/backend.h, "Document masking") on the CUDA backend: rotary positions
// that restart at each document, and attention that does not cross a document's start, in the
// rope ops, the reference attention (probs) and the flash kernels (tensor cores: bf16 with Dh 64
// and 128; the plain kernel: f32, and bf16 with Dh 32). Checks:
// - doc_start all zeros gives the bits of doc_start undefined (the kernels' document path against
//   the code without documents);
// - against the CPU backend's same ops with the same doc_start, at test_cuda_ops's tolerances,
//   on the same bf16-rounded inputs, outputs poisoned with NaN first;
// - each document of a packed sequence as if alone: its rows of out, lse, dq, dk and dv (rotary
//   included) are those of the document run by itself at the start of a sequence, without
//   doc_start. Bitwise on the plain kernel (its chunks of keys start at the document's start,
//   so the sums run in the same order); within test_cuda_ops's bf16 tolerances on tensor cores
//   (the tiles fall elsewhere in the document);
// - new values for one token change no other document's rows, bitwise;
// - with prefer_cudnn_attention and the documents unlisted, cuDNN is not asked ("flash: document
//   masking");
// - with them listed (DocumentList), cuDNN runs them in its ragged layout ("cudnn documents"):
//   against the CPU at test_cuda_cudnn's bounds, repeatable, one document changing no other, and
//   the backward's chunks of documents and of heads giving the bits of one call.
// S: tails inside a tile (100, 257) and whole tiles (192). Documents: random lengths, documents
// of length 1 (first, in the middle, last), starts at the tile edges 64 and 128 (and 32, the
// dK/dV pass's query tiles), every token its own document.
// Skipped when no CUDA device is visible (label gpu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/documents.h"
#include "model/rng.h"
#include "tests/cuda_test_util.h"

namespace sy {
namespace {

using test::bf16_round;
using test::rel_error;

// Tolerances on the relative L2 error for f32 and for bf16 data: test_cuda_ops's (docs/cuda.md).
struct Tol {
  double f32, bf16;
};
constexpr Tol kOut{1e-6, 1e-2}, kLse{1e-6, 1e-5}, kDqDk{1e-5, 2e-2}, kDv{1e-5, 1e-2};
constexpr Tol kProbs{1e-6, 4e-3}, kRope{1e-6, 4e-3};

// B sequences of S tokens cut into documents: lengths[b] sums to S.
struct Packing {
  std::string name;
  std::vector<std::vector<int64_t>> lengths;
};

// doc_start [B*S] of a packing: each token's document's first position.
std::vector<int32_t> doc_starts(const Packing& packing) {
  std::vector<int32_t> starts;
  for (const std::vector<int64_t>& sequence : packing.lengths) {
    int64_t start = 0;
    for (int64_t length : sequence) {
      starts.insert(starts.end(), length, static_cast<int32_t>(start));
      start += length;
    }
  }
  return starts;
}

// `documents` lengths >= 1 summing to S, cut at random.
std::vector<int64_t> random_lengths(int64_t S, int64_t documents, CounterRng& rng) {
  std::set<int64_t> cuts;
  while (static_cast<int64_t>(cuts.size()) < documents - 1) cuts.insert(1 + rng.below(S - 1));
  std::vector<int64_t> lengths;
  int64_t previous = 0;
  for (int64_t cut : cuts) lengths.push_back(cut - previous), previous = cut;
  lengths.push_back(S - previous);
  return lengths;
}

// The packings of two sequences of S (>= 66) tokens that every flash test runs.
std::vector<Packing> packings(int64_t S) {
  CounterRng rng(0xD0C5 + S);
  std::vector<Packing> out;
  out.push_back({"random", {random_lengths(S, 3, rng), random_lengths(S, 6, rng)}});
  out.push_back({"length 1", {{1, S / 2 - 1, 1, S - S / 2 - 1}, {S - 1, 1}}});
  if (S > 128) out.push_back({"tile edges", {{64, 64, S - 128}, {32, 96, S - 128}}});
  else out.push_back({"tile edges", {{64, S - 64}, {32, 32, S - 64}}});
  out.push_back({"one token each", {std::vector<int64_t>(S, 1), {S}}});
  return out;
}

// The flash paths: (dtype, Dh, H). bf16 with Dh 64 and 128 runs the tensor-core kernels, the
// others the plain kernel.
struct FlashCase {
  DType dtype;
  int64_t Dh, H;
};
const FlashCase kFlashCases[] = {{DType::bf16, 64, 3},
                                 {DType::bf16, 128, 2},
                                 {DType::bf16, 32, 4},
                                 {DType::f32, 64, 3},
                                 {DType::f32, 32, 2}};
constexpr int64_t kSeqLengths[] = {100, 192, 257};

bool plain_kernel(const FlashCase& c) {
  return !(c.dtype == DType::bf16 && (c.Dh == 64 || c.Dh == 128));
}

std::string case_name(const FlashCase& c, int64_t S) {
  return std::string(dtype_name(c.dtype)) + " Dh=" + std::to_string(c.Dh) +
         " H=" + std::to_string(c.H) + " S=" + std::to_string(S);
}

// Host copies of the flash ops' inputs and results, [T, D] row-major (lse [B, H, S]).
struct Inputs {
  std::vector<double> q, k, v, dout;
};
struct Results {
  std::vector<double> out, lse, dq, dk, dv;
  std::string forward_kernel, backward_kernel;  // cuda_attention_kernel after each
};

// Rows [first, first + n) of x [*, D].
std::vector<double> rows(const std::vector<double>& x, int64_t first, int64_t n, int64_t D) {
  return {x.begin() + first * D, x.begin() + (first + n) * D};
}

// lse [B, H, S] of sequence b's positions [first, first + n), head-major.
std::vector<double> lse_rows(const std::vector<double>& lse, int64_t b, int64_t H, int64_t S,
                             int64_t first, int64_t n) {
  std::vector<double> out;
  for (int64_t h = 0; h < H; ++h) {
    const auto at = lse.begin() + (b * H + h) * S + first;
    out.insert(out.end(), at, at + n);
  }
  return out;
}

// How many elements of a and b differ in their bits (NaN included); -1 when the sizes differ.
int64_t bits_differ(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return -1;
  int64_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += std::memcmp(&a[i], &b[i], sizeof(double)) != 0;
  return differ;
}

class CudaDocumentMask : public test::CpuGpuTest {
 protected:
  void TearDown() override {
    if (gpu_) gpu().prefer_cudnn_attention(false);
  }

  // Fresh normal values, as `dtype` holds them (bf16-rounded for bf16).
  static std::vector<double> values(int64_t n, DType dtype) {
    CounterRng rng(next_seed_++);
    std::vector<double> v(n);
    for (double& x : v) x = held(rng.normal(), dtype);
    return v;
  }
  static double held(double x, DType dtype) {
    return dtype == DType::bf16 ? bf16_round(x) : static_cast<double>(static_cast<float>(x));
  }
  static Inputs inputs(int64_t T, int64_t D, DType dtype) {
    return {values(T * D, dtype), values(T * D, dtype), values(T * D, dtype), values(T * D, dtype)};
  }

  // doc_start on `backend`; undefined for an empty `starts`.
  static Tensor starts_on(Backend& backend, const std::vector<int32_t>& starts) {
    if (starts.empty()) return Tensor();
    Tensor t = backend.alloc({static_cast<int64_t>(starts.size())}, DType::i32);
    backend.write(t, std::span<const int32_t>(starts));
    return t;
  }

  // starts' documents listed on `backend` (what the transformer uploads beside doc_start).
  static DocumentList listed_on(Backend& backend, const std::vector<int32_t>& starts, int64_t S) {
    const DocumentRows list = list_documents(starts, S);
    Tensor offsets = backend.alloc({static_cast<int64_t>(list.offsets.size())}, DType::i32);
    backend.write(offsets, std::span<const int32_t>(list.offsets));
    return {offsets, list.longest};
  }

  // The attention layer's order on the GPU: rotary on q and k (when `rope`), the flash forward,
  // its backward, the inverse rotation of dq and dk. Outputs poisoned first. `listed`: the
  // documents listed too, with prefer_cudnn_attention and SY_CUDNN_DOCUMENTS=1 (cuDNN's ragged
  // layout); else SY_CUDNN_DOCUMENTS=0.
  Results run_gpu(DType dt, int64_t B, int64_t S, int64_t H, const Inputs& in,
                  const std::vector<int32_t>& starts, bool rope = true, bool listed = false) {
    const test::EnvironmentRestored cudnn_documents("SY_CUDNN_DOCUMENTS");
    cudnn_documents.set(listed ? "1" : "0");
    const int64_t T = B * S, D = static_cast<int64_t>(in.q.size()) / T;
    const Tensor doc = starts_on(gpu(), starts);
    const DocumentList documents = listed ? listed_on(gpu(), starts, S) : DocumentList();
    Tensor q = on_gpu({T, D}, in.q, dt), k = on_gpu({T, D}, in.k, dt);
    const Tensor v = on_gpu({T, D}, in.v, dt), dout = on_gpu({T, D}, in.dout, dt);
    if (rope) gpu().rope_forward_qk(q, k, B, S, H, Rotary(), doc);
    gpu().prefer_cudnn_attention(listed);
    Tensor out = poisoned({T, D}, dt), lse = poisoned({B, H, S}, stat_dtype(dt));
    gpu().flash_attention_forward(out, lse, q, k, v, B, S, H, doc, documents);
    const std::string forward_kernel = cuda_attention_kernel(gpu());
    Tensor dq = poisoned({T, D}, dt), dk = poisoned({T, D}, dt), dv = poisoned({T, D}, dt);
    gpu().flash_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, B, S, H, doc, documents);
    const std::string backward_kernel = cuda_attention_kernel(gpu());
    gpu().prefer_cudnn_attention(false);
    if (rope) gpu().rope_backward_qk(dq, dk, B, S, H, Rotary(), doc);
    return {gpu().read(out), gpu().read(lse), gpu().read(dq), gpu().read(dk),
            gpu().read(dv),  forward_kernel,  backward_kernel};
  }

  void expect_close(const std::vector<double>& g, const std::vector<double>& c, Tol tol,
                    const std::string& what, DType dtype) {
    const double bound = dtype == DType::bf16 ? tol.bf16 : tol.f32;
    const double e = rel_error(g, c);
    std::printf("[ rel err  ] %-58s %-5s %.3e (tol %.1e)\n", what.c_str(), dtype_name(dtype), e,
                bound);
    EXPECT_LE(e, bound) << what << " in " << dtype_name(dtype);
  }
  void expect_bitwise(const std::vector<double>& a, const std::vector<double>& b,
                      const std::string& what) {
    EXPECT_EQ(bits_differ(a, b), 0) << what << ": elements whose bits differ (of " << a.size()
                                    << "; -1: sizes " << a.size() << " and " << b.size() << ")";
  }
  void expect_bitwise(const Results& a, const Results& b, const std::string& what) {
    expect_bitwise(a.out, b.out, what + " out");
    expect_bitwise(a.lse, b.lse, what + " lse");
    expect_bitwise(a.dq, b.dq, what + " dq");
    expect_bitwise(a.dk, b.dk, what + " dk");
    expect_bitwise(a.dv, b.dv, what + " dv");
  }

  static inline uint64_t next_seed_ = 0xD0C5'0000;
};

// doc_start all zeros is one document a sequence: the kernels' document path must give the bits
// of the path without documents, forward and backward, rotary included.
TEST_F(CudaDocumentMask, ZerosGiveTheBitsOfNoDocuments) {
  const int64_t B = 2;
  for (const FlashCase& c : kFlashCases) {
    for (int64_t S : kSeqLengths) {
      const std::string at = case_name(c, S);
      SCOPED_TRACE(at);
      const Inputs in = inputs(B * S, c.H * c.Dh, c.dtype);
      const Results none = run_gpu(c.dtype, B, S, c.H, in, {});
      const Results zeros = run_gpu(c.dtype, B, S, c.H, in, std::vector<int32_t>(B * S, 0));
      expect_bitwise(zeros, none, "zeros against undefined, " + at);
    }
  }
  // The reference attention (probs) and rope on their own.
  const int64_t S = 45, H = 2, Dh = 16, T = B * S, D = H * Dh;
  for (DType dt : {DType::f32, DType::bf16}) {
    const Inputs in = inputs(T, D, dt);
    const Tensor zeros = starts_on(gpu(), std::vector<int32_t>(T, 0));
    const Tensor q = on_gpu({T, D}, in.q, dt), k = on_gpu({T, D}, in.k, dt),
                 v = on_gpu({T, D}, in.v, dt);
    Tensor o1 = poisoned({T, D}, dt), p1 = poisoned({B, H, S, S}, dt);
    Tensor o2 = poisoned({T, D}, dt), p2 = poisoned({B, H, S, S}, dt);
    gpu().attention_forward(o1, p1, q, k, v, B, S, H);
    gpu().attention_forward(o2, p2, q, k, v, B, S, H, zeros);
    expect_bitwise(gpu().read(p2), gpu().read(p1), "attention_forward probs, zeros");
    expect_bitwise(gpu().read(o2), gpu().read(o1), "attention_forward out, zeros");
    Tensor r1 = on_gpu({T, D}, in.q, dt), r2 = on_gpu({T, D}, in.q, dt);
    gpu().rope_forward(r1, B, S, H);
    gpu().rope_forward(r2, B, S, H, Rotary(), zeros);
    expect_bitwise(gpu().read(r2), gpu().read(r1), "rope_forward, zeros");
  }
}

// The flash ops with doc_start against the CPU backend's (f32 on the same rounded inputs).
TEST_F(CudaDocumentMask, FlashAttentionMatchesTheCpu) {
  const int64_t B = 2;
  for (const FlashCase& c : kFlashCases) {
    for (int64_t S : kSeqLengths) {
      for (const Packing& packing : packings(S)) {
        const std::string at = case_name(c, S) + " " + packing.name;
        SCOPED_TRACE(at);
        const DType dt = c.dtype;
        const int64_t T = B * S, D = c.H * c.Dh, H = c.H;
        const std::vector<int32_t> starts = doc_starts(packing);
        const Inputs in = inputs(T, D, dt);
        const Tensor doc_c = starts_on(cpu(), starts);
        const Tensor qc = on_cpu({T, D}, in.q), kc = on_cpu({T, D}, in.k),
                     vc = on_cpu({T, D}, in.v);
        Tensor oc = cpu().alloc({T, D}, DType::f32), lc = cpu().alloc({B, H, S}, DType::f32);
        cpu().flash_attention_forward(oc, lc, qc, kc, vc, B, S, H, doc_c);
        Tensor dqc = cpu().alloc({T, D}, DType::f32), dkc = cpu().alloc({T, D}, DType::f32),
               dvc = cpu().alloc({T, D}, DType::f32);
        cpu().flash_attention_backward(dqc, dkc, dvc, on_cpu({T, D}, in.dout), qc, kc, vc, oc, lc,
                                       B, S, H, doc_c);
        const Results g = run_gpu(dt, B, S, H, in, starts, /*rope=*/false);
        expect_close(g.out, cpu().read(oc), kOut, "flash_attention_forward out " + at, dt);
        expect_close(g.lse, cpu().read(lc), kLse, "flash_attention_forward lse " + at, dt);
        expect_close(g.dq, cpu().read(dqc), kDqDk, "flash_attention_backward dq " + at, dt);
        expect_close(g.dk, cpu().read(dkc), kDqDk, "flash_attention_backward dk " + at, dt);
        expect_close(g.dv, cpu().read(dvc), kDv, "flash_attention_backward dv " + at, dt);
        // Deterministic, as without documents.
        const Results again = run_gpu(dt, B, S, H, in, starts, /*rope=*/false);
        expect_bitwise(again, g, "a second run, " + at);
      }
    }
  }
}

// Each document of a packed sequence gives the rows it gives alone at the start of a sequence
// without doc_start: rotary restarts at its start and nothing outside it is seen.
TEST_F(CudaDocumentMask, EachDocumentAsIfAlone) {
  const int64_t B = 2;
  for (const FlashCase& c : kFlashCases) {
    for (int64_t S : kSeqLengths) {
      for (const Packing& packing : packings(S)) {
        const std::string at = case_name(c, S) + " " + packing.name;
        SCOPED_TRACE(at);
        const DType dt = c.dtype;
        const int64_t D = c.H * c.Dh, H = c.H;
        const Inputs in = inputs(B * S, D, dt);
        const Results packed = run_gpu(dt, B, S, H, in, doc_starts(packing));
        // The documents' rows, packed and alone, all together (tensor cores: one relative error
        // over them); the plain kernel must give the same bits document by document.
        Results all_packed, all_alone;
        for (int64_t b = 0; b < B; ++b) {
          const std::vector<int64_t>& lengths = packing.lengths[b];
          int64_t start = 0;
          for (size_t d = 0; d < lengths.size(); start += lengths[d], ++d) {
            // At most the first 8 documents of a sequence and its last (one token each: S).
            if (d >= 8 && d + 1 < lengths.size()) continue;
            const int64_t n = lengths[d], first = b * S + start;
            const Inputs alone_in{rows(in.q, first, n, D), rows(in.k, first, n, D),
                                  rows(in.v, first, n, D), rows(in.dout, first, n, D)};
            const Results alone = run_gpu(dt, 1, n, H, alone_in, {});
            const Results mine{rows(packed.out, first, n, D),
                               lse_rows(packed.lse, b, H, S, start, n),
                               rows(packed.dq, first, n, D),
                               rows(packed.dk, first, n, D),
                               rows(packed.dv, first, n, D),
                               {},
                               {}};
            if (plain_kernel(c))
              expect_bitwise(mine, alone,
                             "sequence " + std::to_string(b) + " document " + std::to_string(d) +
                                 " (start " + std::to_string(start) + ", length " +
                                 std::to_string(n) + ") against it alone, " + at);
            for (auto [into, from] :
                 {std::pair{&all_packed, &mine}, std::pair{&all_alone, &alone}}) {
              into->out.insert(into->out.end(), from->out.begin(), from->out.end());
              into->lse.insert(into->lse.end(), from->lse.begin(), from->lse.end());
              into->dq.insert(into->dq.end(), from->dq.begin(), from->dq.end());
              into->dk.insert(into->dk.end(), from->dk.begin(), from->dk.end());
              into->dv.insert(into->dv.end(), from->dv.begin(), from->dv.end());
            }
          }
        }
        if (plain_kernel(c)) continue;
        expect_close(all_packed.out, all_alone.out, kOut, "packed against alone: out " + at, dt);
        expect_close(all_packed.lse, all_alone.lse, kLse, "packed against alone: lse " + at, dt);
        expect_close(all_packed.dq, all_alone.dq, kDqDk, "packed against alone: dq " + at, dt);
        expect_close(all_packed.dk, all_alone.dk, kDqDk, "packed against alone: dk " + at, dt);
        expect_close(all_packed.dv, all_alone.dv, kDv, "packed against alone: dv " + at, dt);
      }
    }
  }
}

// New q, k, v and dout for one token of document 1 of sequence 0: every row outside that
// document (the other documents of sequence 0, all of sequence 1) keeps its bits.
TEST_F(CudaDocumentMask, OneDocumentChangesNoOther) {
  const int64_t B = 2;
  for (const FlashCase& c : kFlashCases) {
    for (int64_t S : kSeqLengths) {
      for (const Packing& packing : packings(S)) {
        const std::string at = case_name(c, S) + " " + packing.name;
        SCOPED_TRACE(at);
        const DType dt = c.dtype;
        const int64_t D = c.H * c.Dh, H = c.H;
        const std::vector<int32_t> starts = doc_starts(packing);
        const Inputs in = inputs(B * S, D, dt);
        // Document 1 of sequence 0: [start, start + n); its middle token changes.
        const int64_t start = packing.lengths[0][0], n = packing.lengths[0][1];
        const int64_t changed = start + n / 2;
        Inputs in2 = in;
        for (std::vector<double>* x : {&in2.q, &in2.k, &in2.v, &in2.dout})
          for (int64_t d = 0; d < D; ++d)
            (*x)[changed * D + d] = held((*x)[changed * D + d] + 1.5, dt);
        const Results r1 = run_gpu(dt, B, S, H, in, starts), r2 = run_gpu(dt, B, S, H, in2, starts);
        // Everything but the document's rows.
        const auto outside = [&](const std::vector<double>& x, int64_t width) {
          std::vector<double> kept(x.begin(), x.begin() + start * width);
          kept.insert(kept.end(), x.begin() + (start + n) * width, x.end());
          return kept;
        };
        const auto lse_outside = [&](const std::vector<double>& lse) {
          std::vector<double> kept;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < H; ++h)
              for (int64_t s = 0; s < S; ++s)
                if (b != 0 || s < start || s >= start + n) kept.push_back(lse[(b * H + h) * S + s]);
          return kept;
        };
        expect_bitwise(outside(r2.out, D), outside(r1.out, D), "out outside the document, " + at);
        expect_bitwise(lse_outside(r2.lse), lse_outside(r1.lse), "lse outside the document, " + at);
        expect_bitwise(outside(r2.dq, D), outside(r1.dq, D), "dq outside the document, " + at);
        expect_bitwise(outside(r2.dk, D), outside(r1.dk, D), "dk outside the document, " + at);
        expect_bitwise(outside(r2.dv, D), outside(r1.dv, D), "dv outside the document, " + at);
        // And the document itself did change (the test would be empty otherwise).
        EXPECT_GT(bits_differ(rows(r2.out, start, n, D), rows(r1.out, start, n, D)), 0) << at;
      }
    }
  }
}

// The reference attention (materialised probs) with doc_start against the CPU's: probs are 0
// left of a query's document, and the backward (which takes no doc_start) follows from them.
TEST_F(CudaDocumentMask, ReferenceAttentionMatchesTheCpu) {
  const int64_t B = 2, S = 45, H = 2, Dh = 16, T = B * S, D = H * Dh;
  // 32: a start at the softmax kernel's lane width; 1: a document of one token.
  const Packing packing{"reference", {{10, 1, 20, 14}, {32, 12, 1}}};
  const std::vector<int32_t> starts = doc_starts(packing);
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Inputs in = inputs(T, D, dt);
    const Tensor doc_c = starts_on(cpu(), starts), doc_g = starts_on(gpu(), starts);
    const Tensor qc = on_cpu({T, D}, in.q), kc = on_cpu({T, D}, in.k), vc = on_cpu({T, D}, in.v);
    const Tensor qg = on_gpu({T, D}, in.q, dt), kg = on_gpu({T, D}, in.k, dt),
                 vg = on_gpu({T, D}, in.v, dt);
    Tensor oc = cpu().alloc({T, D}, DType::f32), pc = cpu().alloc({B, H, S, S}, DType::f32);
    Tensor og = poisoned({T, D}, dt), pg = poisoned({B, H, S, S}, dt);
    cpu().attention_forward(oc, pc, qc, kc, vc, B, S, H, doc_c);
    gpu().attention_forward(og, pg, qg, kg, vg, B, S, H, doc_g);
    expect_close(gpu().read(pg), cpu().read(pc), kProbs, "attention_forward probs", dt);
    expect_close(gpu().read(og), cpu().read(oc), kOut, "attention_forward out", dt);
    // The masked probs are exactly 0.
    const std::vector<double> probs = gpu().read(pg);
    int64_t nonzero = 0;
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t j = 0; j < starts[bh / H * S + i]; ++j)
          nonzero += probs[(bh * S + i) * S + j] != 0.0;
    EXPECT_EQ(nonzero, 0) << "probs left of a query's document";
    Tensor dqc = cpu().alloc({T, D}, DType::f32), dkc = cpu().alloc({T, D}, DType::f32),
           dvc = cpu().alloc({T, D}, DType::f32);
    Tensor dqg = poisoned({T, D}, dt), dkg = poisoned({T, D}, dt), dvg = poisoned({T, D}, dt);
    cpu().attention_backward(dqc, dkc, dvc, on_cpu({T, D}, in.dout), qc, kc, vc, pc, B, S, H);
    gpu().attention_backward(dqg, dkg, dvg, on_gpu({T, D}, in.dout, dt), qg, kg, vg, pg, B, S, H);
    expect_close(gpu().read(dqg), cpu().read(dqc), kDqDk, "attention_backward dq", dt);
    expect_close(gpu().read(dkg), cpu().read(dkc), kDqDk, "attention_backward dk", dt);
    expect_close(gpu().read(dvg), cpu().read(dvc), kDv, "attention_backward dv", dt);
    // The flash ops agree with it (same masks): out against out, both from the GPU.
    Tensor of = poisoned({T, D}, dt), lf = poisoned({B, H, S}, stat_dtype(dt));
    gpu().flash_attention_forward(of, lf, qg, kg, vg, B, S, H, doc_g);
    expect_close(gpu().read(of), cpu().read(oc), kOut, "flash_attention_forward out (Dh 16)", dt);
  }
}

// Rotary with doc_start: against the CPU (element-wise kernel at Dh 8; the bf16 vector kernel at
// Dh 32), and a document's rows rotated in the packed sequence are bitwise its rows rotated
// alone at the start of a sequence.
TEST_F(CudaDocumentMask, RopeRestartsAtEachDocument) {
  const int64_t B = 2, S = 45, H = 3;
  const Packing packing{"rope", {{10, 1, 20, 14}, {32, 12, 1}}};
  const std::vector<int32_t> starts = doc_starts(packing);
  for (DType dt : {DType::f32, DType::bf16}) {
    for (int64_t Dh : {8, 32}) {
      const std::string at = std::string(dtype_name(dt)) + " Dh=" + std::to_string(Dh);
      SCOPED_TRACE(at);
      const int64_t T = B * S, D = H * Dh;
      const std::vector<double> x = values(T * D, dt), y = values(T * D, dt);
      const Tensor doc_c = starts_on(cpu(), starts), doc_g = starts_on(gpu(), starts);
      const Rotary llama3 = [] {
        Rotary r(5e5);
        r.scaling = RopeScaling::llama3;
        r.factor = 8.0;
        r.original_max_position = 16;
        return r;
      }();
      for (const Rotary& rotary : {Rotary(), llama3}) {
        Tensor xc = on_cpu({T, D}, x), xg = on_gpu({T, D}, x, dt);
        cpu().rope_forward(xc, B, S, H, rotary, doc_c);
        gpu().rope_forward(xg, B, S, H, rotary, doc_g);
        expect_close(gpu().read(xg), cpu().read(xc), kRope, "rope_forward " + at, dt);
        cpu().rope_backward(xc, B, S, H, rotary, doc_c);
        gpu().rope_backward(xg, B, S, H, rotary, doc_g);
        expect_close(gpu().read(xg), cpu().read(xc), kRope, "rope_backward " + at, dt);
      }
      Tensor qc = on_cpu({T, D}, x), kc = on_cpu({T, D}, y);
      Tensor qg = on_gpu({T, D}, x, dt), kg = on_gpu({T, D}, y, dt);
      cpu().rope_forward_qk(qc, kc, B, S, H, Rotary(), doc_c);
      gpu().rope_forward_qk(qg, kg, B, S, H, Rotary(), doc_g);
      expect_close(gpu().read(qg), cpu().read(qc), kRope, "rope_forward_qk q " + at, dt);
      expect_close(gpu().read(kg), cpu().read(kc), kRope, "rope_forward_qk k " + at, dt);
      // Each document alone.
      const std::vector<double> packed = gpu().read(qg);
      for (int64_t b = 0; b < B; ++b) {
        int64_t start = 0;
        for (int64_t n : packing.lengths[b]) {
          Tensor alone = on_gpu({n, D}, rows(x, b * S + start, n, D), dt);
          gpu().rope_forward(alone, 1, n, H);
          expect_bitwise(rows(packed, b * S + start, n, D), gpu().read(alone),
                         "rope of a document, packed against alone, " + at);
          start += n;
        }
      }
      cpu().rope_backward_qk(qc, kc, B, S, H, Rotary(), doc_c);
      gpu().rope_backward_qk(qg, kg, B, S, H, Rotary(), doc_g);
      expect_close(gpu().read(qg), cpu().read(qc), kRope, "rope_backward_qk q " + at, dt);
      expect_close(gpu().read(kg), cpu().read(kc), kRope, "rope_backward_qk k " + at, dt);
    }
  }
}

// prefer_cudnn_attention with documents not listed: cuDNN is not asked, the flash kernels run and
// say why, with the bits they give without the preference.
TEST_F(CudaDocumentMask, CudnnIsNotAskedWithUnlistedDocuments) {
  const int64_t B = 2, S = 100, H = 2, Dh = 64, D = H * Dh;
  const std::vector<int32_t> starts = doc_starts(packings(S)[0]);
  const Inputs in = inputs(B * S, D, DType::bf16);
  const Results plain = run_gpu(DType::bf16, B, S, H, in, starts, /*rope=*/false);
  gpu().prefer_cudnn_attention(true);
  const Tensor doc = starts_on(gpu(), starts);
  const Tensor q = on_gpu({B * S, D}, in.q), k = on_gpu({B * S, D}, in.k),
               v = on_gpu({B * S, D}, in.v);
  Tensor out = poisoned({B * S, D}, DType::bf16), lse = poisoned({B, H, S}, DType::f32);
  gpu().flash_attention_forward(out, lse, q, k, v, B, S, H, doc);
  EXPECT_EQ(cuda_attention_kernel(gpu()), "flash: document masking");
  Tensor dq = poisoned({B * S, D}, DType::bf16), dk = poisoned({B * S, D}, DType::bf16),
         dv = poisoned({B * S, D}, DType::bf16);
  gpu().flash_attention_backward(dq, dk, dv, on_gpu({B * S, D}, in.dout), q, k, v, out, lse, B, S,
                                 H, doc);
  EXPECT_EQ(cuda_attention_kernel(gpu()), "flash: document masking");
  gpu().prefer_cudnn_attention(false);
  const Results preferred{
      gpu().read(out), gpu().read(lse), gpu().read(dq), gpu().read(dk), gpu().read(dv), {}, {}};
  expect_bitwise(preferred, plain, "with prefer_cudnn_attention against without");
}

// Listed documents with prefer_cudnn_attention but SY_CUDNN_DOCUMENTS=0: the flash kernels, with
// their bits.
TEST_F(CudaDocumentMask, ListedDocumentsStayOnFlashWhenTurnedOff) {
  const int64_t B = 2, S = 100, H = 2, Dh = 64, D = H * Dh;
  const std::vector<int32_t> starts = doc_starts(packings(S)[0]);
  const Inputs in = inputs(B * S, D, DType::bf16);
  const Results plain = run_gpu(DType::bf16, B, S, H, in, starts, /*rope=*/false);
  const test::EnvironmentRestored cudnn_documents("SY_CUDNN_DOCUMENTS");
  cudnn_documents.set("0");
  const Tensor doc = starts_on(gpu(), starts);
  const DocumentList documents = listed_on(gpu(), starts, S);
  const Tensor q = on_gpu({B * S, D}, in.q), k = on_gpu({B * S, D}, in.k),
               v = on_gpu({B * S, D}, in.v);
  gpu().prefer_cudnn_attention(true);
  Tensor out = poisoned({B * S, D}, DType::bf16), lse = poisoned({B, H, S}, DType::f32);
  gpu().flash_attention_forward(out, lse, q, k, v, B, S, H, doc, documents);
  EXPECT_EQ(cuda_attention_kernel(gpu()), "flash: document masking");
  gpu().prefer_cudnn_attention(false);
  expect_bitwise(gpu().read(out), plain.out, "out, listed with SY_CUDNN_DOCUMENTS=0");
}

// Listed documents on cuDNN (ragged layout) against the CPU's flash ops with doc_start, at
// test_cuda_cudnn's bounds (out 1e-2, lse 1e-5, dq and dk 2e-2, dv 1e-2); a second run gives the
// same bits. Skipped, saying why, where cuDNN declines them.
TEST_F(CudaDocumentMask, CudnnRunsListedDocuments) {
  const int64_t B = 2;
  for (int64_t Dh : {64, 128}) {
    for (int64_t S : {100, 192, 257, 2048}) {
      std::vector<Packing> cases = packings(S);
      if (S > 1024) cases.resize(2);  // random and length 1: the others add calls, not cases
      for (const Packing& packing : cases) {
        const int64_t H = 2, T = B * S, D = H * Dh;
        const std::string at =
            "Dh=" + std::to_string(Dh) + " S=" + std::to_string(S) + " " + packing.name;
        SCOPED_TRACE(at);
        const std::vector<int32_t> starts = doc_starts(packing);
        const Inputs in = inputs(T, D, DType::bf16);
        const Results g = run_gpu(DType::bf16, B, S, H, in, starts, /*rope=*/false, true);
        std::printf("[ kernel   ] %s: forward %s, backward %s\n", at.c_str(),
                    g.forward_kernel.c_str(), g.backward_kernel.c_str());
        if (g.forward_kernel != "cudnn documents" || g.backward_kernel != "cudnn documents")
          GTEST_SKIP() << "cuDNN declined the documents, " << at << ": forward " << g.forward_kernel
                       << ", backward " << g.backward_kernel;
        const Tensor doc_c = starts_on(cpu(), starts);
        const DocumentList list_c = listed_on(cpu(), starts, S);
        const Tensor qc = on_cpu({T, D}, in.q), kc = on_cpu({T, D}, in.k),
                     vc = on_cpu({T, D}, in.v);
        Tensor oc = cpu().alloc({T, D}, DType::f32), lc = cpu().alloc({B, H, S}, DType::f32);
        cpu().flash_attention_forward(oc, lc, qc, kc, vc, B, S, H, doc_c, list_c);
        Tensor dqc = cpu().alloc({T, D}, DType::f32), dkc = cpu().alloc({T, D}, DType::f32),
               dvc = cpu().alloc({T, D}, DType::f32);
        cpu().flash_attention_backward(dqc, dkc, dvc, on_cpu({T, D}, in.dout), qc, kc, vc, oc, lc,
                                       B, S, H, doc_c, list_c);
        expect_close(g.out, cpu().read(oc), kOut, "cudnn documents out " + at, DType::bf16);
        expect_close(g.lse, cpu().read(lc), {1e-6, 1e-5}, "cudnn documents lse " + at, DType::bf16);
        expect_close(g.dq, cpu().read(dqc), kDqDk, "cudnn documents dq " + at, DType::bf16);
        expect_close(g.dk, cpu().read(dkc), kDqDk, "cudnn documents dk " + at, DType::bf16);
        expect_close(g.dv, cpu().read(dvc), kDv, "cudnn documents dv " + at, DType::bf16);
        const Results again = run_gpu(DType::bf16, B, S, H, in, starts, /*rope=*/false, true);
        expect_bitwise(again, g, "a second run, " + at);
      }
    }
  }
}

// On cuDNN too, new values for one token of document 1 of sequence 0 leave every row outside that
// document with its bits.
TEST_F(CudaDocumentMask, CudnnDocumentChangesNoOther) {
  const int64_t B = 2, S = 257, H = 2, Dh = 128, D = H * Dh;
  for (const Packing& packing : packings(S)) {
    SCOPED_TRACE(packing.name);
    const std::vector<int32_t> starts = doc_starts(packing);
    const Inputs in = inputs(B * S, D, DType::bf16);
    const int64_t start = packing.lengths[0][0], n = packing.lengths[0][1];
    Inputs in2 = in;
    for (std::vector<double>* x : {&in2.q, &in2.k, &in2.v, &in2.dout})
      for (int64_t d = 0; d < D; ++d)
        (*x)[(start + n / 2) * D + d] = held((*x)[(start + n / 2) * D + d] + 1.5, DType::bf16);
    const Results r1 = run_gpu(DType::bf16, B, S, H, in, starts, true, true);
    if (r1.forward_kernel != "cudnn documents" || r1.backward_kernel != "cudnn documents")
      GTEST_SKIP() << "cuDNN declined the documents: " << r1.forward_kernel << ", "
                   << r1.backward_kernel;
    const Results r2 = run_gpu(DType::bf16, B, S, H, in2, starts, true, true);
    const auto outside = [&](const std::vector<double>& x) {
      std::vector<double> kept(x.begin(), x.begin() + start * D);
      kept.insert(kept.end(), x.begin() + (start + n) * D, x.end());
      return kept;
    };
    expect_bitwise(outside(r2.out), outside(r1.out), "out outside the document");
    expect_bitwise(outside(r2.dq), outside(r1.dq), "dq outside the document");
    expect_bitwise(outside(r2.dk), outside(r1.dk), "dk outside the document");
    expect_bitwise(outside(r2.dv), outside(r1.dv), "dv outside the document");
    EXPECT_GT(bits_differ(rows(r2.out, start, n, D), rows(r1.out, start, n, D)), 0);
  }
}

// The backward over listed documents in chunks (of documents; of heads where one document's dS
// is over the budget) gives the bits of one call, whatever SY_CUDNN_BWD_WORKSPACE_MIB says.
TEST_F(CudaDocumentMask, CudnnChunksOfDocumentsGiveTheBitsOfOneCall) {
  const int64_t B = 2, S = 2048, H = 4, Dh = 128, D = H * Dh;
  CounterRng rng(0xC4C5);
  const Packing packing{"chunks", {random_lengths(S, 5, rng), random_lengths(S, 9, rng)}};
  const std::vector<int32_t> starts = doc_starts(packing);
  const Inputs in = inputs(B * S, D, DType::bf16);
  const test::EnvironmentRestored restored("SY_CUDNN_BWD_WORKSPACE_MIB");
  restored.set("0");
  const Results one = run_gpu(DType::bf16, B, S, H, in, starts, false, true);
  if (one.backward_kernel != "cudnn documents")
    GTEST_SKIP() << "cuDNN declined the documents: " << one.backward_kernel;
  // 1 MiB: one head of one document a call; 64 MiB: a few documents a call.
  for (const char* budget : {"1", "64", ""}) {
    SCOPED_TRACE(std::string("budget '") + budget + "' MiB");
    restored.set(budget);
    const Results chunked = run_gpu(DType::bf16, B, S, H, in, starts, false, true);
    EXPECT_EQ(chunked.backward_kernel, "cudnn documents");
    expect_bitwise(chunked, one, "chunked against one call");
  }
}

}  // namespace
}  // namespace sy
