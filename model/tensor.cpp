#include "model/tensor.h"

#include <sstream>

namespace sy {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
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
  char* base = static_cast<char*>(data_) + begin * row_elems * dtype_size(dtype_);
  return Tensor(buffer_, base, std::move(shape), dtype_, device_);
}

Tensor Tensor::reshape(Shape shape) const {
  if (shape_numel(shape) != numel())
    throw std::runtime_error("Tensor::reshape: " + shape_str(shape_) + " to " + shape_str(shape));
  return Tensor(buffer_, data_, std::move(shape), dtype_, device_);
}

Tensor Tensor::prefix(Shape shape) const {
  if (shape_numel(shape) > numel())
    throw std::runtime_error("Tensor::prefix: " + shape_str(shape) + " exceeds " + shape_str(shape_));
  return Tensor(buffer_, data_, std::move(shape), dtype_, device_);
}

void expect_shape(const Tensor& t, const Shape& shape, const char* what) {
  if (t.shape() != shape)
    throw std::runtime_error(std::string(what) + ": expected shape " + shape_str(shape) + ", got " +
                             shape_str(t.shape()));
}

}  // namespace sy
