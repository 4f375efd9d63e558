// Every Backend op's contract (model/backend.h), checked once for every call whatever the
// backend, then the backend's virtual. Dtypes are written for the mixed-precision rules: `dt` is
// the data dtype and stat_dtype(dt) that of the statistics, which is dt itself for f32 and f64
// data, so a backend that computes in one dtype (the CPU) needs only reject the data dtypes it
// does not compute in. What is specific to one device (index ranges read on the host, i32 limits
// and aliasing rules of its kernels) is checked by that backend.
#include "model/op_checks.h"

#include <climits>
#include <cmath>
#include <initializer_list>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "model/backend.h"

namespace sy {

// ---- OpCheck --------------------------------------------------------------------------------
void OpCheck::fail(const std::string& message) const {
  throw std::runtime_error(backend_.error_context(op_) + ": " + message);
}

void OpCheck::on_device(const Tensor& t, CheckName name) const {
  if (!t.defined()) fail(name.str() + " is undefined");
  if (t.device() != backend_.device())
    fail(name.str() +
         (backend_.device() == Device::cpu ? " is not on the cpu" : " is not on the cuda device"));
  if (t.numel() > 0 && t.data() == nullptr) fail(name.str() + " has no data");
}

DType OpCheck::float_dtype(const Tensor& t, CheckName name) const {
  on_device(t, name);
  if (t.dtype() == DType::i32) fail(name.str() + " must be a float tensor, got i32");
  return t.dtype();
}

DType OpCheck::wide_dtype(const Tensor& t, CheckName name) const {
  on_device(t, name);
  if (t.dtype() != DType::f32 && t.dtype() != DType::f64)
    fail(name.str() + " must be f32 or f64, got " + dtype_name(t.dtype()));
  return t.dtype();
}

DType OpCheck::master_dtype(const Tensor& t, CheckName name) const {
  on_device(t, name);
  if (t.dtype() == DType::f32_split) return DType::f32;
  return wide_dtype(t, name);
}

void OpCheck::dtype(const Tensor& t, DType dtype, CheckName name) const {
  on_device(t, name);
  if (t.dtype() != dtype)
    fail(name.str() + " must be " + dtype_name(dtype) + ", got " + dtype_name(t.dtype()));
}

void OpCheck::shape(const Tensor& t, const Shape& shape, CheckName name) const {
  if (t.shape() != shape)
    fail(name.str() + ": expected shape " + shape_str(shape) + ", got " + shape_str(t.shape()));
}

void OpCheck::ndim(const Tensor& t, int n, CheckName name) const {
  if (t.ndim() != n)
    fail(name.str() + " must be " + std::to_string(n) + "-D, got " + shape_str(t.shape()));
}

void OpCheck::numel(const Tensor& t, int64_t n, CheckName name) const {
  if (t.numel() != n)
    fail(name.str() + " must have " + std::to_string(n) + " elements, got " + shape_str(t.shape()));
}

void OpCheck::positive(int64_t value, CheckName name) const {
  if (value <= 0) fail(name.str() + " must be positive, got " + std::to_string(value));
}

void OpCheck::fits_int(int64_t value, CheckName name) const {
  if (value > INT32_MAX) fail(name.str() + " too large for i32: " + std::to_string(value));
}

bool overlaps(const Tensor& a, const Tensor& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// ---- rules shared by several ops ------------------------------------------------------------
namespace {

// GEMM dtypes: A and B of one float dtype, C of it or f32 with bf16 A and B.
void check_gemm_dtypes(const OpCheck& c, const Tensor& C, const Tensor& A, const Tensor& B) {
  const DType ab = c.float_dtype(A, "A");
  c.dtype(B, ab, "B");
  const DType dc = c.float_dtype(C, "C");
  if (dc != ab && !(ab == DType::bf16 && dc == DType::f32))
    c.fail(std::string("C must be ") + dtype_name(ab) + (ab == DType::bf16 ? " or f32" : "") +
           " for " + dtype_name(ab) + " A and B, got " + dtype_name(dc));
}

// Segment sizes >= 0 that cover the M rows of A.
void check_segments(const OpCheck& c, std::span<const int64_t> rows, int64_t M) {
  int64_t total = 0;
  for (int64_t r : rows) {
    if (r < 0) c.fail("negative segment size " + std::to_string(r));
    total += r;
  }
  if (total != M)
    c.fail("segment sizes sum to " + std::to_string(total) + ", A has " + std::to_string(M) +
           " rows");
}

// One product of the grouped forward form, C[seg g] = A[seg g] @ op(B[g]) over the segments:
// A [M, K], B [G, K, N] (or [G, N, K] with trans_b), C [M, N], the GEMM dtypes.
void check_grouped_product(const OpCheck& c, const Tensor& C, const Tensor& A, const Tensor& B,
                           bool trans_b, std::span<const int64_t> rows_per_group) {
  check_gemm_dtypes(c, C, A, B);
  c.ndim(A, 2, "A");
  c.ndim(B, 3, "B");
  c.ndim(C, 2, "C");
  const int64_t G = static_cast<int64_t>(rows_per_group.size()), M = A.dim(0), K = A.dim(1);
  const int64_t N = trans_b ? B.dim(1) : B.dim(2);
  if (B.dim(0) != G || (trans_b ? B.dim(2) : B.dim(1)) != K)
    c.fail("A" + shape_str(A.shape()) + " @ B" + shape_str(B.shape()) + (trans_b ? "^T" : "") +
           " over " + std::to_string(G) + " segments: shapes do not match");
  c.shape(C, {M, N}, "C");
  check_segments(c, rows_per_group, M);
}

// x[B*S, H*Dh] with Dh even (rotary pairs); returns Dh.
int64_t check_heads(const OpCheck& c, const Tensor& x, int64_t B, int64_t S, int64_t H,
                    const char* name) {
  c.positive(B, "B");
  c.positive(S, "S");
  c.positive(H, "H");
  c.ndim(x, 2, name);
  if (x.dim(0) != B * S)
    c.fail(std::string(name) + " has " + std::to_string(x.dim(0)) + " rows, expected B*S = " +
           std::to_string(B * S));
  if (x.dim(1) % H != 0 || (x.dim(1) / H) % 2 != 0)
    c.fail(std::string(name) + " width " + std::to_string(x.dim(1)) +
           " is not H * (even Dh), H = " + std::to_string(H));
  return x.dim(1) / H;
}

void check_top_k(const OpCheck& c, int64_t K, int64_t E) {
  if (K < 1 || K > E)
    c.fail("K = " + std::to_string(K) + " outside [1, E = " + std::to_string(E) + "]");
}

// expert_bias is optional (undefined: no bias); when given, [E] in the router's dtype.
void check_bias(const OpCheck& c, const Tensor& bias, DType dtype, int64_t E) {
  if (!bias.defined()) return;
  c.dtype(bias, dtype, "expert_bias");
  c.numel(bias, E, "expert_bias");
}

// The router's projection: w [D, E] f32 or f64, u [T, D] any float, logits [T, E] in w's dtype.
void check_router_projection(const OpCheck& c, const Tensor& logits, const Tensor& u,
                             const Tensor& w, const char* logits_name) {
  const DType dt = c.wide_dtype(w, "w");
  c.float_dtype(u, "u");
  c.dtype(logits, dt, logits_name);
  c.ndim(w, 2, "w");
  c.ndim(u, 2, "u");
  const int64_t T = u.dim(0), D = w.dim(0), E = w.dim(1);
  c.positive(E, "E");
  if (u.dim(1) != D)
    c.fail("u" + shape_str(u.shape()) + " and w" + shape_str(w.shape()) + " do not match");
  c.shape(logits, {T, E}, logits_name);
}

// (tensor, name) pairs, for the checks that run over several operands alike.
using Named = std::pair<const Tensor*, const char*>;

}  // namespace

// ---- memory ---------------------------------------------------------------------------------
Tensor Backend::alloc(const Shape& shape, DType dtype) {
  for (int64_t d : shape)
    if (d < 0) OpCheck(*this, "alloc").fail("negative dimension in " + shape_str(shape));
  return alloc_impl(shape, dtype);
}

Tensor Backend::zeros(const Shape& shape, DType dtype) {
  Tensor t = alloc(shape, dtype);
  fill(t, 0.0);
  return t;
}

void Backend::fill(const Tensor& x, double value) {
  OpCheck(*this, "fill").on_device(x, "x");
  fill_impl(x, value);
}

void Backend::copy(const Tensor& dst, const Tensor& src) {
  const OpCheck c(*this, "copy");
  c.on_device(dst, "dst");
  c.on_device(src, "src");
  c.numel(dst, src.numel(), "dst");
  if (dst.dtype() != src.dtype() && overlaps(dst, src))
    c.fail("converting copy between overlapping tensors");
  copy_impl(dst, src);
}

namespace {
void check_write(const Backend& backend, const Tensor& dst, size_t host_size) {
  const OpCheck c(backend, "write");
  c.on_device(dst, "dst");
  c.numel(dst, static_cast<int64_t>(host_size), "dst");
}
}  // namespace

void Backend::write(const Tensor& dst, std::span<const float> host) {
  check_write(*this, dst, host.size());
  write_impl(dst, host);
}
void Backend::write(const Tensor& dst, std::span<const double> host) {
  check_write(*this, dst, host.size());
  write_impl(dst, host);
}
void Backend::write(const Tensor& dst, std::span<const int32_t> host) {
  check_write(*this, dst, host.size());
  write_impl(dst, host);
}

std::vector<double> Backend::read(const Tensor& src) {
  OpCheck(*this, "read").on_device(src, "src");
  return read_impl(src);
}

std::vector<int32_t> Backend::read_i32(const Tensor& src) {
  OpCheck(*this, "read_i32").dtype(src, DType::i32, "src");
  return read_i32_impl(src);
}

void Backend::copy_to_host(void* host, const Tensor& src) {
  OpCheck(*this, "copy_to_host").on_device(src, "src");
  copy_to_host_impl(host, src);
}

void Backend::copy_from_host(const Tensor& dst, const void* host) {
  OpCheck(*this, "copy_from_host").on_device(dst, "dst");
  copy_from_host_impl(dst, host);
}

// ---- linear algebra -------------------------------------------------------------------------
void Backend::gemm(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
                   double alpha, double beta) {
  const OpCheck c(*this, "gemm");
  check_gemm_dtypes(c, C, A, B);
  c.ndim(C, 2, "C");
  c.ndim(A, 2, "A");
  c.ndim(B, 2, "B");
  const int64_t M = C.dim(0), N = C.dim(1);
  const int64_t K = trans_a ? A.dim(0) : A.dim(1);
  if ((trans_a ? A.dim(1) : A.dim(0)) != M || (trans_b ? B.dim(1) : B.dim(0)) != K ||
      (trans_b ? B.dim(0) : B.dim(1)) != N)
    c.fail("C" + shape_str(C.shape()) + " = A" + shape_str(A.shape()) + (trans_a ? "^T" : "") +
           " @ B" + shape_str(B.shape()) + (trans_b ? "^T" : "") + ": shapes do not match");
  if (overlaps(C, A) || overlaps(C, B)) c.fail("C overlaps an input");
  gemm_impl(C, A, trans_a, B, trans_b, alpha, beta);
}

void Backend::add(const Tensor& y, const Tensor& x, double alpha) {
  const OpCheck c(*this, "add");
  c.float_dtype(y, "y");
  c.float_dtype(x, "x");
  c.numel(x, y.numel(), "x");
  add_impl(y, x, alpha);
}

void Backend::add_into(const Tensor& out, const Tensor& a, const Tensor& b) {
  const OpCheck c(*this, "add_into");
  c.on_device(out, "out");
  c.on_device(a, "a");
  c.on_device(b, "b");
  c.numel(a, out.numel(), "a");
  c.numel(b, out.numel(), "b");
  add_into_impl(out, a, b);
}

void Backend::scale(const Tensor& y, double alpha) {
  OpCheck(*this, "scale").float_dtype(y, "y");
  scale_impl(y, alpha);
}

double Backend::sum_squares(const Tensor& x) {
  OpCheck(*this, "sum_squares").float_dtype(x, "x");
  return sum_squares_impl(x);
}

void Backend::sum_squares_many(std::span<const Tensor> xs, std::span<double> out) {
  const OpCheck c(*this, "sum_squares_many");
  if (out.size() != xs.size()) c.fail("one result per tensor needed");
  for (const Tensor& x : xs) c.float_dtype(x, "x");
  sum_squares_many_impl(xs, out);
}

void Backend::grouped_gemm(const Tensor& C, const Tensor& A, const Tensor& B, bool trans_b,
                           std::span<const int64_t> rows_per_group, bool accumulate) {
  const OpCheck c(*this, "grouped_gemm");
  check_grouped_product(c, C, A, B, trans_b, rows_per_group);
  if (overlaps(C, A) || overlaps(C, B)) c.fail("C overlaps an input");
  grouped_gemm_impl(C, A, B, trans_b, rows_per_group, accumulate);
}

bool Backend::grouped_gemm_wgrad(const Tensor& C, const Tensor& A, const Tensor& B,
                                 std::span<const int64_t> rows_per_group, bool accumulate,
                                 Tensor* squares) {
  const OpCheck c(*this, "grouped_gemm_wgrad");
  check_gemm_dtypes(c, C, A, B);
  c.ndim(A, 2, "A");
  c.ndim(B, 2, "B");
  c.ndim(C, 3, "C");
  const int64_t G = static_cast<int64_t>(rows_per_group.size()), M = A.dim(0), K = A.dim(1);
  const int64_t N = B.dim(1);
  c.shape(B, {M, N}, "B");
  c.shape(C, {G, K, N}, "C");
  check_segments(c, rows_per_group, M);
  if (overlaps(C, A) || overlaps(C, B)) c.fail("C overlaps an input");
  return grouped_gemm_wgrad_impl(C, A, B, rows_per_group, accumulate,
                                 accumulate ? nullptr : squares);
}

void Backend::grouped_gemm_pair(const Tensor& C, const Tensor& A, const Tensor& B,
                                const Tensor& A2, const Tensor& B2, bool trans_b,
                                std::span<const int64_t> rows_per_group) {
  const OpCheck c(*this, "grouped_gemm_pair");
  check_grouped_product(c, C, A, B, trans_b, rows_per_group);
  check_grouped_product(c, C, A2, B2, trans_b, rows_per_group);
  for (const Tensor* input : {&A, &B, &A2, &B2})
    if (overlaps(C, *input)) c.fail("C overlaps an input");
  grouped_gemm_pair_impl(C, A, B, A2, B2, trans_b, rows_per_group);
}

// ---- embedding ------------------------------------------------------------------------------
void Backend::embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table) {
  const OpCheck c(*this, "embedding_forward");
  c.float_dtype(table, "table");
  c.float_dtype(out, "out");
  c.dtype(tokens, DType::i32, "tokens");
  c.ndim(table, 2, "table");
  c.shape(out, {tokens.numel(), table.dim(1)}, "out");
  embedding_forward_impl(out, tokens, table);
}

void Backend::embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens) {
  const OpCheck c(*this, "embedding_backward");
  c.wide_dtype(dtable, "dtable");
  c.float_dtype(dout, "dout");
  c.dtype(tokens, DType::i32, "tokens");
  c.ndim(dtable, 2, "dtable");
  c.shape(dout, {tokens.numel(), dtable.dim(1)}, "dout");
  embedding_backward_impl(dtable, dout, tokens);
}

