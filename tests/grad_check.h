// Finite-difference gradient checking in float64, shared by the layer and model tests.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/param.h"
#include "model/rng.h"

namespace sy::test {

inline std::vector<double> random_values(int64_t n, uint64_t seed, double scale = 1.0) {
  CounterRng rng(seed);
  std::vector<double> values(n);
  for (double& v : values) v = scale * rng.normal();
  return values;
}

inline Tensor random_tensor(Backend& backend, const Shape& shape, uint64_t seed,
                            double scale = 1.0) {
  Tensor t = backend.alloc(shape, DType::f64);
  backend.write(t, std::span<const double>(random_values(shape_numel(shape), seed, scale)));
  return t;
}

inline Param random_param(Backend& backend, const std::string& path, const Shape& shape,
                          uint64_t seed, double scale = 1.0) {
  Param param;
  param.path = path;
  param.value = random_tensor(backend, shape, seed, scale);
  param.grad = backend.zeros(shape, DType::f64);
  return param;
}

// sum(out .* weights): a scalar loss whose gradient with respect to `out` is `weights`.
inline double weighted_sum(Backend& backend, const Tensor& out, const Tensor& weights) {
  const std::vector<double> a = backend.read(out), b = backend.read(weights);
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

// Compares `analytic` (the gradient of loss() with respect to `x`) with central differences on
// up to `samples` elements of x spread over the tensor (all of them when it is small).
inline void expect_gradient(Backend& backend, const Tensor& x, const std::vector<double>& analytic,
                            const std::function<double()>& loss, const std::string& what,
                            int samples = 24, double eps = 1e-6, double rel_tol = 1e-6) {
  std::vector<double> values = backend.read(x);
  const int64_t n = static_cast<int64_t>(values.size());
  ASSERT_EQ(static_cast<int64_t>(analytic.size()), n) << what;
  const int64_t stride = std::max<int64_t>(1, n / samples);
  double max_abs_grad = 0.0;
  for (double g : analytic) max_abs_grad = std::max(max_abs_grad, std::abs(g));
  for (int64_t i = 0; i < n; i += stride) {
    const double saved = values[i];
    values[i] = saved + eps;
    backend.write(x, std::span<const double>(values));
    const double plus = loss();
    values[i] = saved - eps;
    backend.write(x, std::span<const double>(values));
    const double minus = loss();
    values[i] = saved;
    backend.write(x, std::span<const double>(values));
    const double numeric = (plus - minus) / (2 * eps);
    const double tol = rel_tol * std::max({std::abs(numeric), std::abs(analytic[i])}) +
                       1e-8 * std::max(1.0, max_abs_grad);
    EXPECT_NEAR(analytic[i], numeric, tol) << what << " element " << i;
  }
}

}  // namespace sy::test
