// Causal attention on cuDNN's fused flash attention, through the cuDNN 9 backend API (no
// cudnn-frontend): the same contract as flash_attention_forward/backward (backend.h), for bf16
// with Dh a multiple of 8 up to 128. Each op is an operation graph of matmul, pointwise,
// reduction and reshape nodes in the shape cuDNN's runtime-fusion SDPA engines recognise; graphs
// are built once per (device context, pass, B, S, H, Dh) and cached with their execution plan and
// workspace size. Anything cuDNN rejects while building is a decline (the caller runs our flash
// kernels), reported once per shape on stderr with the descriptor and attribute that failed.
//
// Forward, per (b, h):  S = Q K^T * scale; causal select(S, -inf, row >= col);
//   stats = max + log(sum exp(S - max))   (natural log: our lse)
//   O = (exp(S - max) / sum) V            (P in bf16, fp32 accumulation)
// Backward:  Dsum = rowsum(dO * O); P = exp(causal(Q K^T * scale - stats));
//   dV = P^T dO; dS = P (dO V^T - Dsum) * scale; dK = dS^T Q; dQ = dS K.
// Deterministic (the default): dQ is written by its own matmul (cuDNN's "dP workspace" form,
// which the frontend picks for a deterministic Hopper backward) rather than accumulated in f32
// across key tiles; engines whose numerical notes say NONDETERMINISTIC are refused. With
// run.deterministic false (Backend::set_deterministic), dQ is accumulated in an f32 buffer
// across key tiles in whatever order the tiles finish (the form cuDNN's engines take for
// dQ_accum), then rounded to bf16: no dS workspace, and the bits may differ run to run.
// Documents (kernels.h, ListedDocuments): the graphs' batch entries are documents in cuDNN's
// ragged layout (each I/O tensor's batch entry d starts at element offset ragged[d]; the stats
// are token-major, [B*S, H], and copied to and from lse's [B, H, S]); every matmul's row and
// reduction counts are overridden by the document's length, and a padding mask (row and column
// below the length) comes before the causal one, in the order and form cudnn-frontend's padded
// SDPA graphs take.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "model/attention_workspace.h"
#include "model/cuda/env_choice.h"
#include "model/cuda/kernels.h"

#ifdef SY_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace sy::cuda {

#ifndef SY_HAVE_CUDNN

bool cudnn_attention_forward(Context&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const Tensor&, int64_t, int64_t, int64_t, const ListedDocuments*,
                             std::string* declined) {
  if (declined) *declined = "built without cuDNN";
  return false;
}
bool cudnn_attention_backward(Context&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, int64_t, int64_t, int64_t, bool,
                              const ListedDocuments*, std::string* declined) {
  if (declined) *declined = "built without cuDNN";
  return false;
}
void cudnn_attention_release(const Context&) {}

#else

namespace {

// A cuDNN call that failed while a graph was being built: what was being done, and cuDNN's status
// and last error message. Caught where the graph is built and turned into a decline.
struct CudnnRejected : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string status_text(cudnnStatus_t status) {
  std::string text = std::string(cudnnGetErrorString(status)) + " (" +
                     std::to_string(static_cast<int>(status)) + ")";
  char last[1024] = {};
  cudnnGetLastErrorString(last, sizeof last);
  if (last[0]) text += "; " + std::string(last);
  return text;
}

void check(cudnnStatus_t status, const std::string& what) {
  if (status != CUDNN_STATUS_SUCCESS) throw CudnnRejected(what + ": " + status_text(status));
}

// One backend descriptor: created on construction, destroyed with the object. Every failure
// names the descriptor (`name_`) and the attribute.
class Descriptor {
 public:
  Descriptor(cudnnBackendDescriptorType_t type, std::string name) : name_(std::move(name)) {
    check(cudnnBackendCreateDescriptor(type, &desc_), name_ + ": cudnnBackendCreateDescriptor");
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  ~Descriptor() {
    if (desc_) cudnnBackendDestroyDescriptor(desc_);
  }

  template <class T>
  Descriptor& set(cudnnBackendAttributeName_t attr, const char* attr_name,
                  cudnnBackendAttributeType_t type, int64_t count, const T* values) {
    check(cudnnBackendSetAttribute(desc_, attr, type, count, values), name_ + ": set " + attr_name);
    return *this;
  }
  Descriptor& finalize() {
    check(cudnnBackendFinalize(desc_), name_ + ": cudnnBackendFinalize");
    return *this;
  }
  cudnnBackendDescriptor_t get() const { return desc_; }

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
  std::string name_;
};

// An attribute and its name, for Descriptor::set's and get_one's messages.
#define SY_ATTR(attr) attr, #attr

// The one value of attribute `attr` of `desc` (of cuDNN type `type`); `name` says whose in any
// error.
template <class V>
V get_one(cudnnBackendDescriptor_t desc, cudnnBackendAttributeName_t attr, const char* attr_name,
          cudnnBackendAttributeType_t type, const std::string& name) {
  V value{};
  int64_t count = 0;
  check(cudnnBackendGetAttribute(desc, attr, type, 1, &count, &value), name + ": get " + attr_name);
  return value;
}

using Dims = std::array<int64_t, 4>;

// The variant pack's tensors. Virtual tensors get ids from kFirstVirtual on.
// clang-format off
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kdO, kdQ, kdK, kdV, kScale, kNegInf, kOne, kSoftmaxSum, kdQAccum,
  kRaggedRows, kRaggedStats, kSeqLen,
  kFirstVirtual = 100
};
// clang-format on

// What few tensors add to dims, strides and type.
struct TensorExtras {
  bool by_value = false;  // a host scalar in the variant pack
  cudnnBackendTensorReordering_t reordering = CUDNN_TENSOR_REORDERING_NONE;
  cudnnBackendDescriptor_t ragged = nullptr;  // batch entry d starts at element ragged[d]
  int64_t alignment = 16;                     // of the pointers the variant pack will carry
};

// A matmul's per batch entry row and reduction counts, overriding its dims (documents: their
// lengths).
struct MatmulCounts {
  cudnnBackendDescriptor_t m = nullptr, n = nullptr, k = nullptr;
};

// Builds one operation graph; owns every descriptor it made, which live as long as the plan.
class GraphBuilder {
 public:
  explicit GraphBuilder(const char* op) : op_(op) {}

