// The CUDA backend: enqueues the kernels of model/cuda/*.cu on the backend's stream. The ops'
// contracts (the mixed-precision rules of backend.h) are checked before these run
// (model/op_checks.cpp); here only what the device adds: i32 limits and aliasing rules of its
// kernels, and that q and k differ for the joint rotary launch (router_plan's own limits are
// checked beside its kernels, in router.cu).
//
// Host synchronisations (everything else is asynchronous on the stream):
//   read, read_i32, copy_to_host       the data must reach the host
//   sum_squares, sum_squares_many      the norms are returned on the host (one sync per call)
//   router_plan                        the kept counts per expert (the exchange needs them), the
//                                      reroute count and the choices per expert, in one copy
//   router_losses                      aux, z and the entropy are returned on the host
//                                      (router_losses_into, which training uses, does not wait)
//   synchronize                        on request
// Memory (device_memory.h), the per-op profile (profiler.h) and device discovery (device.h) live
// in their own files; this one holds the backend class and its ops.
#include <cstdio>
#include <string>
#include <utility>

#include "model/cuda/cuda_backend.h"
#include "model/cuda/device_memory.h"
#include "model/cuda/env_choice.h"
#include "model/cuda/kernels.h"
#include "model/cuda/profiler.h"
#include "model/op_checks.h"

