// Activation buffers are allocated on first use and reused: after the first step no layer
// allocates (the CUDA backend relies on this to keep cudaMalloc out of the steady state).
#pragma once
#include <algorithm>
#include <map>
#include <string>
#include <utility>

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

// Named grow-only slots for buffers that live only during one layer's forward or backward (or,
// under train.recompute, activations that backward rebuilds): the Transformer owns one and lends
// it to every layer, so the model holds one layer's worth of such scratch instead of n_layers'.
// A layer used on its own keeps a private one. Two buffers that are live at the same time must
// have different names; a view returned by get() is valid until the next get() of its name.
class Workspace {
 public:
  // The first numel(shape) elements of slot (name, dtype), as a tensor of `shape`. The slot
  // grows to at least max(numel(shape), reserve) elements and never shrinks (`reserve`: the
  // worst case, for sizes that vary from step to step; see ensure_rows).
  Tensor get(Backend& backend, const std::string& name, const Shape& shape, DType dtype,
             int64_t reserve = 0) {
    Tensor& slot = slots_[{name, dtype}];
    const int64_t numel = shape_numel(shape);
    if (!slot.defined() || slot.numel() < numel)
      slot = backend.alloc({std::max({numel, reserve, int64_t{1}})}, dtype);
    return slot.prefix(shape);
  }
  // rows x cols of slot `name`, reserving reserve_rows x cols (ensure_rows' counterpart).
  Tensor rows(Backend& backend, const std::string& name, int64_t rows, int64_t cols, DType dtype,
              int64_t reserve_rows = 0) {
    return get(backend, name, {rows, cols}, dtype, reserve_rows * cols);
  }
  // Bytes held by all slots (for tests and the memory table in docs/cuda.md).
  size_t bytes() const {
    size_t total = 0;
    for (const auto& [key, slot] : slots_) total += slot.nbytes();
    return total;
  }

 private:
  std::map<std::pair<std::string, DType>, Tensor> slots_;
};

}  // namespace sy