  cudnnBackendDescriptor_t tensor(const std::string& name, int64_t uid, Dims dims, Dims strides,
                                  cudnnDataType_t dtype, bool is_virtual,
                                  TensorExtras extras = {}) {
    const bool by_value = extras.by_value;
    const cudnnBackendTensorReordering_t reordering = extras.reordering;
    Descriptor& t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor " + name);
    const int64_t alignment = extras.alignment;
    t.set(SY_ATTR(CUDNN_ATTR_TENSOR_DATA_TYPE), CUDNN_TYPE_DATA_TYPE, 1, &dtype)
        .set(SY_ATTR(CUDNN_ATTR_TENSOR_DIMENSIONS), CUDNN_TYPE_INT64, 4, dims.data())
        .set(SY_ATTR(CUDNN_ATTR_TENSOR_STRIDES), CUDNN_TYPE_INT64, 4, strides.data())
        .set(SY_ATTR(CUDNN_ATTR_TENSOR_UNIQUE_ID), CUDNN_TYPE_INT64, 1, &uid)
        .set(SY_ATTR(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), CUDNN_TYPE_INT64, 1, &alignment)
        .set(SY_ATTR(CUDNN_ATTR_TENSOR_IS_VIRTUAL), CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) t.set(SY_ATTR(CUDNN_ATTR_TENSOR_IS_BY_VALUE), CUDNN_TYPE_BOOLEAN, 1, &by_value);
    if (reordering != CUDNN_TENSOR_REORDERING_NONE)
      t.set(SY_ATTR(CUDNN_ATTR_TENSOR_REORDERING_MODE), CUDNN_TYPE_TENSOR_REORDERING_MODE, 1,
            &reordering);
    if (extras.ragged)
      t.set(SY_ATTR(CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
            &extras.ragged);
    return t.finalize().get();
  }
  cudnnBackendDescriptor_t virt(const std::string& name, Dims dims, Dims strides,
                                cudnnDataType_t dtype = CUDNN_DATA_FLOAT) {
    return tensor(name, next_uid_++, dims, strides, dtype, true);
  }
  // A host scalar passed by value in the variant pack.
  cudnnBackendDescriptor_t scalar(const std::string& name, int64_t uid) {
    return tensor(name, uid, {1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, false,
                  {.by_value = true});
  }
  // An integer vector [n] on the device (ragged offsets, lengths), as cuDNN's [n, 1, 1, 1].
  cudnnBackendDescriptor_t int_vector(const std::string& name, int64_t uid, int64_t n,
                                      cudnnDataType_t dtype) {
    return tensor(name, uid, {n, 1, 1, 1}, {1, 1, 1, 1}, dtype, false);
  }

  // y = mode(x[, b[, t]]); GEN_INDEX takes axis >= 0.
  void pointwise(const std::string& name, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t b = nullptr,
                 cudnnBackendDescriptor_t t = nullptr, int64_t axis = -1,
                 cudnnDataType_t math = CUDNN_DATA_FLOAT) {
    Descriptor& pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise " + name);
    pw.set(SY_ATTR(CUDNN_ATTR_POINTWISE_MODE), CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
        .set(SY_ATTR(CUDNN_ATTR_POINTWISE_MATH_PREC), CUDNN_TYPE_DATA_TYPE, 1, &math);
    if (axis >= 0) pw.set(SY_ATTR(CUDNN_ATTR_POINTWISE_AXIS), CUDNN_TYPE_INT64, 1, &axis);
    pw.finalize();
    cudnnBackendDescriptor_t pw_desc = pw.get();
    Descriptor& op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op " + name);
    op.set(SY_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
           &pw_desc)
        .set(SY_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_XDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) op.set(SY_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_BDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    if (t) op.set(SY_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_TDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    op.set(SY_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_YDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    ops_.push_back(op.finalize().get());
  }

  // y[..., 1] = reduce(x) over the last dimension.
  void reduction(const std::string& name, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y) {
    Descriptor& red = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction " + name);
    const cudnnDataType_t math = CUDNN_DATA_FLOAT;
    red.set(SY_ATTR(CUDNN_ATTR_REDUCTION_OPERATOR), CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode)
        .set(SY_ATTR(CUDNN_ATTR_REDUCTION_COMP_TYPE), CUDNN_TYPE_DATA_TYPE, 1, &math)
        .finalize();
    cudnnBackendDescriptor_t red_desc = red.get();
    Descriptor& op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction op " + name);
    op.set(SY_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_XDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x)
        .set(SY_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_YDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y)
        .set(SY_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_DESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
             &red_desc);
    ops_.push_back(op.finalize().get());
  }

  // c = a @ b, batched over the first two dimensions, fp32 accumulation.
  void matmul(const std::string& name, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
              cudnnBackendDescriptor_t c, MatmulCounts counts = {}) {
    Descriptor& mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul " + name);
    const cudnnDataType_t math = CUDNN_DATA_FLOAT;
    mm.set(SY_ATTR(CUDNN_ATTR_MATMUL_COMP_TYPE), CUDNN_TYPE_DATA_TYPE, 1, &math).finalize();
    cudnnBackendDescriptor_t mm_desc = mm.get();
    Descriptor& op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul op " + name);
    op.set(SY_ATTR(CUDNN_ATTR_OPERATION_MATMUL_ADESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a)
        .set(SY_ATTR(CUDNN_ATTR_OPERATION_MATMUL_BDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b)
        .set(SY_ATTR(CUDNN_ATTR_OPERATION_MATMUL_CDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c)
        .set(SY_ATTR(CUDNN_ATTR_OPERATION_MATMUL_DESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm_desc);
    if (counts.m)
      op.set(SY_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC),
             CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &counts.m);
    if (counts.n)
      op.set(SY_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC),
             CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &counts.n);
    if (counts.k)
      op.set(SY_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC),
             CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &counts.k);
    ops_.push_back(op.finalize().get());
  }

  // y: the same elements as x seen through other dims/strides (a transpose, no data movement).
  void reshape(const std::string& name, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    Descriptor& op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape op " + name);
    op.set(SY_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_XDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x)
        .set(SY_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_YDESC), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    ops_.push_back(op.finalize().get());
  }

  // score with every entry above the diagonal (key > query) replaced by neg_inf.
  cudnnBackendDescriptor_t causal_mask(cudnnBackendDescriptor_t score, cudnnBackendDescriptor_t neg_inf,
                                       Dims dims, Dims strides) {
    auto row = virt("row_index", dims, strides, CUDNN_DATA_INT32);
    auto col = virt("col_index", dims, strides, CUDNN_DATA_INT32);
    auto keep = virt("causal_keep", dims, strides, CUDNN_DATA_BOOLEAN);
    auto masked = virt("causal_masked", dims, strides);
    pointwise("gen_row_index", CUDNN_POINTWISE_GEN_INDEX, score, row, nullptr, nullptr, 2);
    pointwise("gen_col_index", CUDNN_POINTWISE_GEN_INDEX, score, col, nullptr, nullptr, 3);
    pointwise("row_ge_col", CUDNN_POINTWISE_CMP_GE, row, keep, col, nullptr, -1,
              CUDNN_DATA_BOOLEAN);
    pointwise("causal_select", CUDNN_POINTWISE_BINARY_SELECT, score, masked, neg_inf, keep);
    return masked;
  }

  // score with every entry whose row or column is not below its batch entry's length (a
  // document's, in the ragged layout) replaced by neg_inf.
  cudnnBackendDescriptor_t padding_mask(cudnnBackendDescriptor_t score,
                                        cudnnBackendDescriptor_t neg_inf,
                                        cudnnBackendDescriptor_t length, Dims dims, Dims strides) {
    auto row = virt("pad_row_index", dims, strides, CUDNN_DATA_INT32);
    auto col = virt("pad_col_index", dims, strides, CUDNN_DATA_INT32);
    auto row_in = virt("row_in_document", dims, strides, CUDNN_DATA_BOOLEAN);
    auto col_in = virt("col_in_document", dims, strides, CUDNN_DATA_BOOLEAN);
    auto keep = virt("padding_keep", dims, strides, CUDNN_DATA_BOOLEAN);
    auto masked = virt("padding_masked", dims, strides);
    pointwise("gen_pad_row_index", CUDNN_POINTWISE_GEN_INDEX, score, row, nullptr, nullptr, 2,
              CUDNN_DATA_INT32);
    pointwise("gen_pad_col_index", CUDNN_POINTWISE_GEN_INDEX, score, col, nullptr, nullptr, 3,
              CUDNN_DATA_INT32);
    pointwise("row_lt_length", CUDNN_POINTWISE_CMP_LT, row, row_in, length, nullptr, -1,
              CUDNN_DATA_BOOLEAN);
    pointwise("col_lt_length", CUDNN_POINTWISE_CMP_LT, col, col_in, length, nullptr, -1,
              CUDNN_DATA_BOOLEAN);
    pointwise("row_and_col", CUDNN_POINTWISE_LOGICAL_AND, row_in, keep, col_in, nullptr, -1,
              CUDNN_DATA_BOOLEAN);
    pointwise("padding_select", CUDNN_POINTWISE_BINARY_SELECT, score, masked, neg_inf, keep);
    return masked;
  }

  const std::vector<cudnnBackendDescriptor_t>& ops() const { return ops_; }
  int64_t next_uid() { return next_uid_++; }
  Descriptor& make(cudnnBackendDescriptorType_t type, std::string name) {
    keep_.push_back(std::make_unique<Descriptor>(type, std::string(op_) + " " + name));
    return *keep_.back();
  }

 private:
  const char* op_;
  std::vector<std::unique_ptr<Descriptor>> keep_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_uid_ = kFirstVirtual;
};

// A built graph: its descriptors, the chosen plan, its workspace and the by-value scalars (whose
// addresses the variant pack carries).
struct Plan {
  std::unique_ptr<GraphBuilder> graph;
  std::unique_ptr<Descriptor> op_graph, plan;
  int64_t workspace_bytes = 0;
  float scale = 0.f, neg_inf = 0.f, one = 1.f;
};

struct Key {
  bool backward;
  int64_t B, S, H, Dh;
  bool deterministic = true;  // backward: the dP-workspace form, deterministic engines only
  // Heads a token row holds in memory, when a call takes only H of them (a chunk of heads of
  // the deterministic backward); 0: H.
  int64_t heads_in_memory = 0;
  // A graph over documents (cuDNN's ragged layout, token-major stats): B counts the documents a
  // call takes and S their most tokens.
  bool documents = false;
  auto operator<=>(const Key&) const = default;
};

// Per device context: the handle (on the backend's stream), the plans, and the declines with their
// reasons (a shape cuDNN declined once is not retried).
struct State {
  cudnnHandle_t handle = nullptr;
  std::string handle_error;  // why there is no handle
  std::map<Key, std::unique_ptr<Plan>> plans;
  std::map<Key, std::string> declined;
  ~State() {
    plans.clear();
    if (handle) cudnnDestroy(handle);
  }
};

std::mutex registry_mutex;
std::map<const Context*, std::unique_ptr<State>>& registry() {
  static std::map<const Context*, std::unique_ptr<State>> states;
  return states;
}

State& state_for(Context& ctx) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto& slot = registry()[&ctx];
  if (!slot) {
    slot = std::make_unique<State>();
    const size_t version = cudnnGetVersion();
    if (version < 90000) {
      slot->handle_error = "cuDNN " + std::to_string(version) + " < 9.0 at run time";
    } else if (cudnnStatus_t s = cudnnCreate(&slot->handle); s != CUDNN_STATUS_SUCCESS) {
      slot->handle = nullptr;
      slot->handle_error = "cudnnCreate: " + status_text(s);
    } else if (s = cudnnSetStream(slot->handle, ctx.stream); s != CUDNN_STATUS_SUCCESS) {
      slot->handle_error = "cudnnSetStream: " + status_text(s);
      cudnnDestroy(slot->handle);
      slot->handle = nullptr;
    }
  }
  return *slot;
}

// Our layout as cuDNN dims [B, H, S, Dh]: token rows of H*Dh, head h at column h*Dh.
Dims bhsd(int64_t B, int64_t S, int64_t H, int64_t Dh) { return {B, H, S, Dh}; }
Dims bhsd_strides(int64_t S, int64_t H, int64_t Dh) { return {S * H * Dh, Dh, H * Dh, 1}; }
// The same memory seen transposed, [B, H, Dh, S] (K^T, V^T).
Dims bhds(int64_t B, int64_t S, int64_t H, int64_t Dh) { return {B, H, Dh, S}; }
Dims bhds_strides(int64_t S, int64_t H, int64_t Dh) { return {S * H * Dh, Dh, 1, H * Dh}; }

// The tensors a graph over documents adds (null members without documents): the ragged offsets
// of the token rows and of the stats, and the documents' lengths.
struct Ragged {
  cudnnBackendDescriptor_t rows = nullptr, stats = nullptr, length = nullptr;
  MatmulCounts qk() const { return {length, length, nullptr}; }      // [rows, keys]
  MatmulCounts reduce() const { return {length, nullptr, length}; }  // rows, over rows
};

// Stats over documents, as cudnn-frontend's ragged graphs take them: token-major, [T, Hm] f32
// (row t's heads side by side), a document's entry d starting at its first token's row.
Dims token_major_stats(int64_t S, int64_t Hm) { return {Hm * S, 1, Hm, 1}; }

Ragged ragged_tensors(GraphBuilder& g, const Key& key) {
  if (!key.documents) return {};
  return {g.int_vector("ragged rows", kRaggedRows, key.B + 1, CUDNN_DATA_INT64),
          g.int_vector("ragged stats", kRaggedStats, key.B + 1, CUDNN_DATA_INT64),
          g.int_vector("document lengths", kSeqLen, key.B, CUDNN_DATA_INT32)};
}

void build_forward(GraphBuilder& g, const Key& key) {
  const int64_t B = key.B, S = key.S, H = key.H, Dh = key.Dh;
  const Dims ss{B, H, S, S}, ss_st{H * S * S, S * S, S, 1};
  const Dims row{B, H, S, 1}, row_st{H * S, S, 1, 1};
  const Dims stats_st = key.documents ? token_major_stats(S, H) : row_st;
  const Ragged r = ragged_tensors(g, key);
  const auto bf = CUDNN_DATA_BFLOAT16;
  const TensorExtras rows{.ragged = r.rows};
  auto q = g.tensor("Q", kQ, bhsd(B, S, H, Dh), bhsd_strides(S, H, Dh), bf, false, rows);
  auto kt = g.tensor("K^T", kK, bhds(B, S, H, Dh), bhds_strides(S, H, Dh), bf, false, rows);
  auto v = g.tensor("V", kV, bhsd(B, S, H, Dh), bhsd_strides(S, H, Dh), bf, false, rows);
  auto o = g.tensor("O", kO, bhsd(B, S, H, Dh), bhsd_strides(S, H, Dh), bf, false, rows);
  auto stats =
      g.tensor("stats", kStats, row, stats_st, CUDNN_DATA_FLOAT, false, {.ragged = r.stats});
  auto scale = g.scalar("scale", kScale);
  auto neg_inf = g.scalar("neg_inf", kNegInf);

  auto s = g.virt("S", ss, ss_st);
  g.matmul("Q K^T", q, kt, s, r.qk());
  auto scaled = g.virt("S_scaled", ss, ss_st);
  g.pointwise("scale", CUDNN_POINTWISE_MUL, s, scaled, scale);
  auto in_documents = r.length ? g.padding_mask(scaled, neg_inf, r.length, ss, ss_st) : scaled;
  auto masked = g.causal_mask(in_documents, neg_inf, ss, ss_st);
  auto row_max = g.virt("row_max", row, row_st);
  g.reduction("max", CUDNN_REDUCE_TENSOR_MAX, masked, row_max);
  auto shifted = g.virt("S_minus_max", ss, ss_st);
  g.pointwise("sub_max", CUDNN_POINTWISE_SUB, masked, shifted, row_max);
  auto e = g.virt("exp", ss, ss_st);
  g.pointwise("exp", CUDNN_POINTWISE_EXP, shifted, e);
  auto row_sum = g.virt("row_sum", row, row_st);
  g.reduction("sum", CUDNN_REDUCE_TENSOR_ADD, e, row_sum);
  auto log_sum = g.virt("log_sum", row, row_st);
  g.pointwise("log", CUDNN_POINTWISE_LOG, row_sum, log_sum);
  g.pointwise("stats", CUDNN_POINTWISE_ADD, row_max, stats, log_sum);
  auto p = g.virt("P", ss, ss_st, bf);  // bmm2 takes P in the I/O type
  g.pointwise("div_sum", CUDNN_POINTWISE_DIV, e, p, row_sum);
  g.matmul("P V", p, v, o, r.reduce());
}

// Hm (key.heads_in_memory, else H): the heads of a token row in memory, of which this graph
// takes H (from the pointers' offsets).
void build_backward(GraphBuilder& g, const Key& key) {
  const int64_t B = key.B, S = key.S, H = key.H, Dh = key.Dh;
  const int64_t Hm = key.heads_in_memory ? key.heads_in_memory : H;
  const Dims ss{B, H, S, S}, ss_st{H * S * S, S * S, S, 1}, ss_t_st{H * S * S, S * S, 1, S};
  const Dims row{B, H, S, 1}, row_st{H * S, S, 1, 1};
  const Dims row_mem_st = key.documents ? token_major_stats(S, Hm) : Dims{Hm * S, S, 1, 1};
  const Dims sd = bhsd(B, S, H, Dh), sd_st = bhsd_strides(S, Hm, Dh);
  const Dims ds = bhds(B, S, H, Dh), ds_st = bhds_strides(S, Hm, Dh);
  const Ragged r = ragged_tensors(g, key);
  // Token-major stats of a chunk of heads start at head h's float: 4-byte aligned.
  const TensorExtras rows{.ragged = r.rows};
  const TensorExtras stats_rows{.ragged = r.stats, .alignment = key.documents ? 4 : 16};
  const auto bf = CUDNN_DATA_BFLOAT16;
  auto q = g.tensor("Q", kQ, sd, sd_st, bf, false, rows);
  auto kt = g.tensor("K^T", kK, ds, ds_st, bf, false, rows);
  auto vt = g.tensor("V^T", kV, ds, ds_st, bf, false, rows);
  auto o = g.tensor("O", kO, sd, sd_st, bf, false, rows);
  auto d_o = g.tensor("dO", kdO, sd, sd_st, bf, false, rows);
  auto stats = g.tensor("stats", kStats, row, row_mem_st, CUDNN_DATA_FLOAT, false, stats_rows);
  auto dq = g.tensor("dQ", kdQ, sd, sd_st, bf, false, rows);
  auto dk = g.tensor("dK", kdK, sd, sd_st, bf, false, rows);
  auto dv = g.tensor("dV", kdV, sd, sd_st, bf, false, rows);
  auto scale = g.scalar("scale", kScale);
  auto neg_inf = g.scalar("neg_inf", kNegInf);
  auto one = g.scalar("one", kOne);
  // rowsum(dO * O), in the workspace (a second kernel of the engine reads it); laid out as the
  // stats are.
  auto softmax_sum =
      g.tensor("softmax_sum", kSoftmaxSum, row, row_mem_st, CUDNN_DATA_FLOAT, false, stats_rows);

  auto d_o_o = g.virt("dO*O", sd, {H * S * Dh, S * Dh, H * Dh, 1});
  g.pointwise("mul_dO_O", CUDNN_POINTWISE_MUL, d_o, d_o_o, o);
  auto dot = g.virt("rowsum_dO_O", row, row_st);
  g.reduction("sum_dO_O", CUDNN_REDUCE_TENSOR_ADD, d_o_o, dot);
  g.pointwise("softmax_sum", CUDNN_POINTWISE_MUL, dot, softmax_sum, one);

  // P recomputed from the stats.
  auto s = g.virt("S", ss, ss_st);
  g.matmul("Q K^T", q, kt, s, r.qk());
  auto scaled = g.virt("S_scaled", ss, ss_st);
  g.pointwise("scale", CUDNN_POINTWISE_MUL, s, scaled, scale);
  auto in_documents = r.length ? g.padding_mask(scaled, neg_inf, r.length, ss, ss_st) : scaled;
  auto shifted = g.virt("S_minus_stats", ss, ss_st);
  g.pointwise("sub_stats", CUDNN_POINTWISE_SUB, in_documents, shifted, stats);
  auto masked = g.causal_mask(shifted, neg_inf, ss, ss_st);
  auto p = g.virt("P", ss, ss_st);
  g.pointwise("exp", CUDNN_POINTWISE_EXP, masked, p);

  // dV = P^T dO
  auto p_t = g.virt("P^T", ss, ss_t_st, bf);
  g.reshape("P^T", p, p_t);
  g.matmul("P^T dO", p_t, d_o, dv, r.reduce());

  // dS = P (dO V^T - softmax_sum) * scale
  auto dp = g.virt("dP", ss, ss_st);
  g.matmul("dO V^T", d_o, vt, dp, r.qk());
  auto dp_centered = g.virt("dP_minus_sum", ss, ss_st);
  g.pointwise("sub_softmax_sum", CUDNN_POINTWISE_SUB, dp, dp_centered, softmax_sum);
  auto dp_p = g.virt("dP*P", ss, ss_st);
  g.pointwise("mul_P", CUDNN_POINTWISE_MUL, dp_centered, dp_p, p);
  auto d_s = g.virt("dS", ss, ss_st);
  g.pointwise("scale_dS", CUDNN_POINTWISE_MUL, dp_p, d_s, scale);

  // dK = dS^T Q
  auto d_s_t = g.virt("dS^T", ss, ss_t_st, bf);
  g.reshape("dS^T", d_s, d_s_t);
  g.matmul("dS^T Q", d_s_t, q, dk, r.reduce());

  // K: f32 like the other virtual operands of the dS matmuls, in the rows' ragged layout.
  auto k = g.tensor("K", g.next_uid(), sd, sd_st, CUDNN_DATA_FLOAT, true, rows);
  g.reshape("K", kt, k);
  if (key.deterministic) {
    // dQ = dS K, straight into dQ (no f32 accumulation buffer, no atomics)
    g.matmul("dS K", d_s, k, dq, r.reduce());
  } else {
    // dQ = dS K summed over key tiles into an f32 buffer (zeroed before the call), then bf16.
    auto dq_accum = g.tensor("dQ_accum", kdQAccum, sd, sd_st, CUDNN_DATA_FLOAT, false,
                             {.reordering = CUDNN_TENSOR_REORDERING_F16x16});
    g.matmul("dS K", d_s, k, dq_accum);
    g.pointwise("dQ", CUDNN_POINTWISE_IDENTITY, dq_accum, dq);
  }
}

// Which engine config a pass takes, and with which knobs: measurement knobs (docs/cuda.md), so
// that other configs can be timed against the one heuristics put first.
//   SY_CUDNN_FWD_PLAN, SY_CUDNN_BWD_PLAN = N   the Nth config that passes (default 0, the first)
//   SY_CUDNN_FWD_KNOBS, SY_CUDNN_BWD_KNOBS = "TYPE=VALUE,..."   knobs (cudnnBackendKnobType_t
//       numbers) set on that config, over the values heuristics gave it
//   SY_CUDNN_PLANS=1   print every config heuristics return: engine, knobs, notes, the engine's
//       knob ranges, and whether its plan finalizes
struct PlanChoice {
  int64_t index = 0;
  std::vector<std::pair<int64_t, int64_t>> knobs;
  bool list = false;
};

// "TYPE=VALUE,..." as pairs; throws std::invalid_argument naming `name` on anything else.
std::vector<std::pair<int64_t, int64_t>> parse_knobs(const char* name) {
  const char* text = std::getenv(name);
  std::vector<std::pair<int64_t, int64_t>> knobs;
  if (!text || !*text) return knobs;
  auto bad = [&] {
    return std::invalid_argument(std::string(name) +
                                 " must be TYPE=VALUE pairs separated by commas (cuDNN knob "
                                 "type numbers, whole-number values), got '" +
                                 text + "'");
  };
  const char* at = text;
  while (*at) {
    char* end = nullptr;
    const long long type = std::strtoll(at, &end, 10);
    if (end == at || *at < '0' || *at > '9' || *end != '=' || type >= CUDNN_KNOB_TYPE_COUNTS)
      throw bad();
    at = end + 1;
    const long long value = std::strtoll(at, &end, 10);
    if (end == at || (*end != ',' && *end != '\0')) throw bad();
    knobs.emplace_back(type, value);
    at = *end ? end + 1 : end;
    if (*end == ',' && !*at) throw bad();
  }
  return knobs;
}

PlanChoice plan_choice(bool backward) {
  PlanChoice choice;
  const char* index_name = backward ? "SY_CUDNN_BWD_PLAN" : "SY_CUDNN_FWD_PLAN";
  choice.index = env_whole_number(index_name, 1000, "which engine config, 0 the first").value_or(0);
  choice.knobs = parse_knobs(backward ? "SY_CUDNN_BWD_KNOBS" : "SY_CUDNN_FWD_KNOBS");
  choice.list = env_is("SY_CUDNN_PLANS", "1");
  return choice;
}

// `count` fresh descriptors of `type` for cudnnBackendGetAttribute to fill (`raw`), owned by
// `keep`.
struct Slots {
  std::vector<std::unique_ptr<Descriptor>> keep;
  std::vector<cudnnBackendDescriptor_t> raw;
  Slots(cudnnBackendDescriptorType_t type, int64_t count, const std::string& name) {
    for (int64_t i = 0; i < count; ++i) {
      keep.push_back(std::make_unique<Descriptor>(type, name + " " + std::to_string(i)));
      raw.push_back(keep.back()->get());
    }
  }
};

// An engine config's knob choices as "TYPE=VALUE" pairs.
std::vector<std::pair<int64_t, int64_t>> knobs_of(cudnnBackendDescriptor_t config,
                                                   const std::string& name) {
  Slots slots(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, CUDNN_KNOB_TYPE_COUNTS, name + " knob choice");
  const auto& raw = slots.raw;
  int64_t count = 0;
  check(cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, CUDNN_KNOB_TYPE_COUNTS, &count,
                                 slots.raw.data()),
        name + ": get CUDNN_ATTR_ENGINECFG_KNOB_CHOICES");
  std::vector<std::pair<int64_t, int64_t>> knobs;
  for (int64_t i = 0; i < count; ++i) {
    const auto type = get_one<cudnnBackendKnobType_t>(
        raw[i], SY_ATTR(CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE), CUDNN_TYPE_KNOB_TYPE, name);
    knobs.emplace_back(static_cast<int64_t>(type),
                       get_one<int64_t>(raw[i], SY_ATTR(CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE),
                                        CUDNN_TYPE_INT64, name));
  }
  return knobs;
}

std::string knobs_text(const std::vector<std::pair<int64_t, int64_t>>& knobs) {
  std::string text;
  for (const auto& [type, value] : knobs)
    text += (text.empty() ? "" : ",") + std::to_string(type) + "=" + std::to_string(value);
  return text.empty() ? "none" : text;
}

// The engine's knobs and their ranges, "TYPE [MIN..MAX step STRIDE]" each.
std::string knob_ranges(cudnnBackendDescriptor_t engine, const std::string& name) {
  Slots slots(CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR, CUDNN_KNOB_TYPE_COUNTS, name + " knob info");
  const auto& raw = slots.raw;
  int64_t count = 0;
  check(cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_KNOB_INFO, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 CUDNN_KNOB_TYPE_COUNTS, &count, slots.raw.data()),
        name + ": get CUDNN_ATTR_ENGINE_KNOB_INFO");
  std::string text;
  for (int64_t i = 0; i < count; ++i) {
    const auto type = get_one<cudnnBackendKnobType_t>(raw[i], SY_ATTR(CUDNN_ATTR_KNOB_INFO_TYPE),
                                                      CUDNN_TYPE_KNOB_TYPE, name);
    const auto lo = get_one<int64_t>(raw[i], SY_ATTR(CUDNN_ATTR_KNOB_INFO_MINIMUM_VALUE),
                                     CUDNN_TYPE_INT64, name);
    const auto hi = get_one<int64_t>(raw[i], SY_ATTR(CUDNN_ATTR_KNOB_INFO_MAXIMUM_VALUE),
                                     CUDNN_TYPE_INT64, name);
    const auto stride =
        get_one<int64_t>(raw[i], SY_ATTR(CUDNN_ATTR_KNOB_INFO_STRIDE), CUDNN_TYPE_INT64, name);
    text += (text.empty() ? "" : ", ") + std::to_string(static_cast<int64_t>(type)) + " [" +
            std::to_string(lo) + ".." + std::to_string(hi) + " step " + std::to_string(stride) +
            "]";
  }
  return text.empty() ? "none" : text;
}

// `knobs` with `overrides` set over them (added where `knobs` lacks the type).
std::vector<std::pair<int64_t, int64_t>> merged_knobs(
    std::vector<std::pair<int64_t, int64_t>> knobs,
    const std::vector<std::pair<int64_t, int64_t>>& overrides) {
  for (const auto& [type, value] : overrides) {
    auto it =
        std::find_if(knobs.begin(), knobs.end(), [&](const auto& k) { return k.first == type; });
    if (it != knobs.end()) it->second = value;
    else knobs.emplace_back(type, value);
  }
  return knobs;
}

// A config of engine `engine_index` with `knobs` set. `keep` holds the descriptors the config
// refers to.
cudnnBackendDescriptor_t config_with_knobs(cudnnBackendDescriptor_t op_graph, int64_t engine_index,
                                           const std::vector<std::pair<int64_t, int64_t>>& knobs,
                                           const std::string& name,
                                           std::vector<std::unique_ptr<Descriptor>>& keep) {
  auto& engine = *keep.emplace_back(
      std::make_unique<Descriptor>(CUDNN_BACKEND_ENGINE_DESCRIPTOR, name + " engine"));
  engine
      .set(SY_ATTR(CUDNN_ATTR_ENGINE_OPERATION_GRAPH), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op_graph)
      .set(SY_ATTR(CUDNN_ATTR_ENGINE_GLOBAL_INDEX), CUDNN_TYPE_INT64, 1, &engine_index)
      .finalize();
  std::vector<cudnnBackendDescriptor_t> choices;
  for (const auto& [type, value] : knobs) {
    const auto knob_type = static_cast<cudnnBackendKnobType_t>(type);
    auto& choice = *keep.emplace_back(std::make_unique<Descriptor>(
        CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, name + " knob " + std::to_string(type)));
    choice.set(SY_ATTR(CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE), CUDNN_TYPE_KNOB_TYPE, 1, &knob_type)
        .set(SY_ATTR(CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE), CUDNN_TYPE_INT64, 1, &value)
        .finalize();
    choices.push_back(choice.get());
  }
  cudnnBackendDescriptor_t engine_raw = engine.get();
  auto& config = *keep.emplace_back(
      std::make_unique<Descriptor>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, name + " with knobs"));
  config.set(SY_ATTR(CUDNN_ATTR_ENGINECFG_ENGINE), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &engine_raw);
  if (!choices.empty())
    config.set(SY_ATTR(CUDNN_ATTR_ENGINECFG_KNOB_CHOICES), CUDNN_TYPE_BACKEND_DESCRIPTOR,
               static_cast<int64_t>(choices.size()), choices.data());
  config.finalize();
  return config.get();
}

// Heuristics, then the first engine config whose plan finalizes and whose engine is
// deterministic (any engine when `deterministic` is false), or the `choice.index`th such one,
// with `choice.knobs` set. Throws CudnnRejected with every config's reason when none does.
void choose_plan(cudnnHandle_t handle, Plan& plan, const char* op, bool deterministic,
                 const PlanChoice& choice, std::string& summary) {
  std::string reasons;
  int64_t passed = 0;  // configs that passed before this one
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    const char* mode_name = mode == CUDNN_HEUR_MODE_A ? "HEUR_MODE_A" : "HEUR_MODE_FALLBACK";
    const std::string where = std::string(op) + " " + mode_name;
    std::unique_ptr<Descriptor> heur;
    int64_t count = 0;
    try {
      heur = std::make_unique<Descriptor>(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, where + " heuristics");
      cudnnBackendDescriptor_t graph = plan.op_graph->get();
      heur->set(SY_ATTR(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                &graph)
          .set(SY_ATTR(CUDNN_ATTR_ENGINEHEUR_MODE), CUDNN_TYPE_HEUR_MODE, 1, &mode)
          .finalize();
      check(cudnnBackendGetAttribute(heur->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
            where + ": count CUDNN_ATTR_ENGINEHEUR_RESULTS");
    } catch (const CudnnRejected& e) {
      reasons += std::string("\n  ") + e.what();
      continue;
    }
    if (count == 0) {
      reasons += "\n  " + where + ": no engine configs";
      continue;
    }
    Slots configs(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, count, where + " config");
    std::vector<cudnnBackendDescriptor_t>& raw = configs.raw;
    int64_t got = 0;
    try {
      check(cudnnBackendGetAttribute(heur->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data()),
            where + ": get CUDNN_ATTR_ENGINEHEUR_RESULTS");
    } catch (const CudnnRejected& e) {
      reasons += std::string("\n  ") + e.what();
      continue;
    }
    if (got == 0) reasons += "\n  " + where + ": " + std::to_string(count) +
                             " engine configs counted, none returned (none supports the graph)";
    for (int64_t i = 0; i < got; ++i) {
      const std::string cfg_name = where + " config " + std::to_string(i);
      try {
        Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR, cfg_name + " engine");
        cudnnBackendDescriptor_t engine_raw = engine.get();
        int64_t n = 0;
        check(cudnnBackendGetAttribute(raw[i], CUDNN_ATTR_ENGINECFG_ENGINE,
                                       CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &engine_raw),
              cfg_name + ": get CUDNN_ATTR_ENGINECFG_ENGINE");
        const auto engine_index = get_one<int64_t>(
            engine_raw, SY_ATTR(CUDNN_ATTR_ENGINE_GLOBAL_INDEX), CUDNN_TYPE_INT64, cfg_name);
        cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        int64_t num_notes = 0;
        check(cudnnBackendGetAttribute(engine_raw, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
                                       CUDNN_TYPE_NUMERICAL_NOTE, CUDNN_NUMERICAL_NOTE_TYPE_COUNT,
                                       &num_notes, notes),
              cfg_name + ": get CUDNN_ATTR_ENGINE_NUMERICAL_NOTE");
        bool repeats = true;
        for (int64_t j = 0; j < num_notes; ++j)
          repeats &= notes[j] != CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
        // What a config's knobs are only reports it: a failure to read them refuses nothing.
        std::vector<std::pair<int64_t, int64_t>> knobs;
        std::string ranges;
        try {
          knobs = knobs_of(raw[i], cfg_name);
          if (choice.list) ranges = knob_ranges(engine_raw, cfg_name);
        } catch (const CudnnRejected& e) {
          ranges = e.what();
        }
        if (choice.list)
          std::fprintf(stderr, "%s: engine %lld, knobs %s%s; the engine's knobs: %s\n",
                       cfg_name.c_str(), static_cast<long long>(engine_index),
                       knobs_text(knobs).c_str(), repeats ? "" : ", NONDETERMINISTIC",
                       ranges.c_str());
        if (deterministic && !repeats) {
          reasons += "\n  " + cfg_name + ": engine " + std::to_string(engine_index) +
                     " is NONDETERMINISTIC (refused)";
          continue;
        }
        std::vector<std::unique_ptr<Descriptor>> keep;
        cudnnBackendDescriptor_t config = raw[i];
        if (passed == choice.index && !choice.knobs.empty()) {
          knobs = merged_knobs(std::move(knobs), choice.knobs);
          config = config_with_knobs(plan.op_graph->get(), engine_index, knobs, cfg_name, keep);
        }
        auto candidate = std::make_unique<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR,
                                                      cfg_name + " execution plan");
        candidate->set(SY_ATTR(CUDNN_ATTR_EXECUTION_PLAN_HANDLE), CUDNN_TYPE_HANDLE, 1, &handle)
            .set(SY_ATTR(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG), CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                 &config)
            .finalize();
        const auto workspace =
            get_one<int64_t>(candidate->get(), SY_ATTR(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE),
                             CUDNN_TYPE_INT64, cfg_name);
        if (choice.list)
          std::fprintf(stderr, "%s: plan %lld finalizes, workspace %lld B\n", cfg_name.c_str(),
                       static_cast<long long>(passed), static_cast<long long>(workspace));
        if (passed++ < choice.index) continue;
        if (plan.plan) continue;  // listing the rest
        plan.plan = std::move(candidate);
        plan.workspace_bytes = workspace;
        summary = std::string(mode_name) + " config " + std::to_string(i) + " of " +
                  std::to_string(got) + ", engine " + std::to_string(engine_index) + ", knobs " +
                  knobs_text(knobs) + ", workspace " + std::to_string(workspace) + " B";
        if (!choice.list) return;
      } catch (const CudnnRejected& e) {
        reasons += std::string("\n  ") + e.what();
        if (choice.list) std::fprintf(stderr, "  %s\n", e.what());
      }
    }
  }
  if (plan.plan) return;
  if (passed > 0 && choice.index >= passed)
    reasons += "\n  " + std::to_string(passed) + " configs passed; config " +
               std::to_string(choice.index) + " was asked for (SY_CUDNN_FWD_PLAN, _BWD_PLAN)";
  throw CudnnRejected(std::string(op) +
                      (deterministic ? ": no deterministic engine" : ": no engine") +
                      " took the graph:" + reasons);
}

// The plan for `key`, built on first use; nullptr (with *why set) when cuDNN declines.
Plan* plan_for(Context& ctx, const Key& key, std::string* why) {
  const char* op = key.backward ? "cudnn_attention_backward" : "cudnn_attention_forward";
  State& state = state_for(ctx);
  auto decline = [&](std::string reason) -> Plan* {
    if (why) *why = reason;
    return nullptr;
  };
  if (!state.handle) return decline(state.handle_error);
  if (auto it = state.plans.find(key); it != state.plans.end()) return it->second.get();
  if (auto it = state.declined.find(key); it != state.declined.end()) return decline(it->second);

  const std::string shape =
      "B=" + std::to_string(key.B) + " S=" + std::to_string(key.S) + " H=" + std::to_string(key.H) +
      (key.heads_in_memory ? " of " + std::to_string(key.heads_in_memory) : "") +
      " Dh=" + std::to_string(key.Dh) + (key.deterministic ? "" : " (nondeterministic)") +
      (key.documents ? " (" + std::to_string(key.B) + " documents of at most " +
                           std::to_string(key.S) + " tokens)"
                     : "");
  PlanChoice choice;
  try {
    choice = plan_choice(key.backward);
  } catch (const std::invalid_argument& e) {
    fail(ctx, op, e.what());
  }
  auto plan = std::make_unique<Plan>();
  std::string summary;
  char stale[4096];
  cudnnGetLastErrorString(stale, sizeof stale);  // so that a failure below reports its own
  try {
    plan->graph = std::make_unique<GraphBuilder>(op);
    if (key.backward) build_backward(*plan->graph, key);
    else build_forward(*plan->graph, key);
    plan->op_graph = std::make_unique<Descriptor>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR,
                                                  std::string(op) + " operation graph");
    const auto& ops = plan->graph->ops();
    plan->op_graph
        ->set(SY_ATTR(CUDNN_ATTR_OPERATIONGRAPH_HANDLE), CUDNN_TYPE_HANDLE, 1, &state.handle)
        .set(SY_ATTR(CUDNN_ATTR_OPERATIONGRAPH_OPS), CUDNN_TYPE_BACKEND_DESCRIPTOR,
             static_cast<int64_t>(ops.size()), ops.data())
        .finalize();
    choose_plan(state.handle, *plan, op, key.deterministic, choice, summary);
  } catch (const CudnnRejected& e) {
    const std::string reason = e.what();
    std::fprintf(stderr, "%s: cuDNN %zu declined %s, running our flash kernels: %s\n",
                 where(ctx, op).c_str(), cudnnGetVersion(), shape.c_str(), reason.c_str());
    state.declined[key] = reason;
    return decline(reason);
  }
  std::fprintf(stderr, "%s: cuDNN %zu, %s: %s\n", where(ctx, op).c_str(), cudnnGetVersion(),
               shape.c_str(), summary.c_str());
  plan->scale = 1.f / std::sqrt(static_cast<float>(key.Dh));
  // cuDNN before 9.10 wants the lowest finite float for masked scores, later versions -inf.
  plan->neg_inf = cudnnGetVersion() < 91000 ? -std::numeric_limits<float>::max()
                                            : -std::numeric_limits<float>::infinity();
  Plan* raw = plan.get();
  state.plans.emplace(key, std::move(plan));
  return raw;
}

// Which cases cuDNN is asked at all; the reason otherwise.
const char* unsupported(const Tensor& q, int64_t Dh, std::initializer_list<const Tensor*> tensors) {
  if (q.dtype() != DType::bf16) return "cuDNN attention runs bf16 only";
  if (Dh % 8 != 0 || Dh > 128) return "cuDNN attention wants Dh a multiple of 8, at most 128";
  for (const Tensor* t : tensors)
    if (reinterpret_cast<uintptr_t>(t->data()) % 16 != 0) return "a tensor is not 16-byte aligned";
  return nullptr;
}

void execute(Context& ctx, const char* op, cudnnHandle_t handle, Plan& plan,
             std::vector<int64_t> uids, std::vector<void*> pointers, void* workspace) {
  try {
    Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, std::string(op) + " variant pack");
    pack.set(SY_ATTR(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), CUDNN_TYPE_INT64,
             static_cast<int64_t>(uids.size()), uids.data())
        .set(SY_ATTR(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR,
             static_cast<int64_t>(pointers.size()), pointers.data())
        .set(SY_ATTR(CUDNN_ATTR_VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, &workspace)
        .finalize();
    check(cudnnBackendExecute(handle, plan.plan->get(), pack.get()), "cudnnBackendExecute");
  } catch (const CudnnRejected& e) {
    fail(ctx, op, e.what());
  }
  check_launch(ctx, op);
}

// The most workspace one backward call may take, in bytes. SY_CUDNN_BWD_WORKSPACE_MIB=N: N MiB
// (0: no limit, one call over the whole batch). Unset: the largest block the allocator already
// holds free, but at least kAttentionWorkspaceFloor (513 MiB: the bench batch in one call).
// Chunks give the same bits as one call (test_cuda_cudnn), so the choice moves time and memory,
// never the numbers. Measured on the 1.81B MoE and the 0.60B dense (H200, 2026-12-04,
// bench/ab): one call 1.85 and 1.55 ms a step faster than one sequence a call; peak held the
// same on the MoE, +1 GiB on the dense.
AttentionWorkspaceBudget backward_workspace_budget(Context& ctx, const char* op) {
  std::optional<int64_t> mib;
  try {
    mib = env_whole_number("SY_CUDNN_BWD_WORKSPACE_MIB", int64_t{1} << 30,
                           "MiB of workspace a backward call may take; 0: one call over the batch");
  } catch (const std::invalid_argument& e) {
    fail(ctx, op, e.what());
  }
  if (mib) return {*mib << 20, true};
  const int64_t free_block =
      ctx.largest_cached_block ? static_cast<int64_t>(ctx.largest_cached_block()) : 0;
  return {std::max(kAttentionWorkspaceFloor, free_block), false};
}

// ---- documents -------------------------------------------------------------------------------

// A call's share of the ragged layout, as cudnn-frontend's tests lay it out: i64 offsets of each
// of its documents' first element, then of the last one's end, in q, k, v, out and their
// gradients (`rows`) and in the token-major stats (`stats`); the documents' i32 `lengths`. Each
// array starts at a 16-byte boundary.
struct RaggedCall {
  void *rows, *stats, *lengths;
};

// Byte offsets of a call's three arrays, and of the next call's, for `per_call` documents.
struct RaggedBlock {
  int64_t stats, lengths, bytes;
  explicit RaggedBlock(int64_t per_call)
      : stats((8 * (per_call + 1) + 15) / 16 * 16),
        lengths(2 * stats),
        bytes(lengths + (4 * per_call + 15) / 16 * 16) {}
};

// The arrays of `calls` calls of `per_call` documents each, a RaggedBlock apart; documents from
// `count` on are empty, at the batch's end.
__global__ void ragged_layout_kernel(const int32_t* offsets, int count, int per_call, int calls,
                                     int64_t stats_at, int64_t lengths_at, int64_t block_bytes,
                                     int64_t heads, int64_t row_elems, char* out) {
  const int entries = calls * (per_call + 1);
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < entries; i += gridDim.x * blockDim.x) {
    const int call = i / (per_call + 1), j = i - call * (per_call + 1), d = call * per_call + j;
    const int64_t t = offsets[min(d, count)];
    char* block = out + call * block_bytes;
    reinterpret_cast<int64_t*>(block)[j] = t * row_elems;
    reinterpret_cast<int64_t*>(block + stats_at)[j] = t * heads;
    if (j < per_call)
      reinterpret_cast<int32_t*>(block + lengths_at)[j] =
          d < count ? offsets[d + 1] - static_cast<int32_t>(t) : 0;
  }
}

// Writes the arrays of `calls` calls of `per_call` documents into `out` (RaggedBlock apart).
void fill_ragged_layout(Context& ctx, const char* op, const ListedDocuments& documents,
                        int64_t per_call, int64_t calls, const RaggedBlock& block, int64_t heads,
                        int64_t Dh, char* out) {
  const int64_t entries = calls * (per_call + 1);
  const unsigned blocks = static_cast<unsigned>((entries + 255) / 256);
  // clang-format splits this launch's >>> in this file's #if branches.
  // clang-format off
  ragged_layout_kernel<<<blocks, 256, 0, ctx.stream>>>(
      documents.offsets, static_cast<int>(documents.count), static_cast<int>(per_call),
      static_cast<int>(calls), block.stats, block.lengths, block.bytes, heads, heads * Dh, out);
  // clang-format on
  check_launch(ctx, op);
}

// The layout of `documents` for calls of `per_call` documents over rows of `heads` x Dh (and
// token-major stats of `heads`), in a block of its own for the caller to keep while its calls run.
class RaggedLayout {
 public:
  RaggedLayout(Context& ctx, const char* op, const ListedDocuments& documents, int64_t per_call,
               int64_t heads, int64_t Dh)
      : calls_((documents.count + per_call - 1) / per_call), block_(per_call) {
    storage_ = ctx.alloc({calls_ * block_.bytes / 4}, DType::i32);
    fill_ragged_layout(ctx, op, documents, per_call, calls_, block_, heads, Dh,
                       static_cast<char*>(storage_.data()));
  }
  int64_t calls() const { return calls_; }
  RaggedCall call(int64_t c) const {
    char* block = static_cast<char*>(storage_.data()) + c * block_.bytes;
    return {block, block + block_.stats, block + block_.lengths};
  }