namespace sy {
namespace {

using cuda::Context;

// ---- the backend ----------------------------------------------------------------------------
class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, int rank) {
    ctx_.device = device;
    ctx_.rank = rank;
    SY_CUDA(ctx_, "init", cudaSetDevice(device));
    SY_CUDA(ctx_, "init", cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking));
    SY_CUBLAS(ctx_, "init", cublasCreate(&ctx_.cublas));
    SY_CUBLAS(ctx_, "init", cublasSetStream(ctx_.cublas, ctx_.stream));
    SY_CUBLAS(ctx_, "init", cublasSetMathMode(ctx_.cublas, CUBLAS_DEFAULT_MATH));  // no TF32
    // Bitwise repeatable GEMMs (docs/cuda.md, Determinism): no atomics in cuBLAS's reductions
    // (the default, stated here), one stream, and the fixed workspace below.
    SY_CUBLAS(ctx_, "init", cublasSetAtomicsMode(ctx_.cublas, CUBLAS_ATOMICS_NOT_ALLOWED));
    allocator_ = cuda::make_device_allocator(ctx_);
    ctx_.alloc = [this](const Shape& shape, DType dtype) { return alloc(shape, dtype); };
    ctx_.largest_cached_block = [this] { return allocator_->largest_cached_block(); };
    // cuBLAS's workspace from our allocator (after cublasSetStream, which resets it).
    // SY_CUBLAS_WORKSPACE_MIB (a measurement knob, default 32): 0 gives cuBLAS none, so that it
    // picks kernels that need no workspace (and issues no memset of it before a GEMM).
    const int64_t workspace_mib =
        cuda::env_whole_number("SY_CUBLAS_WORKSPACE_MIB", 1024, "MiB").value_or(32);
    const size_t workspace_bytes = static_cast<size_t>(workspace_mib) << 20;
    if (workspace_bytes > 0) {
      workspace_ = alloc({static_cast<int64_t>(workspace_bytes / 4)}, DType::i32);
      SY_CUBLAS(ctx_, "init", cublasSetWorkspace(ctx_.cublas, workspace_.data(), workspace_bytes));
    } else {
      SY_CUBLAS(ctx_, "init", cublasSetWorkspace(ctx_.cublas, nullptr, 0));
    }
    cudaDeviceProp prop{};
    SY_CUDA(ctx_, "init", cudaGetDeviceProperties(&prop, device));
    device_name_ = prop.name;
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(ctx_.stream);
    try {
      profile_.print(ctx_, name());
      const std::string shapes = adamw_shapes_.summary();
      if (profile_.enabled() && !shapes.empty())
        std::fprintf(stderr, "fused_adamw_step shapes: %s\n", shapes.c_str());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "SY_CUDA_PROFILE: %s\n", e.what());
    }
    cuda::cudnn_attention_release(ctx_);  // its handle is on ctx_.stream
    ctx_.scratch_slots.clear();
    rope_tables_.clear();
    workspace_ = Tensor();
    if (ctx_.cublas) cublasDestroy(ctx_.cublas);
    if (ctx_.pinned) cudaFreeHost(ctx_.pinned);
    allocator_->stream_closing();  // tensors that outlive the backend give their blocks back
    if (ctx_.stream) cudaStreamDestroy(ctx_.stream);
  }

  Device device() const override { return Device::cuda; }
  int device_index() const override { return ctx_.device; }
  std::string name() const override {
    return "cuda:" + std::to_string(ctx_.device) + " (" + device_name_ + ")";
  }
  std::string error_context(const char* op) const override { return cuda::where(ctx_, op); }
  size_t peak_memory_bytes() const override { return allocator_->peak_reserved(); }
  size_t available_memory_bytes() const override {
    size_t free_bytes = 0, total_bytes = 0;
    SY_CUDA(ctx_, "available_memory_bytes", cudaSetDevice(ctx_.device));
    SY_CUDA(ctx_, "available_memory_bytes", cudaMemGetInfo(&free_bytes, &total_bytes));
    return free_bytes + allocator_->reserved();
  }
  int64_t device_allocations() const { return allocator_->device_allocations(); }
  void profile_begin() { profile_.begin(ctx_); }
  std::unique_ptr<ProfileRegion> profile_region(const std::string& op) override {
    if (!profile_.enabled()) return nullptr;
    struct Region final : ProfileRegion {
      Region(cuda::OpProfile& profile, const cuda::Context& ctx, const std::string& op)
          : scope(profile, ctx, op) {}
      cuda::ProfileScope scope;
    };
    return std::make_unique<Region>(profile_, ctx_, op);
  }
  std::string profile_report(int64_t steps) {
    std::string report = profile_.report(ctx_, name(), steps);
    const std::string shapes = adamw_shapes_.summary();
    if (!report.empty() && !shapes.empty()) report += "fused_adamw_step shapes: " + shapes + "\n";
    return report;
  }
  void profile_step() override { profile_.count_step(); }
  void* native_stream() override { return ctx_.stream; }
  // Portable: locked for every context, so that the handle's unlock needs neither this backend
  // nor its device current (it may run after the backend is gone, or at exit, where an error
  // from a runtime being unloaded is ignored).
  std::shared_ptr<void> pin_host_memory(void* host, size_t bytes) override {
    if (bytes == 0) return nullptr;
    SY_CUDA(ctx_, "pin_host_memory", cudaSetDevice(ctx_.device));  // this thread's device
    const cudaError_t status = cudaHostRegister(host, bytes, cudaHostRegisterPortable);
    if (status != cudaSuccess) {
      cudaGetLastError();
      cuda::fail(ctx_, "pin_host_memory", "cudaHostRegister of " + std::to_string(bytes) +
                                              " bytes failed: " + cudaGetErrorString(status));
    }
    return std::shared_ptr<void>(host, [](void* p) {
      if (cudaHostUnregister(p) != cudaSuccess) cudaGetLastError();
    });
  }
  void synchronize() override { SY_CUDA(ctx_, "synchronize", cudaStreamSynchronize(ctx_.stream)); }
  void prefer_cudnn_attention(bool prefer) override { prefer_cudnn_attention_ = prefer; }
  void set_deterministic(bool deterministic) override { deterministic_ = deterministic; }
  // SY_CUDA_SPLIT_MASTERS=0 keeps f32 masters beside a separate bf16 copy (a measurement knob).
  bool splits_bf16_masters() const override { return !cuda::env_is("SY_CUDA_SPLIT_MASTERS", "0"); }
  // The kernel that ran this backend's latest grouped op: "sm90", "mma" or "cublas" (the loop).
  const std::string& grouped_kernel() const { return grouped_kernel_; }
  const std::string& attention_kernel() const { return attention_kernel_; }

 protected:
  // ---- memory ---------------------------------------------------------------------------------
  Tensor alloc_impl(const Shape& shape, DType dtype) override {
    return cuda::alloc_tensor(allocator_, shape, dtype);
  }

  void fill_impl(const Tensor& x, double value) override {
    SY_PROFILE("fill");
    cuda::fill(ctx_, x, value);
  }

  void copy_impl(const Tensor& dst, const Tensor& src) override {
    SY_PROFILE(std::string("copy ") + dtype_name(src.dtype()) + "->" + dtype_name(dst.dtype()));
    if (dst.data() == src.data() && dst.dtype() == src.dtype()) return;
    cuda::convert(ctx_, dst, src);
  }

  void write_impl(const Tensor& t, std::span<const float> h) override { write_host(t, h); }
  void write_impl(const Tensor& t, std::span<const double> h) override { write_host(t, h); }
  void write_impl(const Tensor& t, std::span<const int32_t> h) override { write_host(t, h); }

  std::vector<double> read_impl(const Tensor& src) override {
    SY_PROFILE("read");
    if (src.dtype() == DType::f32_split) return read_impl(as_f32(src));
    std::vector<double> out(src.numel());
    cuda::dispatch_all(src.dtype(), [&]<class T>(cuda::Tag<T>) {
      std::vector<T> staging(src.numel());
      read_bytes("read", staging.data(), src);
      for (size_t i = 0; i < staging.size(); ++i) out[i] = cuda::convert<double>(staging[i]);
    });
    return out;
  }

  std::vector<int32_t> read_i32_impl(const Tensor& src) override {
    std::vector<int32_t> out(src.numel());
    read_bytes("read_i32", out.data(), src);
    return out;
  }

  // Straight into `host` (not through ctx_.pinned_buffer and a memcpy): into memory locked by
  // pin_host_memory the copy is one DMA; into pageable memory the driver stages it through
  // bounce buffers of its own, which bounded checkpoint.async's snapshot on the H200 machine
  // (21.7 GB stalled the step 1.53 s, ~14 GB/s, where locked memory takes ~50 GB/s).
  void copy_to_host_impl(void* host, const Tensor& src) override {
    read_bytes("copy_to_host", host, src.dtype() == DType::f32_split ? as_f32(src) : src);
  }

  void copy_from_host_impl(const Tensor& dst, const void* host) override {
    if (dst.dtype() == DType::f32_split)  // host f32 (host_dtype), split on the device
      return through_f32(dst, false, [&](const Tensor& f32) { copy_from_host_impl(f32, host); });
    if (dst.nbytes())
      SY_CUDA(ctx_, "copy_from_host",
              cudaMemcpyAsync(dst.data(), host, dst.nbytes(), cudaMemcpyHostToDevice, ctx_.stream));
  }

  // ---- linear algebra -------------------------------------------------------------------------
  void gemm_impl(const Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
                 double alpha, double beta) override {
    SY_PROFILE(std::string("gemm ") + dtype_name(A.dtype()) + "->" + dtype_name(C.dtype()) + (trans_a ? " T" : " N") + (trans_b ? "T " : "N ") + shape_str({C.dim(0), C.dim(1), trans_a ? A.dim(0) : A.dim(1)}));
    cuda::gemm(ctx_, C, A, trans_a, B, trans_b, alpha, beta);
  }

  // ---- grouped GEMMs (grouped_gemm.cu): bf16 data on a grouped kernel, else the gemm loop ------
  void grouped_gemm_impl(const Tensor& C, const Tensor& A, const Tensor& B, bool trans_b,
                         std::span<const int64_t> rows_per_group, bool accumulate) override {
    const int64_t G = static_cast<int64_t>(rows_per_group.size()), M = A.dim(0), K = A.dim(1);
    const int64_t N = trans_b ? B.dim(1) : B.dim(2);
    OpCheck(*this, "grouped_gemm").fits_int(M, "M");  // the kernels' row offsets are i32
    cuda::GroupedGemmArgs args;
    args.kind = cuda::GroupedGemmKind::forward;
    args.trans_b = trans_b;
    fill_grouped_args(args, C, A, B, G, M, K, N, accumulate);
    if (!run_grouped("grouped_gemm", trans_b ? " NT " : " NN ", A.dtype(), args, rows_per_group))
      Backend::grouped_gemm_impl(C, A, B, trans_b, rows_per_group, accumulate);
  }

  // With `squares`, the Hopper kernel sums C's squares in its epilogue (grouped_gemm.h).
  bool grouped_gemm_wgrad_impl(const Tensor& C, const Tensor& A, const Tensor& B,
                               std::span<const int64_t> rows_per_group, bool accumulate,
                               Tensor* squares) override {
    const int64_t G = static_cast<int64_t>(rows_per_group.size()), M = A.dim(0), K = A.dim(1);
    const int64_t N = B.dim(1);
    OpCheck(*this, "grouped_gemm_wgrad").fits_int(M, "M");  // the kernels' row offsets are i32
    cuda::GroupedGemmArgs args;
    args.kind = cuda::GroupedGemmKind::wgrad;
    fill_grouped_args(args, C, A, B, G, M, K, N, accumulate);
    bool squares_written = false;
    args.squares = squares;
    args.squares_written = &squares_written;
    if (!run_grouped("grouped_gemm_wgrad", " TN ", A.dtype(), args, rows_per_group))
      return Backend::grouped_gemm_wgrad_impl(C, A, B, rows_per_group, accumulate, squares);
    return squares_written;
  }

  // One launch with both operand pairs on the Hopper kernel (C rounded once); elsewhere the two
  // grouped calls of the default.
  void grouped_gemm_pair_impl(const Tensor& C, const Tensor& A, const Tensor& B, const Tensor& A2,
                              const Tensor& B2, bool trans_b,
                              std::span<const int64_t> rows_per_group) override {
    const int64_t G = static_cast<int64_t>(rows_per_group.size()), M = A.dim(0), K = A.dim(1);
    const int64_t N = trans_b ? B.dim(1) : B.dim(2);
    OpCheck(*this, "grouped_gemm_pair").fits_int(M, "M");
    cuda::GroupedGemmArgs args;
    args.kind = cuda::GroupedGemmKind::forward;
    args.trans_b = trans_b;
    fill_grouped_args(args, C, A, B, G, M, K, N, false);
    args.A2 = A2.ptr<cuda::bf16>();
    args.B2 = B2.ptr<cuda::bf16>();
    args.K2 = A2.dim(1);
    if (!run_grouped("grouped_gemm_pair", trans_b ? " NT " : " NN ", A.dtype(), args,
                     rows_per_group))
      Backend::grouped_gemm_pair_impl(C, A, B, A2, B2, trans_b, rows_per_group);
  }

  void add_impl(const Tensor& y, const Tensor& x, double alpha) override {
    SY_PROFILE(std::string("add ") + dtype_name(y.dtype()) + "+=" + dtype_name(x.dtype()));
    cuda::add(ctx_, y, x, alpha);
  }

  void add_into_impl(const Tensor& out, const Tensor& a, const Tensor& b) override {
    {
      SY_PROFILE("add_into");
      if (cuda::add_into(ctx_, out, a, b)) return;
    }
    Backend::add_into_impl(out, a, b);
  }

  void scale_impl(const Tensor& y, double alpha) override {
    SY_PROFILE("scale");
    cuda::scale(ctx_, y, alpha);
  }

  double sum_squares_impl(const Tensor& x) override {
    double out = 0;
    sum_squares_many_impl(std::span<const Tensor>(&x, 1), std::span<double>(&out, 1));
    return out;
  }

  void sum_squares_many_impl(std::span<const Tensor> xs, std::span<double> out) override {
    SY_PROFILE("sum_squares_many");
    if (xs.empty()) return;
    double* results =
        static_cast<double*>(ctx_.scratch(cuda::kScratchB, xs.size() * sizeof(double)));
    cuda::sum_squares(ctx_, xs, results);
    cuda::to_host_sync(ctx_, "sum_squares", out.data(), results, xs.size() * sizeof(double));
  }

  // ---- embedding ------------------------------------------------------------------------------
  void embedding_forward_impl(const Tensor& out, const Tensor& tokens,
                              const Tensor& table) override {
    SY_PROFILE("embedding_forward");
    cuda::embedding_forward(ctx_, out, tokens, table);
  }

  void embedding_backward_impl(const Tensor& dtable, const Tensor& dout,
                               const Tensor& tokens) override {
    SY_PROFILE("embedding_backward");
    cuda::embedding_backward(ctx_, dtable, dout, tokens);
  }

  // ---- RMSNorm --------------------------------------------------------------------------------
  void rmsnorm_forward_impl(const Tensor& out, const Tensor& rstd, const Tensor& x,
                            const Tensor& gain, double eps) override {
    SY_PROFILE("rmsnorm_forward");
    cuda::rmsnorm_forward(ctx_, out, rstd, x, gain, eps);
  }

  void add_rmsnorm_forward_impl(const Tensor& sum, const Tensor& out, const Tensor& rstd,
                                const Tensor& a, const Tensor& b, const Tensor& gain,
                                double eps) override {
    {
      SY_PROFILE("add_rmsnorm_forward");
      if (cuda::add_rmsnorm_forward(ctx_, sum, out, rstd, a, b, gain, eps)) return;
    }
    Backend::add_rmsnorm_forward_impl(sum, out, rstd, a, b, gain, eps);
  }

  void rmsnorm_backward_impl(const Tensor& dx, const Tensor& dgain, const Tensor& dout,
                             const Tensor& x, const Tensor& gain, const Tensor& rstd,
                             bool accumulate) override {
    SY_PROFILE("rmsnorm_backward");
    cuda::rmsnorm_backward(ctx_, dx, dgain, dout, x, gain, rstd, accumulate);
  }

  // ---- attention ------------------------------------------------------------------------------
  void rope_forward_impl(const Tensor& x, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
                         const Tensor& doc_start, int64_t first_position) override {
    rope("rope_forward", x, B, S, H, rotary, +1, doc_start, first_position);
  }

  void rope_backward_impl(const Tensor& dx, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
                          const Tensor& doc_start) override {
    rope("rope_backward", dx, B, S, H, rotary, -1, doc_start);
  }

  void repeat_kv_heads_impl(const Tensor& out, const Tensor& x, int64_t kv_heads) override {
    SY_PROFILE("repeat_kv_heads");
    cuda::repeat_kv_heads(ctx_, out, x, kv_heads);
  }

  void repeat_kv_heads_backward_impl(const Tensor& dx, const Tensor& dout,
                                     int64_t kv_heads) override {
    SY_PROFILE("repeat_kv_heads_backward");
    cuda::repeat_kv_heads_backward(ctx_, dx, dout, kv_heads);
  }

  void rope_forward_qk_impl(const Tensor& q, const Tensor& k, int64_t B, int64_t S, int64_t H,
                            const Rotary& rotary, const Tensor& doc_start,
                            int64_t first_position) override {
    rope_qk("rope_forward", q, k, B, S, H, rotary, +1, doc_start, first_position);
  }

  void rope_backward_qk_impl(const Tensor& dq, const Tensor& dk, int64_t B, int64_t S, int64_t H,
                             const Rotary& rotary, const Tensor& doc_start) override {
    rope_qk("rope_backward", dq, dk, B, S, H, rotary, -1, doc_start);
  }

  void attention_forward_impl(const Tensor& out, const Tensor& probs, const Tensor& q,
                              const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                              const Tensor& doc_start) override {
    SY_PROFILE("attention_forward");
    cuda::attention_forward(ctx_, out, probs, q, k, v, B, S, H, starts(doc_start));
  }

  void attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                               const Tensor& dout, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& probs, int64_t B, int64_t S,
                               int64_t H) override {
    SY_PROFILE("attention_backward");
    cuda::attention_backward(ctx_, dq, dk, dv, dout, q, k, v, probs, B, S, H);
  }

  void attention_decode_impl(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                             int64_t H, int64_t first_position) override {
    SY_PROFILE("attention_decode");
    OpCheck(*this, "attention_decode").fits_int(q.dim(0) * H, "n*H");
    cuda::attention_decode(ctx_, out, q, k, v, H, first_position);
  }

  // With documents, cuDNN is asked only when they come listed (its ragged layout needs the
  // list, which the device cannot read back from doc_start without a copy) and
  // SY_CUDNN_DOCUMENTS is not 0 (listed_documents); otherwise the flash kernels run, and
  // attention_kernel_ says why ("flash: document masking").
  void flash_attention_forward_impl(const Tensor& out, const Tensor& lse, const Tensor& q,
                                    const Tensor& k, const Tensor& v, int64_t B, int64_t S,
                                    int64_t H, const Tensor& doc_start,
                                    const DocumentList& documents) override {
    SY_PROFILE("flash_attention_forward");
    OpCheck(*this, "flash_attention_forward").fits_int(B * S * H, "B*S*H");
    const bool masked = doc_start.defined();
    const cuda::ListedDocuments listed = listed_documents(documents);
    if (prefer_cudnn_attention_ && (!masked || listed.offsets) &&
        cuda::cudnn_attention_forward(ctx_, out, lse, q, k, v, B, S, H, masked ? &listed : nullptr,
                                      &attention_kernel_)) {
      attention_kernel_ = masked ? kCudnnDocuments : "cudnn";
      return;
    }
    if (masked && !listed.offsets) attention_kernel_ = kDocumentMasking;
    cuda::flash_attention_forward(ctx_, out, lse, q, k, v, B, S, H, starts(doc_start));
    attention_kernel_ = prefer_cudnn_attention_ ? "flash: " + attention_kernel_ : "flash";
  }

  void flash_attention_backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                     const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& out, const Tensor& lse,
                                     int64_t B, int64_t S, int64_t H, const Tensor& doc_start,
                                     const DocumentList& documents) override {
    SY_PROFILE("flash_attention_backward");
    const OpCheck c(*this, "flash_attention_backward");
    c.fits_int(B * S * H, "B*S*H");
    // The kernels write the gradients while they still read the inputs.
    for (auto [t, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}})
      for (const Tensor* in : {&dout, &q, &k, &v, &out})
        if (overlaps(*t, *in)) c.fail(std::string(name) + " overlaps an input");
    // Without run.deterministic, cuDNN's dQ-accumulating form first; where cuDNN declines it
    // (documents: always), the deterministic form, then our kernels. With documents unlisted, our
    // kernels only.
    const bool masked = doc_start.defined();
    const cuda::ListedDocuments listed = listed_documents(documents);
    const cuda::ListedDocuments* docs = masked ? &listed : nullptr;
    const bool cudnn = prefer_cudnn_attention_ && (!masked || listed.offsets);
    if (cudnn && !deterministic_ &&
        cuda::cudnn_attention_backward(ctx_, dq, dk, dv, dout, q, k, v, out, lse, B, S, H, false,
                                       docs, &attention_kernel_)) {
      attention_kernel_ = "cudnn nondeterministic";
      return;
    }
    if (cudnn && cuda::cudnn_attention_backward(ctx_, dq, dk, dv, dout, q, k, v, out, lse, B, S, H,
                                                true, docs, &attention_kernel_)) {
      attention_kernel_ = masked ? kCudnnDocuments : "cudnn";
      return;
    }
    if (masked && !listed.offsets) attention_kernel_ = kDocumentMasking;
    cuda::flash_attention_backward(ctx_, dq, dk, dv, dout, q, k, v, out, lse, B, S, H,
                                   starts(doc_start));
    attention_kernel_ = prefer_cudnn_attention_ ? "flash: " + attention_kernel_ : "flash";
  }

  // ---- SwiGLU ---------------------------------------------------------------------------------
  void swiglu_forward_impl(const Tensor& out, const Tensor& a, const Tensor& b) override {
    SY_PROFILE("swiglu_forward");
    cuda::swiglu_forward(ctx_, out, a, b);
  }

  void swiglu_backward_impl(const Tensor& da, const Tensor& db, const Tensor& dout,
                            const Tensor& a, const Tensor& b, const Tensor& hidden) override {
    SY_PROFILE("swiglu_backward");
    cuda::swiglu_backward(ctx_, da, db, dout, a, b, hidden);
  }

  // ---- cross-entropy --------------------------------------------------------------------------
  void cross_entropy_impl(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                          bool compute_grad, double grad_scale) override {
    SY_PROFILE("cross_entropy");
    cuda::cross_entropy(ctx_, losses, logits, targets, compute_grad, grad_scale);
  }

  void cross_entropy_into_impl(const Tensor& losses, const Tensor& logits, const Tensor& targets,
                               double grad_scale, const Tensor& dlogits) override {
    {
      SY_PROFILE("cross_entropy");
      if (cuda::cross_entropy_into(ctx_, losses, logits, targets, grad_scale, dlogits)) return;
    }
    Backend::cross_entropy_into_impl(losses, logits, targets, grad_scale, dlogits);
  }

  // ---- router ---------------------------------------------------------------------------------
 public:
  // The router's projection (router_projection.cu): f32 w with bf16 or f32 rows in one pass
  // each way; anything else (f64 checks, w too large to stage) runs the reference path, the
  // default, which checks the contract again.
  void router_logits(const Tensor& logits, const Tensor& u, const Tensor& w) override {
    SY_PROFILE("router_logits");
    check_router_logits(*this, logits, u, w);
    OpCheck(*this, "router_logits").fits_int(w.dim(0) * w.dim(1), "D*E");
    if (!cuda::router_logits(ctx_, logits, u, w)) Backend::router_logits(logits, u, w);
  }

  void router_logits_backward(const Tensor& dw, const Tensor& du, const Tensor& dlogits,
                              const Tensor& u, const Tensor& w, double dw_beta) override {
    SY_PROFILE("router_logits_backward");
    check_router_logits_backward(*this, dw, du, dlogits, u, w);
    OpCheck(*this, "router_logits_backward").fits_int(w.dim(0) * w.dim(1), "D*E");
    if (!cuda::router_logits_backward(ctx_, dw, du, dlogits, u, w, dw_beta))
      Backend::router_logits_backward(dw, du, dlogits, u, w, dw_beta);
  }

  void router_input_grad(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row, int64_t K,
                         const Tensor& dlogits, const Tensor& w) override {
    SY_PROFILE("router_input_grad");
    check_router_input_grad(*this, dx, dx_perm, slot_row, K, dlogits, w);
    OpCheck(*this, "router_input_grad").fits_int(w.dim(0) * w.dim(1), "D*E");
    if (!cuda::router_input_grad(ctx_, dx, dx_perm, slot_row, K, dlogits, w))
      Backend::router_input_grad(dx, dx_perm, slot_row, K, dlogits, w);
  }

 protected:

  void router_scores_topk_impl(const Tensor& scores, const Tensor& lse, const Tensor& topk_idx,
                               const Tensor& gates, const Tensor& logits,
                               const Tensor& expert_bias, const RoutingRule& rule) override {
    SY_PROFILE("router_scores_topk");
    cuda::router_scores_topk(ctx_, scores, lse, topk_idx, gates, logits, expert_bias, rule);
  }

  // router.cu: the device's checks, the plan, and one host synchronisation for the counts (in
  // finish; router_plan is start then finish).
  RouterPlanCounts router_plan_impl(const Tensor& slot_row, const Tensor& slot_expert,
                                    const Tensor& assignments_per_expert, const Tensor& topk_idx,
                                    const Tensor& gates, const Tensor& logits,
                                    const Tensor& expert_bias, const RoutingRule& rule) override {
    router_plan_start_impl(slot_row, slot_expert, assignments_per_expert, topk_idx, gates, logits,
                           expert_bias, rule);
    return router_plan_finish_impl();
  }
  void router_plan_start_impl(const Tensor& slot_row, const Tensor& slot_expert,
                              const Tensor& assignments_per_expert, const Tensor& topk_idx,
                              const Tensor& gates, const Tensor& logits, const Tensor& expert_bias,
                              const RoutingRule& rule) override {
    SY_PROFILE("router_plan");
    cuda::router_plan_start(ctx_, OpCheck(*this, "router_plan"), plan_copy_, slot_row, slot_expert,
                            assignments_per_expert, topk_idx, gates, logits, expert_bias, rule);
    plan_experts_ = logits.dim(1);
  }
  RouterPlanCounts router_plan_finish_impl() override {
    SY_PROFILE("router_plan_finish");
    return cuda::router_plan_finish(ctx_, plan_copy_, plan_experts_);
  }

  // router.cu: one host synchronisation for aux, z and the entropy.
  RouterLossValues router_losses_impl(const Tensor& scores, const Tensor& lse,
                                      const Tensor& balance_counts,
                                      const RoutingRule& rule) override {
    SY_PROFILE("router_losses");
    return cuda::router_losses(ctx_, scores, lse, balance_counts, rule);
  }
  void router_losses_into_impl(const Tensor& out, const Tensor& scores, const Tensor& lse,
                               const Tensor& balance_counts, const RoutingRule& rule) override {
    SY_PROFILE("router_losses");
    cuda::router_losses_into(ctx_, out, scores, lse, balance_counts, rule);
  }

  void router_backward_impl(const Tensor& dlogits, const Tensor& dgates, const Tensor& scores,
                            const Tensor& lse, const Tensor& logits, const Tensor& topk_idx,
                            const Tensor& balance_counts, const RoutingRule& rule, double d_aux,
                            double d_z) override {
    SY_PROFILE("router_backward");
    cuda::router_backward(ctx_, dlogits, dgates, scores, lse, logits, topk_idx, balance_counts,
                          rule, d_aux, d_z);
  }

  // ---- permute / unpermute --------------------------------------------------------------------
  void permute_rows_impl(const Tensor& x_perm, const Tensor& x, const Tensor& slot_row,
                         int64_t K) override {
    SY_PROFILE("permute_rows");
    cuda::permute_rows(ctx_, x_perm, x, slot_row, K);
  }

  void permute_rows_backward_impl(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row,
                                  int64_t K) override {
    SY_PROFILE("permute_rows_backward");
    cuda::permute_rows_backward(ctx_, dx, dx_perm, slot_row, K);
  }

  void unpermute_combine_impl(const Tensor& out, const Tensor& y_perm, const Tensor& gates,
                              const Tensor& slot_row) override {
    SY_PROFILE("unpermute_combine");
    cuda::unpermute_combine(ctx_, out, y_perm, gates, slot_row);
  }

  void unpermute_combine_backward_impl(const Tensor& dy_perm, const Tensor& dgates,
                                       const Tensor& dout, const Tensor& y_perm,
                                       const Tensor& gates, const Tensor& slot_row) override {
    SY_PROFILE("unpermute_combine_backward");
    cuda::unpermute_combine_backward(ctx_, dy_perm, dgates, dout, y_perm, gates, slot_row);
  }

  // ---- optimizer ------------------------------------------------------------------------------
  void adamw_update_impl(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                         const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                         double eps, double weight_decay, int64_t step) override {
    SY_PROFILE("adamw_update");
    // An f32_split master is updated as f32 and split again: the same bits as the fused pass.
    through_f32(param, true, [&](const Tensor& value) {
      cuda::adamw_update(ctx_, value, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps,
                         weight_decay, step);
    });
  }

  void sgd_update_impl(const Tensor& param, const Tensor& grad, double lr) override {
    SY_PROFILE("sgd_update");
    through_f32(param, true, [&](const Tensor& value) { cuda::sgd_update(ctx_, value, grad, lr); });
  }

 public:
  // ---- the fused optimizer pass (adamw.cu): f32 masters in one launch, else per tensor -------
  void grad_norm_squares(std::span<Param* const> params, double& shared, double& expert) override {
    SY_PROFILE("grad_norm_squares");
    if (!cuda::grad_norm_squares(ctx_, norm_table_, params, OpCheck(*this, "grad_norm_squares"),
                                 shared, expert))
      Backend::grad_norm_squares(params, shared, expert);
  }

  void fused_adamw_step(std::span<Param* const> params, std::span<const Tensor> exp_avgs,
                        std::span<const Tensor> exp_avg_sqs, const AdamWStep& hp) override {
    SY_PROFILE("fused_adamw_step");
    if (!cuda::fused_adamw_step(ctx_, adamw_table_, adamw_shapes_, params, exp_avgs, exp_avg_sqs,
                                hp, OpCheck(*this, "fused_adamw_step")))
      Backend::fused_adamw_step(params, exp_avgs, exp_avg_sqs, hp);
  }

 private:
  template <class H>
  void write_host(const Tensor& dst, std::span<const H> host) {
    SY_PROFILE("write");
    if (host.empty()) return;
    if (dst.dtype() == DType::f32_split)
      return through_f32(dst, false, [&](const Tensor& f32) { write_host(f32, host); });
    cuda::dispatch_all(dst.dtype(), [&]<class T>(cuda::Tag<T>) {
      if constexpr (std::is_same_v<T, H>) {
        SY_CUDA(ctx_, "write",
                cudaMemcpyAsync(dst.data(), host.data(), dst.nbytes(), cudaMemcpyHostToDevice,
                                ctx_.stream));
      } else {
        std::vector<T> staging(host.size());
        for (size_t i = 0; i < host.size(); ++i) staging[i] = cuda::convert<T>(host[i]);
        // From pageable memory: the copy has taken the bytes when it returns.
        SY_CUDA(ctx_, "write",
                cudaMemcpyAsync(dst.data(), staging.data(), dst.nbytes(), cudaMemcpyHostToDevice,
                                ctx_.stream));
      }
    });
  }

  // An f32_split tensor's values as a new f32 tensor (enqueued; the caller reads it).
  Tensor as_f32(const Tensor& src) {
    const Tensor joined = alloc(src.shape(), DType::f32);
    cuda::convert(ctx_, joined, src);
    return joined;
  }

  // `op` writes x as f32 (updates it, with `update`): an f32_split x through an f32 tensor, split
  // back afterwards (that tensor holds x's values first only for an update); any other x directly.
  template <class Op>
  void through_f32(const Tensor& x, bool update, Op&& op) {
    if (x.dtype() != DType::f32_split) return op(x);
    const Tensor value = update ? as_f32(x) : alloc(x.shape(), DType::f32);
    op(value);
    cuda::convert(ctx_, x, value);
  }

  void read_bytes(const char* op, void* host, const Tensor& src) {
    if (src.nbytes() == 0) return;
    SY_CUDA(ctx_, op,
            cudaMemcpyAsync(host, src.data(), src.nbytes(), cudaMemcpyDeviceToHost, ctx_.stream));
    SY_CUDA(ctx_, op, cudaStreamSynchronize(ctx_.stream));
  }

  void rope(const char* op, const Tensor& x, int64_t B, int64_t S, int64_t H, const Rotary& rotary,
            int sign, const Tensor& doc_start, int64_t first_position = 0) {
    SY_PROFILE(op);
    const auto [cos, sin] =
        rope_rows(S, x.dim(1) / H, rotary, stat_dtype(x.dtype()), first_position);
    cuda::rope(ctx_, x, cos, sin, B, S, H, sign, starts(doc_start));
  }

  // One launch for both: the kernel reads q's and k's rows together, so they must differ.
  void rope_qk(const char* op, const Tensor& q, const Tensor& k, int64_t B, int64_t S, int64_t H,
               const Rotary& rotary, int sign, const Tensor& doc_start,
               int64_t first_position = 0) {
    SY_PROFILE(op);
    if (q.numel() > 0 && q.data() == k.data())
      OpCheck(*this, op).fail("q and k are the same tensor");
    const auto [cos, sin] =
        rope_rows(S, q.dim(1) / H, rotary, stat_dtype(q.dtype()), first_position);
    cuda::rope(ctx_, q, k, cos, sin, B, S, H, sign, starts(doc_start));
  }

  // The cos/sin rows of positions first_position .. first_position + S - 1: the kernels take
  // position s at row s, so a later start is a view further into a longer table.
  std::pair<Tensor, Tensor> rope_rows(int64_t S, int64_t Dh, const Rotary& rotary, DType dtype,
                                      int64_t first_position) {
    const auto& [cos, sin] =
        rope_tables_.get(ctx_, rope_table_rows(first_position, S), Dh, rotary, dtype);
    if (first_position == 0) return {cos, sin};
    return {cos.rows(first_position, first_position + S),
            sin.rows(first_position, first_position + S)};
  }

  // The DocumentList as cudnn_attention takes it; null offsets when not listed, or with
  // SY_CUDNN_DOCUMENTS=0 (the flash kernels for documents, to compare: docs/cuda.md).
  static cuda::ListedDocuments listed_documents(const DocumentList& documents) {
    if (!documents.offsets.defined() || cuda::env_is("SY_CUDNN_DOCUMENTS", "0")) return {};
    return {documents.offsets.ptr<int32_t>(), documents.offsets.numel() - 1, documents.longest};
  }

  // Document masking's doc_start for the kernels: null when undefined (no documents). Its
  // values are trusted (checking them would cost a copy to the host; backend.h).
  static const int32_t* starts(const Tensor& doc_start) {
    return doc_start.defined() ? doc_start.ptr<int32_t>() : nullptr;
  }
  static constexpr const char* kDocumentMasking = "document masking";
  static constexpr const char* kCudnnDocuments = "cudnn documents";

  Context ctx_;
  cuda::OpProfile profile_;
  std::shared_ptr<cuda::DeviceAllocator> allocator_;
  Tensor workspace_;
  std::string device_name_;
  cuda::RopeTables rope_tables_;
  // The chunk tables of the fused optimizer pass, rebuilt only when the parameter list changes.
  cuda::MultiTensorTable norm_table_, adamw_table_;
  cuda::UpdateShapeTuner adamw_shapes_;  // the update's launch shape on this GPU
  cuda::HostCopy plan_copy_;  // the router plan's counts, router_plan_start to finish
  int64_t plan_experts_ = 0;

  // ---- grouped GEMMs ----------------------------------------------------------------------------
  static void fill_grouped_args(cuda::GroupedGemmArgs& args, const Tensor& C, const Tensor& A,
                                const Tensor& B, int64_t G, int64_t M, int64_t K, int64_t N,
                                bool accumulate) {
    args.accumulate = accumulate;
    args.groups = G;
    args.M_total = M;
    args.K = K;
    args.N = N;
    args.A = A.ptr<cuda::bf16>();
    args.B = B.ptr<cuda::bf16>();
    args.C = C.data();
    args.c_dtype = C.dtype();
  }

  // Tries the grouped kernels (bf16 data only); false when the caller must run the gemm loop.
  bool run_grouped(const char* op, const char* form, DType data, cuda::GroupedGemmArgs& args,
                   std::span<const int64_t> rows) {
    grouped_kernel_ = "cublas";
    if (data != DType::bf16 || args.groups == 0) return false;
    SY_PROFILE(std::string(op) + " bf16->" + dtype_name(args.c_dtype) + form +
               shape_str({args.groups, args.M_total, args.N, args.K}));
    const char* kernel = cuda::run_grouped_gemm(ctx_, grouped_choice_, segment_offsets_, args, rows);
    if (!kernel) return false;
    grouped_kernel_ = kernel;
    return true;
  }

  // SY_GROUPED_GEMM (docs/cuda.md), read once.
  cuda::GroupedGemmChoice grouped_choice_ = cuda::grouped_gemm_choice_from_env();
  cuda::SegmentOffsets segment_offsets_;
  std::string grouped_kernel_;
  // Backend::prefer_cudnn_attention, and what ran the latest flash_attention op: "cudnn",
  // "flash", or "flash: <why cuDNN declined>".
  bool prefer_cudnn_attention_ = false;
  bool deterministic_ = true;  // Backend::set_deterministic
  std::string attention_kernel_;
};

}  // namespace

int64_t cuda_device_allocations(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->device_allocations() : -1;
}

std::string cuda_grouped_gemm_kernel(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->grouped_kernel() : std::string();
}

std::string cuda_attention_kernel(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->attention_kernel() : std::string();
}

void cuda_profile_begin(Backend& backend) {
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) cuda->profile_begin();
}

std::string cuda_profile_report(Backend& backend, int64_t steps) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda ? cuda->profile_report(steps) : std::string();
}


std::unique_ptr<Backend> make_cuda_backend(int device, int rank) {
  const int count = cuda_device_count();
  if (count == 0)
    throw std::runtime_error("run.backend: cuda: no CUDA device is visible to rank " +
                             std::to_string(rank));
  if (device < 0 || device >= count)
    throw std::runtime_error("run.backend: cuda: device " + std::to_string(device) +
                             " does not exist (" + std::to_string(count) + " visible)");
  return std::make_unique<CudaBackend>(device, rank);
}

}  // namespace sy
