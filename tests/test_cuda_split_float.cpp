// f32_split tensors on the CUDA backend (model/split_float.h, model/cuda/split_float.cu): what
// goes in as f32 comes back as the same bits through every way in and out (write, read,
// copy_from_host, copy_to_host, fill, copy to and from f32 and f32_split, views of rows), the
// high halves read as bf16 are the split's rounding, and sums of squares equal those of the f32
// values. The patterns include exact ties, signed zeros, subnormals, the largest floats and
// infinities; NaN stays NaN. And a bf16 Transformer holds its GEMM weights so: the same fp32
// values as with SY_CUDA_SPLIT_MASTERS=0, compute weights that differ from its separate copy
// (ties to even) only on exact ties. Skipped when no CUDA device is visible (label gpu).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/split_float.h"
#include "tests/cuda_test_util.h"

namespace sy {
namespace {

using test::build;
using test::Built;
using test::small_model;

uint32_t bits_of(float f) {
  uint32_t bits = 0;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

float float_of(uint32_t bits) {
  float f = 0;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// [rows, 37] values: random normals, with every 7th an exact tie (low half 0x8000) and the
// first few the special patterns.
std::vector<float> patterns(int64_t rows) {
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  std::vector<float> v(rows * 37);
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = normal(gen);
    if (i % 7 == 0) v[i] = float_of((bits_of(v[i]) & 0xFFFF'0000u) | 0x8000u);
  }
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::denorm_min(),
                            -std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::max(),
                            -std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            1.0f,
                            -3.0f};
  for (size_t i = 0; i < std::size(specials) && i < v.size(); ++i) v[i] = specials[i];
  return v;
}

void expect_bits(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (bits_of(got[i]) != bits_of(want[i]) && differ++ == 0) first = i;
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << got.size() << " differ, first ["
                        << first << "] " << got[first] << " vs " << want[first];
}

class CudaSplitFloat : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = make_cuda_backend(0);
  }
  Backend& gpu() { return *gpu_; }

  std::vector<float> host_copy(const Tensor& t) {
    std::vector<float> out(t.numel());
    gpu().copy_to_host(out.data(), t);
    return out;
  }

  std::unique_ptr<Backend> gpu_;
};

TEST_F(CudaSplitFloat, EveryWayInAndOutKeepsTheBits) {
  const int64_t rows = 1000;
  const std::vector<float> values = patterns(rows);
  const Tensor split = gpu().alloc({rows, 37}, DType::f32_split);
  gpu().copy_from_host(split, values.data());
  expect_bits(host_copy(split), values, "copy_from_host, copy_to_host");

  const std::vector<double> read = gpu().read(split);
  std::vector<float> read_f(read.begin(), read.end());
  expect_bits(read_f, values, "read");

  const Tensor written = gpu().alloc({rows, 37}, DType::f32_split);
  gpu().write(written, std::span<const float>(values));
  expect_bits(host_copy(written), values, "write (f32)");

  // f32 -> f32_split -> f32_split -> f32.
  const Tensor f32 = gpu().alloc({rows, 37}, DType::f32),
               back = gpu().alloc({rows, 37}, DType::f32);
  gpu().copy_from_host(f32, values.data());
  const Tensor from_f32 = gpu().alloc({rows, 37}, DType::f32_split);
  const Tensor copied = gpu().alloc({rows, 37}, DType::f32_split);
  gpu().copy(from_f32, f32);
  gpu().copy(copied, from_f32);
  gpu().copy(back, copied);
  expect_bits(host_copy(back), values, "copy f32 -> split -> split -> f32");

  // The high halves are the bf16 rounding of split_float_bits, as a tensor and as a copy.
  std::vector<uint16_t> high(values.size()), want(values.size());
  gpu().copy_to_host(high.data(), split.high_half());
  for (size_t i = 0; i < values.size(); ++i) want[i] = split_float_bits(bits_of(values[i])).high;
  EXPECT_EQ(high, want) << "high halves";
  const Tensor bf16 = gpu().alloc({rows, 37}, DType::bf16);
  gpu().copy(bf16, split);
  std::vector<uint16_t> copied_high(values.size());
  gpu().copy_to_host(copied_high.data(), bf16);
  EXPECT_EQ(copied_high, want) << "copy f32_split -> bf16";

  // Sums of squares (the checkpoint's finiteness check) as those of the f32 values.
  const std::vector<float> finite(values.begin() + 10, values.end());  // no max, no inf
  const Tensor split_finite = gpu().alloc({static_cast<int64_t>(finite.size())}, DType::f32_split);
  const Tensor f32_finite = gpu().alloc({static_cast<int64_t>(finite.size())}, DType::f32);
  gpu().copy_from_host(split_finite, finite.data());
  gpu().copy_from_host(f32_finite, finite.data());
  EXPECT_EQ(gpu().sum_squares(split_finite), gpu().sum_squares(f32_finite));
  EXPECT_FALSE(std::isfinite(gpu().sum_squares(split)));  // it holds infinities
}

TEST_F(CudaSplitFloat, ViewsOfRowsAndFill) {
  const int64_t rows = 9, cols = 37;
  const std::vector<float> values = patterns(rows);
  const Tensor split = gpu().alloc({rows, cols}, DType::f32_split);
  gpu().fill(split, -1.5);
  std::vector<float> expected(rows * cols, -1.5f);
  expect_bits(host_copy(split), expected, "fill");

  // Rows 3..6 written through a view; the others keep the fill. Then read back by view.
  const Tensor middle = split.rows(3, 7);
  gpu().copy_from_host(middle, values.data() + 3 * cols);
  std::copy(values.begin() + 3 * cols, values.begin() + 7 * cols, expected.begin() + 3 * cols);
  expect_bits(host_copy(split), expected, "rows 3..6 written through a view");
  const std::vector<float> middle_back = host_copy(middle);
  expect_bits(middle_back, std::vector<float>(values.begin() + 3 * cols, values.begin() + 7 * cols),
              "rows 3..6 read through a view");

  // A view copied into a whole tensor of its shape, and one row of it filled.
  const Tensor other = gpu().alloc({4, cols}, DType::f32_split);
  gpu().copy(other, middle);
  gpu().fill(other.rows(1, 2), 0.25);
  std::vector<float> want(values.begin() + 3 * cols, values.begin() + 7 * cols);
  std::fill(want.begin() + cols, want.begin() + 2 * cols, 0.25f);
  expect_bits(host_copy(other), want, "copy of a view, then a row filled");

  const float nan = std::numeric_limits<float>::quiet_NaN();
  gpu().copy_from_host(other.rows(0, 1), std::vector<float>(cols, nan).data());
  for (float f : host_copy(other.rows(0, 1))) EXPECT_TRUE(std::isnan(f));
}

TEST_F(CudaSplitFloat, ConversionsItCannotDoAreRefused) {
  const Tensor split = gpu().alloc({8}, DType::f32_split);
  const Tensor f64 = gpu().alloc({8}, DType::f64);
  EXPECT_THROW(gpu().copy(f64, split), std::runtime_error);
  EXPECT_THROW(gpu().copy(split, f64), std::runtime_error);
}

// The model's weights with split masters against SY_CUDA_SPLIT_MASTERS=0 (f32 masters and a
// bf16 copy rounded to nearest even): the same fp32 values; compute weights equal except where
// the value's low half is exactly 0x8000 (a tie, rounded away from zero here).
TEST_F(CudaSplitFloat, ModelWeightsDifferFromTheSeparateCopyOnlyOnTies) {
  TransformerOptions options = small_model(true, {true, false}, 1.0);
  options.model.d_model = 256;  // ~0.5M weights: a few ties among them
  options.model.ffn_hidden = 512;
  options.moe.expert_hidden = 256;
  setenv("SY_CUDA_SPLIT_MASTERS", "0", 1);
  Built apart = build(gpu(), options, DType::bf16, 3, 1.0);
  unsetenv("SY_CUDA_SPLIT_MASTERS");
  Built split = build(gpu(), options, DType::bf16, 3, 1.0);
  const std::vector<Param*> a = apart.model->params(), b = split.model->params();
  ASSERT_EQ(a.size(), b.size());
  int64_t weights = 0, ties = 0, differ = 0, split_params = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<double> value = gpu().read(a[i]->value);
    ASSERT_EQ(gpu().read(b[i]->value), value) << a[i]->path;
    if (b[i]->value.dtype() != DType::f32_split) {
      EXPECT_EQ(b[i]->compute.data(), b[i]->value.data()) << a[i]->path << ": no copy, no split";
      continue;
    }
    ++split_params;
    EXPECT_EQ(b[i]->compute.data(), b[i]->value.data()) << a[i]->path << ": the high halves";
    const std::vector<double> copy = gpu().read(a[i]->compute), high = gpu().read(b[i]->compute);
    for (size_t k = 0; k < value.size(); ++k) {
      const bool tie = (bits_of(static_cast<float>(value[k])) & 0xFFFFu) == 0x8000u;
      ties += tie;
      if (high[k] != copy[k]) {
        ++differ;
        EXPECT_TRUE(tie) << a[i]->path << "[" << k << "] " << value[k] << ": " << high[k] << " vs "
                         << copy[k];
      }
    }
    weights += static_cast<int64_t>(value.size());
  }
  EXPECT_GT(split_params, 0);
  std::printf(
      "[ split    ] %lld weights in %lld split tensors, %lld ties, %lld compute weights "
      "differ from ties to even\n",
      static_cast<long long>(weights), static_cast<long long>(split_params),
      static_cast<long long>(ties), static_cast<long long>(differ));
}

}  // namespace
}  // namespace sy