 private:
  int64_t calls_;
  RaggedBlock block_;
  Tensor storage_;
};

// lse [B, H, S] to token-major stats [B*S, H] (to_tokens), or back.
__global__ void lse_tokens_kernel(const float* from, float* to, int64_t S, int64_t H, int64_t n,
                                  bool to_tokens) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / (H * S), h = i / S % H, s = i % S, token = (b * S + s) * H + h;
    if (to_tokens) to[token] = from[i];
    else to[i] = from[token];
  }
}

// cuDNN's ragged graphs keep their stats token-major; lse stays [B, H, S], the flash kernels'
// layout, so that either path's backward takes either forward's lse. A copy each way, B S H
// floats (512 KiB at B 4, S 2048, H 16).
void convert_lse(Context& ctx, const char* op, const float* from, float* to, int64_t B, int64_t S,
                 int64_t H, bool to_tokens) {
  const int64_t n = B * H * S;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  // clang-format off
  lse_tokens_kernel<<<blocks, 256, 0, ctx.stream>>>(from, to, S, H, n, to_tokens);
  // clang-format on
  check_launch(ctx, op);
}

// The documents a call takes (a power of two at least `count`) and the tokens it allows each
// (the next power of two of the longest, at most S): few shapes, so few graphs, for a run.
Key documents_key(bool backward, const ListedDocuments& documents, int64_t S, int64_t H,
                  int64_t Dh) {
  auto pow2 = [](int64_t n) {
    return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(n)));
  };
  return Key{backward, pow2(documents.count), std::min(S, pow2(documents.longest)), H, Dh, true, 0,
             true};
}

}  // namespace