// ---- RMSNorm --------------------------------------------------------------------------------
namespace {
void check_rmsnorm_forward(const OpCheck& c, const Tensor& out, const Tensor& rstd, const Tensor& x,
                           const Tensor& gain, double eps) {
  if (!(eps > 0) || !std::isfinite(eps)) c.fail("eps must be positive and finite");
  const DType dt = c.float_dtype(x, "x"), st = stat_dtype(dt);
  c.dtype(out, dt, "out");
  c.dtype(rstd, st, "rstd");
  c.dtype(gain, st, "gain");
  if (x.ndim() < 1) c.fail("x must have at least one axis");
  const int64_t D = x.dim(-1);
  c.positive(D, "last axis");
  c.shape(out, x.shape(), "out");
  c.numel(rstd, x.numel() / D, "rstd");
  c.shape(gain, {D}, "gain");
}
}  // namespace

void Backend::rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x,
                              const Tensor& gain, double eps) {
  const OpCheck c(*this, "rmsnorm_forward");
  check_rmsnorm_forward(c, out, rstd, x, gain, eps);
  rmsnorm_forward_impl(out, rstd, x, gain, eps);
}

void Backend::add_rmsnorm_forward(const Tensor& sum, const Tensor& out, const Tensor& rstd,
                                  const Tensor& a, const Tensor& b, const Tensor& gain,
                                  double eps) {
  const OpCheck c(*this, "add_rmsnorm_forward");
  check_rmsnorm_forward(c, out, rstd, sum, gain, eps);
  for (auto [t, name] : {std::pair{&a, "a"}, std::pair{&b, "b"}}) {
    c.dtype(*t, sum.dtype(), name);
    c.shape(*t, sum.shape(), name);
  }
  if (overlaps(out, a) || overlaps(out, b) || overlaps(out, sum)) c.fail("out overlaps an input");
  // In place over a is the residual update (sum = a += b); any other overlap would read
  // elements already written (the default's copy, then add).
  if (overlaps(sum, b) || (overlaps(sum, a) && sum.data() != a.data()))
    c.fail("sum overlaps b, or a other than exactly");
  add_rmsnorm_forward_impl(sum, out, rstd, a, b, gain, eps);
}

