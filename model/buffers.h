// Activation buffers are allocated on first use and reused: after the first step no layer
// allocates (the CUDA backend relies on this to keep cudaMalloc out of the steady state).
#pragma once
#include <algorithm>

#include "model/backend.h"

namespace sy {

// Makes `buffer` a tensor of exactly `shape` and `dtype`, reallocating only when they change.
inline const Tensor& ensure(Backend& backend, Tensor& buffer, const Shape& shape, DType dtype) {
  if (!buffer.defined() || buffer.shape() != shape || buffer.dtype() != dtype)
    buffer = backend.alloc(shape, dtype);
  return buffer;
}

// For row counts that vary from step to step (expert segments): keeps a [capacity, cols] buffer
// that only grows, and returns a view of its first `rows` rows. A caller that knows its worst
// case passes it as `reserve`: the buffer is then allocated once, at that size, and never again
// (each regrowth would leave the old block cached on a device).
inline Tensor ensure_rows(Backend& backend, Tensor& storage, int64_t rows, int64_t cols,
                          DType dtype, int64_t reserve = 0) {
  if (!storage.defined() || storage.dtype() != dtype || storage.dim(1) != cols ||
      storage.dim(0) < rows)
    storage = backend.alloc({std::max({rows, reserve, int64_t{1}}), cols}, dtype);
  return storage.rows(0, rows);
}

}  // namespace sy