bool cudnn_attention_forward(Context& ctx, const Tensor& out, const Tensor& lse, const Tensor& q,
                             const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                             const ListedDocuments* documents, std::string* declined) {
  const char* op = "cudnn_attention_forward";
  const int64_t Dh = q.shape()[1] / H;
  if (const char* reason = unsupported(q, Dh, {&out, &lse, &q, &k, &v})) {
    if (declined) *declined = reason;
    return false;
  }
  if (documents) {
    // The backward's graph too: a forward that cuDNN takes and a backward it declines would
    // still be right (lse keeps its layout), but the pair is what pays.
    const Key key = documents_key(false, *documents, S, H, Dh);
    Key backward_key = key;
    backward_key.backward = true;
    Plan* plan = plan_for(ctx, key, declined);
    if (!plan || !plan_for(ctx, backward_key, declined)) return false;
    const RaggedLayout layout(ctx, op, *documents, key.B, H, Dh);
    const RaggedCall r = layout.call(0);
    const Tensor stats = ctx.alloc({B * S * H}, DType::f32);  // token-major
    void* workspace =
        plan->workspace_bytes > 0 ? ctx.scratch(kScratchA, plan->workspace_bytes) : nullptr;
    execute(ctx, op, state_for(ctx).handle, *plan,
            {kQ, kK, kV, kO, kStats, kScale, kNegInf, kRaggedRows, kRaggedStats, kSeqLen},
            {q.data(), k.data(), v.data(), out.data(), stats.data(), &plan->scale, &plan->neg_inf,
             r.rows, r.stats, r.lengths},
            workspace);
    convert_lse(ctx, op, stats.ptr<float>(), lse.ptr<float>(), B, S, H, false);
    return true;
  }
  Plan* plan = plan_for(ctx, Key{false, B, S, H, Dh}, declined);
  if (!plan) return false;
  void* workspace = plan->workspace_bytes > 0 ? ctx.scratch(kScratchA, plan->workspace_bytes) : nullptr;
  execute(ctx, op, state_for(ctx).handle, *plan, {kQ, kK, kV, kO, kStats, kScale, kNegInf},
          {q.data(), k.data(), v.data(), out.data(), lse.data(), &plan->scale, &plan->neg_inf},
          workspace);
  return true;
}

