// The CPU reference backend (cpu_backend.h): what is not an op (memory, host transfers) and the
// checks that the CPU adds to the ops' contracts. The ops sit in model/cpu/<family>.cpp, kernels
// beside CpuBackend::<op>_impl.
#include "model/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "model/cpu/common.h"
#include "model/documents.h"

namespace sy {
namespace cpu {

DType host_float(const OpCheck& c, const Tensor& t, const char* name) {
  if (t.dtype() == DType::bf16) throw std::runtime_error("cpu backend: bf16 not supported");
  if (t.dtype() != DType::f32 && t.dtype() != DType::f64)
    c.fail(std::string(name) + " must be f32 or f64, got " + dtype_name(t.dtype()));
  return t.dtype();
}

void index_range(const OpCheck& c, const Tensor& idx, int64_t n, int64_t lo, int64_t hi,
                 const char* name) {
  const int32_t* p = idx.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < lo || p[i] >= hi)
      c.fail(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
             " out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
}

void fits_blas(const OpCheck& c, std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) c.fits_int(d, "dimension");
}

const int32_t* checked_doc_start(const OpCheck& c, const Tensor& doc_start, int64_t B, int64_t S) {
  if (!doc_start.defined()) return nullptr;
  const int32_t* starts = doc_start.ptr<int32_t>();
  for (int64_t t = 0; t < B * S; ++t) {
    const int64_t s = t % S, start = starts[t];
    const bool continues = s > 0 && start == starts[t - 1];
    if (start < 0 || start > s || (start != s && !continues))
      c.fail("doc_start[" + std::to_string(t) + "] = " + std::to_string(start) +
             " is not a document start for position " + std::to_string(s));
  }
  return starts;
}

void check_documents_listed(const OpCheck& c, const DocumentList& documents, const int32_t* starts,
                            int64_t B, int64_t S) {
  if (!documents.offsets.defined()) return;
  const DocumentRows list = list_documents(std::span<const int32_t>(starts, B * S), S);
  const std::span<const int32_t> listed(documents.offsets.ptr<int32_t>(),
                                        documents.offsets.numel());
  if (!std::ranges::equal(listed, list.offsets) || documents.longest != list.longest)
    c.fail("documents listed (" + std::to_string(listed.size() - 1) + ", the longest " +
           std::to_string(documents.longest) + " tokens) are not doc_start's (" +
           std::to_string(list.offsets.size() - 1) + ", the longest " +
           std::to_string(list.longest) + ")");
}

}  // namespace cpu

Tensor CpuBackend::alloc_impl(const Shape& shape, DType dtype) {
  if (dtype == DType::bf16 || dtype == DType::f32_split)  // splits_bf16_masters() is false here
    throw std::runtime_error(std::string("cpu backend: ") + dtype_name(dtype) + " not supported");
  constexpr size_t kAlign = 64;
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  const size_t rounded = std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  void* data = std::aligned_alloc(kAlign, rounded);
  if (!data)
    OpCheck(*this, "alloc").fail("out of memory allocating " + std::to_string(bytes) + " bytes");
  if (poison_) std::memset(data, 0xFF, rounded);
  const size_t peak = memory_->live.fetch_add(rounded) + rounded;
  for (size_t seen = memory_->peak; seen < peak;)
    if (memory_->peak.compare_exchange_weak(seen, peak)) break;
  std::shared_ptr<void> buffer(data, [memory = memory_, rounded](void* p) {
    memory->live -= rounded;
    std::free(p);
  });
  return Tensor(std::move(buffer), data, shape, dtype, Device::cpu);
}

template <class H>
void CpuBackend::write_host(const Tensor& dst, std::span<const H> host) {
  cpu::dispatch_any(dst.dtype(), [&]<class T>(T) {
    cpu::convert(dst.ptr<T>(), host.data(), dst.numel());
  });
}

std::vector<double> CpuBackend::read_impl(const Tensor& src) {
  std::vector<double> out(src.numel());
  cpu::dispatch_any(src.dtype(), [&]<class T>(T) {
    cpu::convert(out.data(), src.ptr<T>(), src.numel());
  });
  return out;
}

void CpuBackend::copy_to_host_impl(void* host, const Tensor& src) {
  if (src.nbytes()) std::memcpy(host, src.data(), src.nbytes());
}

void CpuBackend::copy_from_host_impl(const Tensor& dst, const void* host) {
  if (dst.nbytes()) std::memcpy(dst.data(), host, dst.nbytes());
}

std::vector<int32_t> CpuBackend::read_i32_impl(const Tensor& src) {
  const int32_t* p = src.ptr<int32_t>();
  return std::vector<int32_t>(p, p + src.numel());
}

void CpuBackend::write_impl(const Tensor& t, std::span<const float> h) { write_host(t, h); }
void CpuBackend::write_impl(const Tensor& t, std::span<const double> h) { write_host(t, h); }
void CpuBackend::write_impl(const Tensor& t, std::span<const int32_t> h) { write_host(t, h); }

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace sy