void Backend::rmsnorm_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                               const Tensor& x, const Tensor& gain, const Tensor& rstd,
                               bool accumulate) {
  const OpCheck c(*this, "rmsnorm_backward");
  const DType dt = c.float_dtype(x, "x"), st = stat_dtype(dt);
  c.dtype(dx, dt, "dx");
  c.dtype(dout, dt, "dout");
  c.dtype(dgain, st, "dgain");
  c.dtype(gain, st, "gain");
  c.dtype(rstd, st, "rstd");
  if (x.ndim() < 1) c.fail("x must have at least one axis");
  const int64_t D = x.dim(-1);
  c.positive(D, "last axis");
  c.shape(dx, x.shape(), "dx");
  c.shape(dout, x.shape(), "dout");
  c.shape(gain, {D}, "gain");
  c.shape(dgain, {D}, "dgain");
  c.numel(rstd, x.numel() / D, "rstd");
  if (overlaps(dx, dout) || overlaps(dx, x)) c.fail("dx overlaps an input");
  rmsnorm_backward_impl(dx, dgain, dout, x, gain, rstd, accumulate);
}

// ---- attention ------------------------------------------------------------------------------
namespace {
void check_rotary(const OpCheck& c, const Rotary& rotary) {
  if (const std::string problem = rotary_problem(rotary); !problem.empty()) c.fail(problem);
}

// Document masking's doc_start: undefined, or i32 [B*S] (its values are the caller's to get
// right: a device op cannot read them without a copy to the host).
void check_doc_start(const OpCheck& c, const Tensor& doc_start, int64_t B, int64_t S) {
  if (!doc_start.defined()) return;
  c.dtype(doc_start, DType::i32, "doc_start");
  c.shape(doc_start, {B * S}, "doc_start");
}

// doc_start's documents listed: i32 [D+1] with 1 <= D <= B*S and 1 <= longest <= S, only with
// doc_start (the values, again, are the caller's).
void check_documents(const OpCheck& c, const DocumentList& documents, const Tensor& doc_start,
                     int64_t B, int64_t S) {
  if (!documents.offsets.defined()) return;
  if (!doc_start.defined()) c.fail("documents listed without doc_start");
  c.dtype(documents.offsets, DType::i32, "documents.offsets");
  c.ndim(documents.offsets, 1, "documents.offsets");
  const int64_t listed = documents.offsets.dim(0) - 1;
  if (listed < 1 || listed > B * S)
    c.fail("documents.offsets lists " + std::to_string(listed) +
           " documents, not 1 to B*S = " + std::to_string(B * S));
  if (documents.longest < 1 || documents.longest > S)
    c.fail("documents.longest " + std::to_string(documents.longest) +
           " outside 1 to S = " + std::to_string(S));
}

// first_position: >= 0, and 0 with documents (their positions are the documents' own).
void check_first_position(const OpCheck& c, int64_t first_position, const Tensor& doc_start) {
  if (first_position < 0)
    c.fail("first_position must be >= 0, got " + std::to_string(first_position));
  if (first_position > 0 && doc_start.defined())
    c.fail("first_position " + std::to_string(first_position) + " with doc_start");
}

void check_rope(const OpCheck& c, const Tensor& x, int64_t B, int64_t S, int64_t H,
                const Rotary& rotary, const Tensor& doc_start, int64_t first_position = 0) {
  c.float_dtype(x, "x");
  check_heads(c, x, B, S, H, "x");
  check_rotary(c, rotary);
  check_doc_start(c, doc_start, B, S);
  check_first_position(c, first_position, doc_start);
}

void check_rope_qk(const OpCheck& c, const Tensor& q, const Tensor& k, int64_t B, int64_t S,
                   int64_t H, const Rotary& rotary, const Tensor& doc_start,
                   int64_t first_position = 0) {
  const DType dt = c.float_dtype(q, "q");
  c.dtype(k, dt, "k");
  c.shape(k, q.shape(), "k");
  check_heads(c, q, B, S, H, "q");
  check_rotary(c, rotary);
  check_doc_start(c, doc_start, B, S);
  check_first_position(c, first_position, doc_start);
}
}  // namespace