namespace {

// The nondeterministic backward: one call over the batch, dQ summed in an f32 [B, S, H, Dh]
// buffer that is zeroed first. One block for the call: the workspace, softmax_sum [B, H, S] f32
// and the buffer, each at a 256-byte boundary.
bool backward_accumulating_dq(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, int64_t B, int64_t S, int64_t H,
                              int64_t Dh, std::string* declined) {
  const char* op = "cudnn_attention_backward";
  Plan* plan = plan_for(ctx, Key{true, B, S, H, Dh, false}, declined);
  if (!plan) return false;
  auto round_up = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  const int64_t sum_offset = round_up(plan->workspace_bytes);
  const int64_t accum_offset = sum_offset + round_up(B * H * S * int64_t{sizeof(float)});
  const int64_t accum_bytes = B * S * H * Dh * int64_t{sizeof(float)};
  const Tensor block = ctx.alloc({(accum_offset + accum_bytes + 3) / 4}, DType::i32);
  auto* base = static_cast<char*>(block.data());
  SY_CUDA(ctx, op, cudaMemsetAsync(base + accum_offset, 0, accum_bytes, ctx.stream));
  execute(
      ctx, op, state_for(ctx).handle, *plan,
      {kQ, kK, kV, kO, kdO, kStats, kdQ, kdK, kdV, kScale, kNegInf, kOne, kSoftmaxSum, kdQAccum},
      {q.data(), k.data(), v.data(), out.data(), dout.data(), lse.data(), dq.data(), dk.data(),
       dv.data(), &plan->scale, &plan->neg_inf, &plan->one, base + sum_offset, base + accum_offset},
      base);
  return true;
}

// The plan of a call over a chunk of `whole`'s sequences (documents) and heads; `whole`'s own
// plan, from the cache, when the chunk is all of them.
Plan* chunk_plan(Context& ctx, Key whole, const AttentionBackwardChunks& chunk,
                 std::string* declined) {
  whole.heads_in_memory = chunk.heads != whole.H ? whole.H : 0;
  whole.B = chunk.sequences;
  whole.H = chunk.heads;
  return plan_for(ctx, whole, declined);
}

// The deterministic backward over documents: as the sequences' below, in chunks of documents
// (of heads, when one document's dS is too large) whose dS fits the budget; each chunk's ragged
// offsets are absolute, so every call takes the tensors' own pointers (plus its heads' offset).
bool backward_documents(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, int64_t B, int64_t S, int64_t H,
                        int64_t Dh, const ListedDocuments& documents, std::string* declined) {
  const char* op = "cudnn_attention_backward";
  const Key key = documents_key(true, documents, S, H, Dh);
  Plan* plan = plan_for(ctx, key, declined);
  if (!plan) return false;
  const AttentionBackwardChunks chunk =
      attention_backward_chunks(key.B, H, key.S, plan->workspace_bytes,
                                backward_workspace_budget(ctx, op), sm_count(ctx, op));
  plan = chunk_plan(ctx, key, chunk, declined);
  if (!plan) return false;
  const RaggedLayout layout(ctx, op, documents, chunk.sequences, H, Dh);
  const Tensor stats = ctx.alloc({B * S * H}, DType::f32);  // lse, token-major
  convert_lse(ctx, op, lse.ptr<float>(), stats.ptr<float>(), B, S, H, true);
  // The workspace, then softmax_sum token-major like the stats, [B*S, H] f32, at a 256-byte
  // boundary.
  const int64_t sum_offset = (plan->workspace_bytes + 255) / 256 * 256;
  const int64_t bytes = sum_offset + B * S * H * static_cast<int64_t>(sizeof(float));
  const Tensor workspace = ctx.alloc({(bytes + 3) / 4}, DType::i32);
  auto* base = static_cast<char*>(workspace.data());
  for (int64_t c = 0; c < layout.calls(); ++c) {
    const RaggedCall r = layout.call(c);
    for (int64_t h = 0; h < H; h += chunk.heads) {
      auto at = [&](const Tensor& t) { return static_cast<void*>(t.ptr<bf16>() + h * Dh); };
      void* stats_at = stats.ptr<float>() + h;
      void* softmax_sum = base + sum_offset + h * static_cast<int64_t>(sizeof(float));
      execute(ctx, op, state_for(ctx).handle, *plan,
              {kQ, kK, kV, kO, kdO, kStats, kdQ, kdK, kdV, kScale, kNegInf, kOne, kSoftmaxSum,
               kRaggedRows, kRaggedStats, kSeqLen},
              {at(q), at(k), at(v), at(out), at(dout), stats_at, at(dq), at(dk), at(dv),
               &plan->scale, &plan->neg_inf, &plan->one, softmax_sum, r.rows, r.stats, r.lengths},
              base);
    }
  }
  return true;
}

}  // namespace

