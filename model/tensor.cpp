#include "model/tensor.h"

#include <sstream>

namespace sy {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::f32_split:
      return 4;  // two halves, in two planes
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::f32_split:
      return "f32_split";
  }
  return "?";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  if (shape_.empty() || begin < 0 || end < begin || end > shape_[0])
    throw std::runtime_error("Tensor::rows: range [" + std::to_string(begin) + ", " +
                             std::to_string(end) + ") out of " + shape_str(shape_));
  Shape shape = shape_;
  shape[0] = end - begin;
  const int64_t row_elems = shape_[0] ? numel() / shape_[0] : 0;
  // An f32_split element's first plane holds 2 bytes of it; the low plane moves with it.
  const size_t element_bytes = dtype_ == DType::f32_split ? 2 : dtype_size(dtype_);
  char* base = static_cast<char*>(data_) + begin * row_elems * element_bytes;
  return Tensor(buffer_, base, std::move(shape), dtype_, device_, low_plane_);
}

Tensor Tensor::reshape(Shape shape) const {
  if (shape_numel(shape) != numel())
    throw std::runtime_error("Tensor::reshape: " + shape_str(shape_) + " to " + shape_str(shape));
  return Tensor(buffer_, data_, std::move(shape), dtype_, device_, low_plane_);
}

Tensor Tensor::prefix(Shape shape) const {
  if (shape_numel(shape) > numel())
    throw std::runtime_error("Tensor::prefix: " + shape_str(shape) + " exceeds " + shape_str(shape_));
  return Tensor(buffer_, data_, std::move(shape), dtype_, device_, low_plane_);
}

Tensor Tensor::high_half() const {
  if (dtype_ != DType::f32_split)
    throw std::runtime_error(std::string("Tensor::high_half: a ") + dtype_name(dtype_) +
                             " tensor has no halves");
  return Tensor(buffer_, data_, shape_, DType::bf16, device_);
}

uint16_t* Tensor::low_half_bits() const {
  if (dtype_ != DType::f32_split)
    throw std::runtime_error(std::string("Tensor::low_half_bits: a ") + dtype_name(dtype_) +
                             " tensor has no halves");
  return static_cast<uint16_t*>(data_) + low_plane_;
}

void expect_shape(const Tensor& t, const Shape& shape, const char* what) {
  expect_shape(t, shape, what, "");
}

void expect_shape(const Tensor& t, const Shape& shape, std::string_view what_head,
                  std::string_view what_tail) {
  if (t.shape() != shape)
    throw std::runtime_error(std::string(what_head) + std::string(what_tail) + ": expected shape " +
                             shape_str(shape) + ", got " + shape_str(t.shape()));
}

}  // namespace sy