void Backend::rope_forward(const Tensor& x, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
                           const Tensor& doc_start, int64_t first_position) {
  check_rope(OpCheck(*this, "rope_forward"), x, B, S, H, rotary, doc_start, first_position);
  rope_forward_impl(x, B, S, H, rotary, doc_start, first_position);
}

void Backend::rope_backward(const Tensor& dx, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
                            const Tensor& doc_start) {
  check_rope(OpCheck(*this, "rope_backward"), dx, B, S, H, rotary, doc_start);
  rope_backward_impl(dx, B, S, H, rotary, doc_start);
}

void Backend::rope_forward_qk(const Tensor& q, const Tensor& k, int64_t B, int64_t S, int64_t H,
                              const Rotary& rotary, const Tensor& doc_start,
                              int64_t first_position) {
  check_rope_qk(OpCheck(*this, "rope_forward_qk"), q, k, B, S, H, rotary, doc_start,
                first_position);
  rope_forward_qk_impl(q, k, B, S, H, rotary, doc_start, first_position);
}

void Backend::rope_backward_qk(const Tensor& dq, const Tensor& dk, int64_t B, int64_t S, int64_t H,
                               const Rotary& rotary, const Tensor& doc_start) {
  check_rope_qk(OpCheck(*this, "rope_backward_qk"), dq, dk, B, S, H, rotary, doc_start);
  rope_backward_qk_impl(dq, dk, B, S, H, rotary, doc_start);
}