bool cudnn_attention_backward(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, int64_t B, int64_t S, int64_t H,
                              bool deterministic, const ListedDocuments* documents,
                              std::string* declined) {
  const char* op = "cudnn_attention_backward";
  const int64_t Dh = q.shape()[1] / H;
  const char* reason = unsupported(q, Dh, {&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse});
  if (!reason && documents && !deterministic)
    reason = "documents: cuDNN's dQ-accumulating backward is not built for them";
  if (reason) {
    if (declined) *declined = reason;
    return false;
  }
  if (documents)
    return backward_documents(ctx, dq, dk, dv, dout, q, k, v, out, lse, B, S, H, Dh, *documents,
                              declined);
  if (!deterministic)
    return backward_accumulating_dq(ctx, dq, dk, dv, dout, q, k, v, out, lse, B, S, H, Dh,
                                    declined);
  Plan* plan = plan_for(ctx, Key{true, B, S, H, Dh}, declined);
  if (!plan) return false;
  // The deterministic engine's workspace holds dS for every (b, h): B x H x S x S bf16, 512 MiB
  // at B 4, H 16, S 2048 (2 GiB a sequence at S 8192). Sequences and heads are independent and
  // the tensors' strides do not depend on B or on which heads a call takes, so the backward runs
  // over chunks of sequences, and of heads when one sequence is too large (pointer offsets into
  // the same tensors). (softmax_sum below, [chunk, H, S] f32, 1/S of the dS, is not counted.)
  const AttentionBackwardChunks chunk = attention_backward_chunks(
      B, H, S, plan->workspace_bytes, backward_workspace_budget(ctx, op), sm_count(ctx, op));
  plan = chunk_plan(ctx, Key{true, B, S, H, Dh}, chunk, declined);
  if (!plan) return false;
  // The workspace, then softmax_sum [chunk, H, S] f32 at a 256-byte boundary after it: a block
  // of its own for this call, given back after it (stream order keeps that safe), rather than a
  // scratch slot that would hold the largest dS for the rest of the step.
  const int64_t sum_offset = (plan->workspace_bytes + 255) / 256 * 256;
  const int64_t bytes = sum_offset + chunk.sequences * H * S * static_cast<int64_t>(sizeof(float));
  const Tensor workspace = ctx.alloc({(bytes + 3) / 4}, DType::i32);
  auto* base = static_cast<char*>(workspace.data());
  const int64_t rows = S * H * Dh;  // elements of one sequence in q, k, v, out and their grads
  for (int64_t b = 0; b < B; b += chunk.sequences) {
    for (int64_t h = 0; h < H; h += chunk.heads) {
      auto at = [&](const Tensor& t) {
        return static_cast<void*>(t.ptr<bf16>() + b * rows + h * Dh);
      };
      void* stats = lse.ptr<float>() + (b * H + h) * S;
      void* softmax_sum = base + sum_offset + h * S * static_cast<int64_t>(sizeof(float));
      execute(ctx, op, state_for(ctx).handle, *plan,
              {kQ, kK, kV, kO, kdO, kStats, kdQ, kdK, kdV, kScale, kNegInf, kOne, kSoftmaxSum},
              {at(q), at(k), at(v), at(out), at(dout), stats, at(dq), at(dk), at(dv),
               &plan->scale, &plan->neg_inf, &plan->one, softmax_sum},
              base);
    }
  }
  return true;
}

void cudnn_attention_release(const Context& ctx) {
  std::unique_ptr<State> state;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = registry().find(&ctx);
    if (it == registry().end()) return;
    state = std::move(it->second);
    registry().erase(it);
  }
}

#endif  // SY_HAVE_CUDNN

}  // namespace sy::cuda
