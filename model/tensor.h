// Tensor: a shape, a dtype, a device and a (shared) owning buffer.
// Tensors are row-major and contiguous; a view shares its parent's buffer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sy {

// f32_split: f32 values held as two planes of 16-bit halves (model/split_float.h), the bf16 high
// halves first (Tensor::high_half, what the GEMMs read) and the low halves numel elements later.
// The CUDA backend's master weights in bf16 training; read, written and copied to or from the
// host, such a tensor looks like f32 (host_dtype).
enum class DType : uint8_t { f32, f64, bf16, i32, f32_split };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

// Mixed precision: the dtype of statistics (rstd, lse, losses, router tensors, gates) and of
// master-side tensors (norm gains, parameter gradients) that go with data of `dtype`: f32 for
// bf16 data, the data's own dtype otherwise.
inline DType stat_dtype(DType dtype) { return dtype == DType::bf16 ? DType::f32 : dtype; }

// The dtype of a tensor's elements on the host (Backend::read, copy_to_host, copy_from_host):
// f32 for f32_split, the dtype itself otherwise.
inline DType host_dtype(DType dtype) { return dtype == DType::f32_split ? DType::f32 : dtype; }

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // low_plane: f32_split only, the distance in 16-bit halves from an element's high half to its
  // low half (the numel of the allocation; a view of rows keeps it).
  Tensor(std::shared_ptr<void> buffer, void* data, Shape shape, DType dtype, Device device,
         int64_t low_plane = 0)
      : buffer_(std::move(buffer)),
        data_(data),
        shape_(std::move(shape)),
        dtype_(dtype),
        device_(device),
        low_plane_(low_plane) {}

  bool defined() const { return data_ != nullptr || !shape_.empty(); }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return numel() * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  void* data() const { return data_; }
  template <class T> T* ptr() const { return static_cast<T*>(data_); }

  // f32_split only: the high halves as a bf16 tensor sharing the buffer (the compute copy), and
  // the low halves' first element.
  Tensor high_half() const;
  uint16_t* low_half_bits() const;

  // Rows [begin, end) of the leading axis, sharing the buffer.
  Tensor rows(int64_t begin, int64_t end) const;
  // Same buffer, new shape with the same number of elements.
  Tensor reshape(Shape shape) const;
  // The first numel(shape) elements, as a tensor of `shape` (for buffers sized for the worst case).
  Tensor prefix(Shape shape) const;

 private:
  std::shared_ptr<void> buffer_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  int64_t low_plane_ = 0;
};

// Throws std::runtime_error("<what>: expected ..., got ...") unless t has this shape.
void expect_shape(const Tensor& t, const Shape& shape, const char* what);
// The same with <what> = what_head + what_tail, joined only on a mismatch (callers checking
// every tensor of every step name each by its path).
void expect_shape(const Tensor& t, const Shape& shape, std::string_view what_head,
                  std::string_view what_tail);

}  // namespace sy
