// 16-byte vector access for the bandwidth-bound bf16 kernels: 8 bf16 per uint4, widened to f32
// on load and rounded back (round-to-nearest-even, as convert<bf16>(float) does) on store, so a
// vectorised kernel computes exactly what its per-element twin does.
#pragma once
#include <cstdint>

#include "model/cuda/common.cuh"

namespace sy::cuda {

constexpr int kVec = 8;  // bf16 per 16-byte access

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class... P>
inline bool all_aligned16(const P*... p) {
  return (aligned16(p) && ...);
}

__device__ inline void unpack8(uint4 raw, float (&f)[kVec]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

__device__ inline uint4 pack8(const float (&f)[kVec]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return raw;
}

// p must be 16-byte aligned.
__device__ inline uint4 load_raw8(const bf16* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ inline void load8(const bf16* p, float (&f)[kVec]) { unpack8(load_raw8(p), f); }
__device__ inline void store8(bf16* p, const float (&f)[kVec]) {
  *reinterpret_cast<uint4*>(p) = pack8(f);
}
// 8 consecutive floats as two 16-byte accesses (p 16-byte aligned).
__device__ inline void load8(const float* p, float (&f)[kVec]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
  f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ inline void store8(float* p, const float (&f)[kVec]) {
  *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}

}  // namespace sy::cuda