namespace {
// The shared part of repeat_kv_heads' contract: `grouped` [T, H*Dh] and `kv` [T, Hkv*Dh] of one
// float dtype, H a multiple of Hkv.
void check_kv_heads(const OpCheck& c, const Tensor& grouped, const char* grouped_name,
                    const Tensor& kv, const char* kv_name, int64_t kv_heads) {
  const DType dt = c.float_dtype(kv, kv_name);
  c.dtype(grouped, dt, grouped_name);
  c.ndim(kv, 2, kv_name);
  c.ndim(grouped, 2, grouped_name);
  c.positive(kv_heads, "kv_heads");
  if (kv.dim(1) % kv_heads != 0)
    c.fail(std::string(kv_name) + " width " + std::to_string(kv.dim(1)) +
           " is not a multiple of kv_heads " + std::to_string(kv_heads));
  if (grouped.dim(0) != kv.dim(0) || kv.dim(1) == 0 || grouped.dim(1) % kv.dim(1) != 0)
    c.fail(std::string(grouped_name) + " " + shape_str(grouped.shape()) +
           " is not a whole number of groups of " + kv_name + " " + shape_str(kv.shape()));
  if (overlaps(grouped, kv)) c.fail(std::string(grouped_name) + " overlaps " + kv_name);
}
}  // namespace

void Backend::repeat_kv_heads(const Tensor& out, const Tensor& x, int64_t kv_heads) {
  check_kv_heads(OpCheck(*this, "repeat_kv_heads"), out, "out", x, "x", kv_heads);
  repeat_kv_heads_impl(out, x, kv_heads);
}

void Backend::repeat_kv_heads_backward(const Tensor& dx, const Tensor& dout, int64_t kv_heads) {
  check_kv_heads(OpCheck(*this, "repeat_kv_heads_backward"), dout, "dout", dx, "dx", kv_heads);
  repeat_kv_heads_backward_impl(dx, dout, kv_heads);
}

void Backend::attention_forward(const Tensor& out, const Tensor& probs, const Tensor& q,
                                const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                                const Tensor& doc_start) {
  const OpCheck c(*this, "attention_forward");
  const DType dt = c.float_dtype(q, "q");
  for (auto [t, name] : {Named{&k, "k"}, {&v, "v"}, {&out, "out"}, {&probs, "probs"}})
    c.dtype(*t, dt, name);
  const int64_t Dh = check_heads(c, q, B, S, H, "q");
  for (auto [t, name] : {Named{&k, "k"}, {&v, "v"}, {&out, "out"}}) c.shape(*t, q.shape(), name);
  c.shape(probs, {B, H, S, S}, "probs");
  c.fits_int(Dh * H, "width");
  check_doc_start(c, doc_start, B, S);
  attention_forward_impl(out, probs, q, k, v, B, S, H, doc_start);
}

