// Activation buffers are allocated on first use and reused: after the first step no layer
// allocates (the CUDA backend relies on this to keep cudaMalloc out of the steady state).
#pragma once
#include "model/backend.h"

namespace sy {

// Makes `buffer` a tensor of exactly `shape` and `dtype`, reallocating only when they change.
inline const Tensor& ensure(Backend& backend, Tensor& buffer, const Shape& shape, DType dtype) {
  if (!buffer.defined() || buffer.shape() != shape || buffer.dtype() != dtype)
    buffer = backend.alloc(shape, dtype);
  return buffer;
}

// For row counts that vary from step to step (expert segments): keeps a [capacity, cols] buffer
// that only grows, and returns a view of its first `rows` rows.
inline Tensor ensure_rows(Backend& backend, Tensor& storage, int64_t rows, int64_t cols,
                          DType dtype) {
  if (!storage.defined() || storage.dtype() != dtype || storage.dim(1) != cols ||
      storage.dim(0) < rows)
    storage = backend.alloc({std::max<int64_t>(rows, 1), cols}, dtype);
  return storage.rows(0, rows);
}

}  // namespace sy
