// The reference grouped GEMMs (contract in model/backend.h): one gemm() per non-empty segment,
// exactly the per-expert calls the expert FFN made before it had grouped ops, so a backend that
// keeps these defaults computes what it did then, bit for bit.
#include <stdexcept>
#include <string>

#include "model/backend.h"

namespace sy {

namespace {

// Expert g's [rows, cols] matrix of a stacked [G, rows, cols] tensor.
Tensor group_slice(const Tensor& stacked, int64_t g) {
  return stacked.rows(g, g + 1).reshape({stacked.dim(1), stacked.dim(2)});
}

[[noreturn]] void fail(const char* op, const std::string& message) {
  throw std::runtime_error(std::string(op) + ": " + message);
}

// Checks that `stacked` (operand `name`, [G, ., .]) holds one matrix per segment and that the
// segment sizes are >= 0 and cover the rows of A exactly; then calls per_segment(g, begin, end)
// for every segment g, rows [begin, end) of A, in order, empty segments included.
template <class PerSegment>
void for_each_segment(const char* op, const char* name, const Tensor& stacked, const Tensor& A,
                      std::span<const int64_t> rows_per_group, PerSegment&& per_segment) {
  const int64_t G = static_cast<int64_t>(rows_per_group.size());
  if (stacked.dim(0) != G)
    fail(op, std::string(name) + " holds " + std::to_string(stacked.dim(0)) + " matrices for " +
                 std::to_string(G) + " segments");
  int64_t total = 0;
  for (int64_t r : rows_per_group) {
    if (r < 0) fail(op, "negative segment size " + std::to_string(r));
    total += r;
  }
  if (total != A.dim(0))
    fail(op, "segment sizes sum to " + std::to_string(total) + ", A has " +
                 std::to_string(A.dim(0)) + " rows");
  int64_t begin = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t end = begin + rows_per_group[g];
    per_segment(g, begin, end);
    begin = end;
  }
}

}  // namespace

void Backend::grouped_gemm_impl(const Tensor& C, const Tensor& A, const Tensor& B, bool trans_b,
                                std::span<const int64_t> rows_per_group, bool accumulate) {
  const char* op = "grouped_gemm";
  if (A.ndim() != 2 || B.ndim() != 3 || C.ndim() != 2)
    fail(op, "expected A [M, K], B [G, K, N] and C [M, N], got A " + shape_str(A.shape()) +
                 ", B " + shape_str(B.shape()) + ", C " + shape_str(C.shape()));
  for_each_segment(op, "B", B, A, rows_per_group, [&](int64_t g, int64_t begin, int64_t end) {
    if (end > begin)
      gemm(C.rows(begin, end), A.rows(begin, end), false, group_slice(B, g), trans_b, 1.0,
           accumulate ? 1.0 : 0.0);
  });
}

bool Backend::grouped_gemm_wgrad_impl(const Tensor& C, const Tensor& A, const Tensor& B,
                                      std::span<const int64_t> rows_per_group, bool accumulate,
                                      Tensor* /*squares: not summed here*/) {
  const char* op = "grouped_gemm_wgrad";
  if (A.ndim() != 2 || B.ndim() != 2 || C.ndim() != 3)
    fail(op, "expected A [M, K], B [M, N] and C [G, K, N], got A " + shape_str(A.shape()) +
                 ", B " + shape_str(B.shape()) + ", C " + shape_str(C.shape()));
  for_each_segment(op, "C", C, A, rows_per_group, [&](int64_t g, int64_t begin, int64_t end) {
    if (end > begin)
      gemm(group_slice(C, g), A.rows(begin, end), true, B.rows(begin, end), false, 1.0,
           accumulate ? 1.0 : 0.0);
    else if (!accumulate)
      fill(group_slice(C, g), 0.0);  // no rows: the product is zero
  });
  return false;
}

void Backend::grouped_gemm_pair_impl(const Tensor& C, const Tensor& A, const Tensor& B,
                                     const Tensor& A2, const Tensor& B2, bool trans_b,
                                     std::span<const int64_t> rows_per_group) {
  grouped_gemm(C, A, B, trans_b, rows_per_group, false);
  grouped_gemm(C, A2, B2, trans_b, rows_per_group, true);
}

}  // namespace sy