void Backend::attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                 const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                                 int64_t H) {
  const OpCheck c(*this, "attention_backward");
  const DType dt = c.float_dtype(q, "q");
  for (auto [t, name] : {Named{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"}, {&k, "k"},
                         {&v, "v"}, {&probs, "probs"}})
    c.dtype(*t, dt, name);
  check_heads(c, q, B, S, H, "q");
  for (auto [t, name] : {Named{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"}, {&k, "k"},
                         {&v, "v"}})
    c.shape(*t, q.shape(), name);
  c.shape(probs, {B, H, S, S}, "probs");
  attention_backward_impl(dq, dk, dv, dout, q, k, v, probs, B, S, H);
}

void Backend::attention_decode(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                               int64_t H, int64_t first_position) {
  const OpCheck c(*this, "attention_decode");
  const DType dt = c.float_dtype(q, "q");
  for (auto [t, name] : {Named{&k, "k"}, {&v, "v"}, {&out, "out"}}) c.dtype(*t, dt, name);
  c.ndim(q, 2, "q");
  const int64_t n = q.dim(0);
  check_heads(c, q, 1, n, H, "q");
  c.shape(out, q.shape(), "out");
  c.ndim(k, 2, "k");
  if (k.dim(1) != q.dim(1))
    c.fail("k width " + std::to_string(k.dim(1)) + " is not q's, " + std::to_string(q.dim(1)));
  c.shape(v, k.shape(), "v");
  check_first_position(c, first_position, Tensor());
  if (first_position + n > k.dim(0))
    c.fail("queries at positions " + std::to_string(first_position) + " .. " +
           std::to_string(first_position + n - 1) + " beyond the " + std::to_string(k.dim(0)) +
           " keys");
  attention_decode_impl(out, q, k, v, H, first_position);
}

void Backend::flash_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q,
                                      const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                      int64_t H, const Tensor& doc_start,
                                      const DocumentList& documents) {
  const OpCheck c(*this, "flash_attention_forward");
  const DType dt = c.float_dtype(q, "q");
  for (auto [t, name] : {Named{&k, "k"}, {&v, "v"}, {&out, "out"}}) c.dtype(*t, dt, name);
  c.dtype(lse, stat_dtype(dt), "lse");
  check_heads(c, q, B, S, H, "q");
  for (auto [t, name] : {Named{&k, "k"}, {&v, "v"}, {&out, "out"}}) c.shape(*t, q.shape(), name);
  c.shape(lse, {B, H, S}, "lse");
  check_doc_start(c, doc_start, B, S);
  check_documents(c, documents, doc_start, B, S);
  flash_attention_forward_impl(out, lse, q, k, v, B, S, H, doc_start, documents);
}

void Backend::flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                       const Tensor& dout, const Tensor& q, const Tensor& k,
                                       const Tensor& v, const Tensor& out, const Tensor& lse,
                                       int64_t B, int64_t S, int64_t H, const Tensor& doc_start,
                                       const DocumentList& documents) {
  const OpCheck c(*this, "flash_attention_backward");
  const DType dt = c.float_dtype(q, "q");
  const std::initializer_list<Named> same_as_q = {
      {&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"}, {&k, "k"}, {&v, "v"}, {&out, "out"}};
  for (auto [t, name] : same_as_q) c.dtype(*t, dt, name);
  c.dtype(lse, stat_dtype(dt), "lse");
  check_heads(c, q, B, S, H, "q");
  for (auto [t, name] : same_as_q) c.shape(*t, q.shape(), name);
  c.shape(lse, {B, H, S}, "lse");
  check_doc_start(c, doc_start, B, S);
  check_documents(c, documents, doc_start, B, S);
  flash_attention_backward_impl(dq, dk, dv, dout, q, k, v, out, lse, B, S, H, doc_start, documents);
}

// ---- SwiGLU ---------------------------------------------------------------------------------
void Backend::swiglu_forward(const Tensor& out, const Tensor& a, const Tensor& b) {
  const OpCheck c(*this, "swiglu_forward");
  const DType dt = c.float_dtype(a, "a");
  c.dtype(b, dt, "b");
  c.dtype(out, dt, "out");
  c.shape(b, a.shape(), "b");
  c.shape(out, a.shape(), "out");
  swiglu_forward_impl(out, a, b);
}

void Backend::swiglu_backward(const Tensor& da, const Tensor& db, const Tensor& dout,
                              const Tensor& a, const Tensor& b, const Tensor& hidden) {
  const OpCheck c(*this, "swiglu_backward");
  const DType dt = c.float_dtype(a, "a");
  for (auto [t, name] : {Named{&da, "da"}, {&db, "db"}, {&dout, "dout"}, {&b, "b"}}) {
    c.dtype(*t, dt, name);
    c.shape(*t, a.shape(), name);
  }
  if (hidden.defined()) {
    c.dtype(hidden, dt, "hidden");
    c.shape(hidden, a.shape(), "hidden");
  }
  swiglu_backward_impl(da, db, dout, a, b, hidden);
}

// ---- cross-entropy --------------------------------------------------------------------------
namespace {
void check_cross_entropy(const OpCheck& c, const Tensor& losses, const Tensor& logits,
                         const Tensor& targets) {
  const DType dt = c.float_dtype(logits, "logits");
  c.dtype(losses, stat_dtype(dt), "losses");
  c.dtype(targets, DType::i32, "targets");
  c.ndim(logits, 2, "logits");
  const int64_t N = logits.dim(0);
  c.numel(losses, N, "losses");
  c.numel(targets, N, "targets");
  c.positive(logits.dim(1), "V");
}
}  // namespace

void Backend::cross_entropy(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                            bool compute_grad, double grad_scale) {
  check_cross_entropy(OpCheck(*this, "cross_entropy"), losses, logits, targets);
  cross_entropy_impl(losses, logits, targets, compute_grad, grad_scale);
}

void Backend::cross_entropy_into(const Tensor& losses, const Tensor& logits,
                                 const Tensor& targets, double grad_scale,
                                 const Tensor& dlogits) {
  const OpCheck c(*this, "cross_entropy_into");
  check_cross_entropy(c, losses, logits, targets);
  c.float_dtype(dlogits, "dlogits");
  c.shape(dlogits, logits.shape(), "dlogits");
  cross_entropy_into_impl(losses, logits, targets, grad_scale, dlogits);
}

// ---- router ---------------------------------------------------------------------------------
namespace {
// tokens [N, D] and rows [R, D] tied by slot_row [N*K] (permute_rows's x and x_perm; its
// backward's and router_input_grad's dx and dx_perm), named as the op names them.
void check_rows_gather(const OpCheck& c, const Tensor& tokens, const Tensor& rows,
                       const Tensor& slot_row, int64_t K, const char* tokens_name = "dx",
                       const char* rows_name = "dx_perm") {
  const DType dt = c.float_dtype(tokens, tokens_name);
  c.dtype(rows, dt, rows_name);
  c.dtype(slot_row, DType::i32, "slot_row");
  c.ndim(tokens, 2, tokens_name);
  c.ndim(rows, 2, rows_name);
  c.positive(K, "K");
  c.shape(rows, {rows.dim(0), tokens.dim(1)}, rows_name);
  c.numel(slot_row, tokens.dim(0) * K, "slot_row");
}
}  // namespace

void check_router_logits(const Backend& backend, const Tensor& logits, const Tensor& u,
                         const Tensor& w) {
  const OpCheck c(backend, "router_logits");
  check_router_projection(c, logits, u, w, "logits");
  if (overlaps(logits, u) || overlaps(logits, w)) c.fail("logits overlaps an input");
}

void check_router_logits_backward(const Backend& backend, const Tensor& dw, const Tensor& du,
                                  const Tensor& dlogits, const Tensor& u, const Tensor& w) {
  const OpCheck c(backend, "router_logits_backward");
  check_router_projection(c, dlogits, u, w, "dlogits");
  c.dtype(dw, w.dtype(), "dw");
  c.shape(dw, w.shape(), "dw");
  for (const Tensor* input : {&dlogits, &u, &w})
    if (overlaps(dw, *input)) c.fail("dw overlaps an input");
  if (!du.defined()) return;  // dw alone
  c.dtype(du, u.dtype(), "du");
  c.shape(du, u.shape(), "du");
  for (const Tensor* input : {&dlogits, &u, &w})
    if (overlaps(du, *input)) c.fail("du overlaps an input");
  if (overlaps(du, dw)) c.fail("du overlaps dw");
}

void check_router_input_grad(const Backend& backend, const Tensor& dx, const Tensor& dx_perm,
                             const Tensor& slot_row, int64_t K, const Tensor& dlogits,
                             const Tensor& w) {
  const OpCheck c(backend, "router_input_grad");
  check_rows_gather(c, dx, dx_perm, slot_row, K);
  c.ndim(w, 2, "w");
  const DType wt = c.wide_dtype(w, "w");
  c.dtype(dlogits, wt, "dlogits");
  const int64_t N = dx.dim(0), D = dx.dim(1), E = w.dim(1);
  c.shape(w, {D, E}, "w");
  c.shape(dlogits, {N, E}, "dlogits");
  for (const Tensor* input : {&dx_perm, &slot_row, &dlogits, &w})
    if (overlaps(dx, *input)) c.fail("dx overlaps an input");
}

void Backend::router_scores_topk(const Tensor& scores, const Tensor& lse, const Tensor& topk_idx,
                                 const Tensor& gates, const Tensor& logits,
                                 const Tensor& expert_bias, const RoutingRule& rule) {
  const OpCheck c(*this, "router_scores_topk");
  const DType dt = c.wide_dtype(logits, "logits");
  c.dtype(scores, dt, "scores");
  c.dtype(lse, dt, "lse");
  c.dtype(gates, dt, "gates");
  c.dtype(topk_idx, DType::i32, "topk_idx");
  c.ndim(logits, 2, "logits");
  const int64_t N = logits.dim(0), E = logits.dim(1), K = rule.top_k;
  check_top_k(c, K, E);
  c.shape(scores, logits.shape(), "scores");
  c.numel(lse, N, "lse");
  c.shape(topk_idx, {N, K}, "topk_idx");
  c.shape(gates, {N, K}, "gates");
  check_bias(c, expert_bias, dt, E);
  router_scores_topk_impl(scores, lse, topk_idx, gates, logits, expert_bias, rule);
}

namespace {
void check_router_plan(const OpCheck& c, const Tensor& slot_row, const Tensor& slot_expert,
                       const Tensor& assignments_per_expert, const Tensor& topk_idx,
                       const Tensor& gates, const Tensor& logits, const Tensor& expert_bias,
                       const RoutingRule& rule) {
  for (auto [t, name] : {Named{&slot_row, "slot_row"},
                         {&slot_expert, "slot_expert"},
                         {&assignments_per_expert, "assignments_per_expert"},
                         {&topk_idx, "topk_idx"}})
    c.dtype(*t, DType::i32, name);
  c.ndim(topk_idx, 2, "topk_idx");
  c.ndim(logits, 2, "logits");
  const DType dt = c.wide_dtype(logits, "logits");
  c.dtype(gates, dt, "gates");
  const int64_t N = topk_idx.dim(0), K = topk_idx.dim(1), E = logits.dim(1);
  c.positive(E, "E");
  if (K != rule.top_k)
    c.fail("topk_idx has " + std::to_string(K) + " columns, top_k is " +
           std::to_string(rule.top_k));
  c.fits_int(N * K, "T*K");
  c.shape(logits, {N, E}, "logits");
  c.shape(gates, {N, K}, "gates");
  c.numel(slot_row, N * K, "slot_row");
  c.numel(slot_expert, N * K, "slot_expert");
  c.numel(assignments_per_expert, E, "assignments_per_expert");
  check_bias(c, expert_bias, dt, E);
}
}  // namespace

RouterPlanCounts Backend::router_plan(const Tensor& slot_row, const Tensor& slot_expert,
                                      const Tensor& assignments_per_expert, const Tensor& topk_idx,
                                      const Tensor& gates, const Tensor& logits,
                                      const Tensor& expert_bias, const RoutingRule& rule) {
  const OpCheck c(*this, "router_plan");
  if (plan_started_) c.fail("a plan started by router_plan_start is not finished");
  check_router_plan(c, slot_row, slot_expert, assignments_per_expert, topk_idx, gates, logits,
                    expert_bias, rule);
  return router_plan_impl(slot_row, slot_expert, assignments_per_expert, topk_idx, gates, logits,
                          expert_bias, rule);
}

void Backend::router_plan_start(const Tensor& slot_row, const Tensor& slot_expert,
                                const Tensor& assignments_per_expert, const Tensor& topk_idx,
                                const Tensor& gates, const Tensor& logits,
                                const Tensor& expert_bias, const RoutingRule& rule) {
  const OpCheck c(*this, "router_plan_start");
  if (plan_started_) c.fail("the previous plan is not finished (router_plan_finish)");
  check_router_plan(c, slot_row, slot_expert, assignments_per_expert, topk_idx, gates, logits,
                    expert_bias, rule);
  router_plan_start_impl(slot_row, slot_expert, assignments_per_expert, topk_idx, gates, logits,
                         expert_bias, rule);
  plan_started_ = true;
}

RouterPlanCounts Backend::router_plan_finish() {
  if (!plan_started_) OpCheck(*this, "router_plan_finish").fail("no plan was started");
  plan_started_ = false;
  return router_plan_finish_impl();
}

void Backend::router_plan_start_impl(const Tensor& slot_row, const Tensor& slot_expert,
                                     const Tensor& assignments_per_expert, const Tensor& topk_idx,
                                     const Tensor& gates, const Tensor& logits,
                                     const Tensor& expert_bias, const RoutingRule& rule) {
  started_counts_ = router_plan_impl(slot_row, slot_expert, assignments_per_expert, topk_idx, gates,
                                     logits, expert_bias, rule);
}

RouterPlanCounts Backend::router_plan_finish_impl() { return std::move(started_counts_); }

namespace {
void check_router_losses(const OpCheck& c, const Tensor& scores, const Tensor& lse,
                         const Tensor& balance_counts) {
  const DType dt = c.wide_dtype(scores, "scores");
  c.dtype(lse, dt, "lse");
  c.dtype(balance_counts, DType::i32, "balance_counts");
  c.ndim(scores, 2, "scores");
  const int64_t N = scores.dim(0), E = scores.dim(1);
  c.numel(lse, N, "lse");
  c.numel(balance_counts, E, "balance_counts");
}
}  // namespace

RouterLossValues Backend::router_losses(const Tensor& scores, const Tensor& lse,
                                        const Tensor& balance_counts, const RoutingRule& rule) {
  check_router_losses(OpCheck(*this, "router_losses"), scores, lse, balance_counts);
  return router_losses_impl(scores, lse, balance_counts, rule);
}

void Backend::router_losses_into(const Tensor& out, const Tensor& scores, const Tensor& lse,
                                 const Tensor& balance_counts, const RoutingRule& rule) {
  const OpCheck c(*this, "router_losses_into");
  check_router_losses(c, scores, lse, balance_counts);
  c.dtype(out, DType::f64, "out");
  c.numel(out, 3, "out");
  router_losses_into_impl(out, scores, lse, balance_counts, rule);
}

void Backend::router_losses_into_impl(const Tensor& out, const Tensor& scores, const Tensor& lse,
                                      const Tensor& balance_counts, const RoutingRule& rule) {
  const RouterLossValues v = router_losses_impl(scores, lse, balance_counts, rule);
  const double values[3] = {v.aux, v.z, v.entropy};
  write(out, std::span<const double>(values));
}

void Backend::router_backward(const Tensor& dlogits, const Tensor& dgates, const Tensor& scores,
                              const Tensor& lse, const Tensor& logits, const Tensor& topk_idx,
                              const Tensor& balance_counts, const RoutingRule& rule,
                              double d_aux, double d_z) {
  const OpCheck c(*this, "router_backward");
  const DType dt = c.wide_dtype(scores, "scores");
  for (auto [t, name] : {Named{&dlogits, "dlogits"}, {&dgates, "dgates"}, {&lse, "lse"},
                         {&logits, "logits"}})
    c.dtype(*t, dt, name);
  c.dtype(topk_idx, DType::i32, "topk_idx");
  c.dtype(balance_counts, DType::i32, "balance_counts");
  c.ndim(scores, 2, "scores");
  const int64_t N = scores.dim(0), E = scores.dim(1), K = rule.top_k;
  check_top_k(c, K, E);
  c.shape(dlogits, scores.shape(), "dlogits");
  c.shape(logits, scores.shape(), "logits");
  c.shape(dgates, {N, K}, "dgates");
  c.numel(lse, N, "lse");
  c.shape(topk_idx, {N, K}, "topk_idx");
  c.numel(balance_counts, E, "balance_counts");
  router_backward_impl(dlogits, dgates, scores, lse, logits, topk_idx, balance_counts, rule,
                       d_aux, d_z);
}

// ---- permute / unpermute --------------------------------------------------------------------
void Backend::permute_rows(const Tensor& x_perm, const Tensor& x, const Tensor& slot_row,
                           int64_t K) {
  check_rows_gather(OpCheck(*this, "permute_rows"), x, x_perm, slot_row, K, "x", "x_perm");
  permute_rows_impl(x_perm, x, slot_row, K);
}

void Backend::permute_rows_backward(const Tensor& dx, const Tensor& dx_perm,
                                    const Tensor& slot_row, int64_t K) {
  check_rows_gather(OpCheck(*this, "permute_rows_backward"), dx, dx_perm, slot_row, K);
  permute_rows_backward_impl(dx, dx_perm, slot_row, K);
}

void Backend::unpermute_combine(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                                const Tensor& slot_row) {
  const OpCheck c(*this, "unpermute_combine");
  const DType dt = c.float_dtype(out, "out");
  c.dtype(y_perm, dt, "y_perm");
  c.dtype(gates, stat_dtype(dt), "gates");
  c.dtype(slot_row, DType::i32, "slot_row");
  c.ndim(out, 2, "out");
  c.ndim(y_perm, 2, "y_perm");
  c.ndim(gates, 2, "gates");
  const int64_t N = out.dim(0), D = out.dim(1), R = y_perm.dim(0), K = gates.dim(1);
  c.shape(y_perm, {R, D}, "y_perm");
  c.shape(gates, {N, K}, "gates");
  c.numel(slot_row, N * K, "slot_row");
  unpermute_combine_impl(out, y_perm, gates, slot_row);
}

void Backend::unpermute_combine_backward(const Tensor& dy_perm, const Tensor& dgates,
                                         const Tensor& dout, const Tensor& y_perm,
                                         const Tensor& gates, const Tensor& slot_row) {
  const OpCheck c(*this, "unpermute_combine_backward");
  const DType dt = c.float_dtype(dout, "dout"), st = stat_dtype(dt);
  c.dtype(dy_perm, dt, "dy_perm");
  c.dtype(y_perm, dt, "y_perm");
  c.dtype(dgates, st, "dgates");
  c.dtype(gates, st, "gates");
  c.dtype(slot_row, DType::i32, "slot_row");
  c.ndim(dout, 2, "dout");
  c.ndim(y_perm, 2, "y_perm");
  c.ndim(gates, 2, "gates");
  const int64_t N = dout.dim(0), D = dout.dim(1), R = y_perm.dim(0), K = gates.dim(1);
  c.shape(y_perm, {R, D}, "y_perm");
  c.shape(dy_perm, {R, D}, "dy_perm");
  c.shape(gates, {N, K}, "gates");
  c.shape(dgates, {N, K}, "dgates");
  c.numel(slot_row, N * K, "slot_row");
  unpermute_combine_backward_impl(dy_perm, dgates, dout, y_perm, gates, slot_row);
}

// ---- optimizer ------------------------------------------------------------------------------
void Backend::adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                           const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                           double eps, double weight_decay, int64_t step) {
  const OpCheck c(*this, "adamw_update");
  const DType dt = c.master_dtype(param, "param");
  for (auto [t, name] : {Named{&grad, "grad"}, {&exp_avg, "exp_avg"},
                         {&exp_avg_sq, "exp_avg_sq"}}) {
    c.dtype(*t, dt, name);
    c.numel(*t, param.numel(), name);
  }
  c.positive(step, "step");
  adamw_update_impl(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step);
}

void Backend::sgd_update(const Tensor& param, const Tensor& grad, double lr) {
  const OpCheck c(*this, "sgd_update");
  const DType dt = c.master_dtype(param, "param");
  c.dtype(grad, dt, "grad");
  c.numel(grad, param.numel(), "grad");
  sgd_update_impl(param, grad, lr);
}

}  // namespace sy
