// Flash attention (FlashAttention-2): causal softmax attention without an [S, S] matrix.
// Contract in model/backend.h; design, FLOP counts and the predicted times in
// model/cuda/NOTES-attention.md.
//
// bf16 with Dh 64 or 128 (the training fast path) runs on tensor cores: mma.sync m16n8k16 bf16
// with fp32 accumulators, operands from swizzled shared-memory tiles through ldmatrix, K/V (or
// Q/dO) tiles streamed by cp.async into two buffers so that the next tile loads while this one
// is multiplied. Each warp owns 16 rows of the tile it keeps (queries in the forward and the dQ
// pass, keys in the dK/dV pass), so the softmax statistics stay in its registers and no warp
// ever waits on another's partial sums.
//   forward   grid (query tiles of 128, B*H), 8 warps: S = Q K^T, online softmax, O += P V.
//   backward  D = rowsum(dO * O); pass 1, grid (key tiles of 128, B*H): dV += P^T dO and
//             dK += dS^T Q over the query tiles at or after the diagonal; pass 2, grid (query
//             tiles of 128, B*H): dQ += dS K over the key tiles up to the diagonal. dQ is not
//             accumulated with atomics (runs must be bitwise repeatable): pass 2 recomputes P
//             and dP instead (the notes say why this over reducing stored partials).
// Everything else (f32, f64; bf16 with another even Dh <= 256) runs on a plain kernel, one warp
// per query (or key) row, with the same online softmax: slow, exact to fp32, never [S, S].
//
// Document masking (doc_start, backend.h): every kernel has a template flag DOCS, false when
// doc_start is null, so that the path without documents is the code it was. With it, query s of
// sequence b sees key j iff doc_start[b*S+s] <= j <= s. doc_start is non-decreasing in s, so a
// query tile's smallest start is its first query's: key tiles wholly left of it are skipped
// (forward, dQ pass), and the dK/dV pass stops at the first query tile whose first query's
// document starts after the key tile's last key. Tiles that reach past a start mask element by
// element, like the diagonal tile.
#include <climits>
#include <cmath>

#include "model/cuda/kernels.h"
#include "model/cuda/mma.cuh"

namespace sy::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// Two floats as bf16x2, the first in the low half (the lower column of a fragment).
__device__ inline uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ---- shared-memory tiles ----------------------------------------------------------------------
// A tile is [rows][DH] bf16, each row DH/8 chunks of 16 bytes; chunk c of row r is stored at
// chunk c ^ (r % 8). ldmatrix reads one chunk from each of 8 consecutive rows: unswizzled they
// would share banks (rows are 128 or 256 bytes apart), swizzled they fall on 8 distinct ones.
template <int DH>
__device__ inline int swizzled(int row, int chunk) {
  static_assert(DH % 64 == 0, "the swizzle needs at least 8 chunks per row");
  return row * DH + ((chunk ^ (row & 7)) << 3);
}

// Rows [row0, row0 + ROWS) of one head (row stride ld elements) into a tile; rows >= S are
// zero, so tails need no other care: a zero key scores 0 and a zero value adds 0. All NT
// threads of the block take part; the copies join the caller's cp.async group.
template <int ROWS, int DH, int NT>
__device__ inline void load_tile(bf16* tile, const bf16* head, int64_t ld, int row0, int S) {
  constexpr int kChunks = DH / 8;
  for (int i = threadIdx.x; i < ROWS * kChunks; i += NT) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = row0 + r < S;
    const bf16* src = valid ? head + int64_t(row0 + r) * ld + c * 8 : head;
    cp_async_16(tile + swizzled<DH>(r, c), src, valid);
  }
}

// ---- warp-level products ----------------------------------------------------------------------
// c[16][N] = A[a_row0 .. +16][DH] B[N][DH]^T: the warp's 16 rows of tile `a` against every row
// of tile `b` (both with DH contiguous). c[t] is the 16x8 fragment of columns 8t .. 8t+7.
template <int N, int DH>
__device__ inline void warp_abt(float (&c)[N / 8][4], const bf16* a, int a_row0, const bf16* b) {
  const int lane = threadIdx.x & 31;
  // Chunk 2kk + x of a row r lies at (2kk + x) ^ (r % 8) = (x ^ (r % 8)) ^ 2kk: the lane's
  // offset for kk = 0, XORed with 16kk elements (the chunk bits lie below the row bits).
  const int a_lane = swizzled<DH>(a_row0 + (lane & 15), lane >> 4);
  const int b_lane = swizzled<DH>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
#pragma unroll
  for (int t = 0; t < N / 8; ++t) c[t][0] = c[t][1] = c[t][2] = c[t][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, a + (a_lane ^ (kk << 4)));
#pragma unroll
    for (int nn = 0; nn < N / 16; ++nn) {
      uint32_t bf[4];  // b0, b1 of columns 16nn..+7, then of 16nn+8..+15
      ldmatrix_x4(bf, b + 16 * nn * DH + (b_lane ^ (kk << 4)));
      mma_bf16(c[2 * nn], af, bf[0], bf[1]);
      mma_bf16(c[2 * nn + 1], af, bf[2], bf[3]);
    }
  }
}

// acc[16][DH] += P[16][N] V[N][DH]: P in registers as warp_abt left it (fp32 fragments, rounded
// to bf16 here), V a tile with DH contiguous (read transposed by ldmatrix.trans).
template <int N, int DH>
__device__ inline void warp_pv(float (&acc)[DH / 8][4], const float (&p)[N / 8][4], const bf16* v) {
  const int lane = threadIdx.x & 31;
  const int v_lane = swizzled<DH>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);  // as above
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    // Two accumulator fragments side by side are one A fragment (rows g, g+8; k 2t.., 8+2t..).
    const uint32_t af[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]),
                            pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                            pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                            pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int dd = 0; dd < DH / 16; ++dd) {
      uint32_t bf[4];  // b0, b1 of columns 16dd..+7, then of 16dd+8..+15
      ldmatrix_x4_trans(bf, v + 16 * kk * DH + (v_lane ^ (dd << 4)));
      mma_bf16(acc[2 * dd], af, bf[0], bf[1]);
      mma_bf16(acc[2 * dd + 1], af, bf[2], bf[3]);
    }
  }
}

// Reductions over the 4 lanes that hold one row of a fragment.
__device__ inline float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Stores the warp's 16 x DH fragment rows (row0 + g, row0 + g + 8), times `scale`, as bf16;
// rows >= S are not stored.
template <int DH>
__device__ inline void store_rows(bf16* head, int64_t ld, int row0, int S,
                                  const float (&acc)[DH / 8][4], float scale0, float scale1) {
  const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + g + 8 * half;
    if (row >= S) continue;
    const float s = half ? scale1 : scale0;
    bf16* dst = head + int64_t(row) * ld + 2 * tig;
#pragma unroll
    for (int t = 0; t < DH / 8; ++t)
      *reinterpret_cast<uint32_t*>(dst + 8 * t) =
          pack_bf16(acc[t][2 * half] * s, acc[t][2 * half + 1] * s);
  }
}

constexpr int kWarps = 8, kThreadsTc = 32 * kWarps;
constexpr int kRowsTile = 16 * kWarps;  // the rows a block owns: 128
constexpr int kFwdKeys = 64;            // keys per streamed tile (forward, dQ pass)
constexpr int kBwdQueries = 32;         // queries per streamed tile (dK/dV pass)

template <int DH>
constexpr size_t fwd_smem_bytes() {
  return sizeof(bf16) * (kRowsTile * DH + 2 * 2 * kFwdKeys * DH);  // Q, 2 x (K, V)
}
template <int DH>
constexpr size_t dq_smem_bytes() {
  return sizeof(bf16) * (2 * kRowsTile * DH + 2 * 2 * kFwdKeys * DH);  // Q, dO, 2 x (K, V)
}
template <int DH, bool DOCS>
constexpr size_t dkv_smem_bytes() {
  return sizeof(bf16) * (2 * kRowsTile * DH + 2 * 2 * kBwdQueries * DH) +
         sizeof(float) * 2 * 2 * kBwdQueries +        // K, V, 2 x (Q, dO), 2 x (lse, D)
         (DOCS ? sizeof(int) * 2 * kBwdQueries : 0);  // 2 x doc_start of the queries
}

// The heads of one (b, h): base offset of row 0 in [B*S, H*DH].
__device__ inline int64_t head_offset(int bh, int S, int H, int DH) {
  return int64_t(bh / H) * S * H * DH + int64_t(bh % H) * DH;
}

// Document masking for a warp's 16 query rows row_first .. +15 (forward, dQ pass); doc: the
// sequence's doc_start [S]. Rows >= S (computed, never stored) take row S - 1's start, so they
// keep visible keys and stay finite.
struct QueryDocs {
  int first[2] = {0, 0};  // the start of rows g and g + 8 of the thread: their first visible key
  int lo = 0, hi = 0;     // the warp's smallest and largest start (doc_start is non-decreasing)
};
__device__ inline QueryDocs query_docs(const int* doc, int row_first, int g, int S) {
  const auto at = [&](int s) { return doc[min(s, S - 1)]; };
  QueryDocs d;
  d.first[0] = at(row_first + g);
  d.first[1] = at(row_first + g + 8);
  d.lo = at(row_first);
  d.hi = at(row_first + 15);
  return d;
}

// ---- forward ----------------------------------------------------------------------------------
// Block: 128 queries of one (b, h); warp w owns queries q0 + 16w .. +15. Thread (g, tig) of a
// warp holds rows g and g + 8 of each fragment; m (the running max of raw scores q.k) and l
// (this thread's part of the running sum) are per row. DOCS: doc_start [B*S] masks (else unread).
template <int DH, bool DOCS>
__global__ void __launch_bounds__(kThreadsTc, 1)
    flash_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                         const int* doc_start, int S, int H, float scale, float scale_log2) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [128][DH]
  bf16* sK = sQ + kRowsTile * DH;            // [2][64][DH]
  bf16* sV = sK + 2 * kFwdKeys * DH;         // [2][64][DH]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (diagonal-most) tiles start first
  const int bh = blockIdx.y, q0 = qt * kRowsTile;
  const int64_t ld = int64_t(H) * DH, off = head_offset(bh, S, H, DH);
  const bf16 *qh = q + off, *kh = k + off, *vh = v + off;
  const int n_tiles = (min(S, q0 + kRowsTile) + kFwdKeys - 1) / kFwdKeys;  // keys < q0 + 128

  const int row_first = q0 + 16 * warp;  // the warp's first query

  load_tile<kRowsTile, DH, kThreadsTc>(sQ, qh, ld, q0, S);
  // With documents, no query of the block sees a key left of its first query's start: the key
  // tiles from the one holding it. Tile j always lives in buffer j & 1.
  QueryDocs docs;
  int j_first = 0;
  if constexpr (DOCS) {
    const int* doc = doc_start + int64_t(bh / H) * S;
    docs = query_docs(doc, row_first, g, S);
    j_first = doc[q0] / kFwdKeys;
  }
  load_tile<kFwdKeys, DH, kThreadsTc>(sK + (j_first & 1) * kFwdKeys * DH, kh, ld,
                                      j_first * kFwdKeys, S);
  load_tile<kFwdKeys, DH, kThreadsTc>(sV + (j_first & 1) * kFwdKeys * DH, vh, ld,
                                      j_first * kFwdKeys, S);
  cp_async_commit();

  float o[DH / 8][4];
#pragma unroll
  for (int t = 0; t < DH / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row[2] = {row_first + g, row_first + g + 8};

  for (int j = j_first; j < n_tiles; ++j) {
    if (j + 1 < n_tiles) {  // the next tile loads while this one is used
      const int nb = (j + 1) & 1;
      load_tile<kFwdKeys, DH, kThreadsTc>(sK + nb * kFwdKeys * DH, kh, ld, (j + 1) * kFwdKeys, S);
      load_tile<kFwdKeys, DH, kThreadsTc>(sV + nb * kFwdKeys * DH, vh, ld, (j + 1) * kFwdKeys, S);
    }
    cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning tile j
    cp_async_wait<1>();
    __syncthreads();
    const bf16* cK = sK + (j & 1) * kFwdKeys * DH;
    const bf16* cV = sV + (j & 1) * kFwdKeys * DH;
    const int k0 = j * kFwdKeys;
    // Else every key of the tile comes after the warp's queries (or, with documents, before the
    // start of each of them).
    if (k0 <= row_first + 15 && (!DOCS || k0 + kFwdKeys > docs.lo)) {
      float s[kFwdKeys / 8][4];
      warp_abt<kFwdKeys, DH>(s, sQ, 16 * warp, cK);
      // The tile crosses the diagonal, S, or (documents) a start of the warp's rows.
      if (k0 + kFwdKeys - 1 > row_first || k0 + kFwdKeys > S || (DOCS && k0 < docs.hi)) {
#pragma unroll
        for (int t = 0; t < kFwdKeys / 8; ++t)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = k0 + 8 * t + 2 * tig + (e & 1);
            if (key > row[e >> 1] || key >= S || (DOCS && key < docs.first[e >> 1]))
              s[t][e] = -INFINITY;
          }
      }
      // Online softmax. Key 0 is in tile 0 and visible to every row, so m is finite from the
      // first tile on, and a fully masked row of a later tile leaves it as it is. With
      // documents a row may see no key of the warp's first tiles (its document starts later):
      // its max stays -inf and (-inf) - (-inf) would make NaN, so it shifts by 0 instead; its
      // p are exp2(-inf) = 0 and l, o stay 0 until its first visible key.
      float corr[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = m[r];
#pragma unroll
        for (int t = 0; t < kFwdKeys / 8; ++t) mx = fmaxf(mx, fmaxf(s[t][2 * r], s[t][2 * r + 1]));
        mx = quad_max(mx);
        const float base = DOCS && mx == -INFINITY ? 0.f : mx;
        corr[r] = exp2f((m[r] - base) * scale_log2);  // 0 on the first tile (m = -inf)
        m[r] = mx;
        const float shift = base * scale_log2;
        float sum = 0.f;
#pragma unroll
        for (int t = 0; t < kFwdKeys / 8; ++t)
#pragma unroll
          for (int e = 2 * r; e < 2 * r + 2; ++e) {
            s[t][e] = exp2f(fmaf(s[t][e], scale_log2, -shift));
            sum += s[t][e];
          }
        l[r] = l[r] * corr[r] + sum;
      }
#pragma unroll
      for (int t = 0; t < DH / 8; ++t) {
        o[t][0] *= corr[0], o[t][1] *= corr[0];
        o[t][2] *= corr[1], o[t][3] *= corr[1];
      }
      warp_pv<kFwdKeys, DH>(o, s, cV);
    }
    __syncthreads();  // the next iteration's loads overwrite this tile's buffer
  }

  const float l0 = quad_sum(l[0]), l1 = quad_sum(l[1]);
  store_rows<DH>(out + off, ld, row_first, S, o, 1.f / l0, 1.f / l1);
  if (tig == 0) {
    const int64_t base = int64_t(bh) * S;
    if (row[0] < S) lse[base + row[0]] = m[0] * scale + logf(l0);
    if (row[1] < S) lse[base + row[1]] = m[1] * scale + logf(l1);
  }
}

// ---- backward, pass 1: dK, dV -----------------------------------------------------------------
// Block: 128 keys of one (b, h); warp w owns keys k0 + 16w .. +15 and accumulates their dK and
// dV rows in registers over the query tiles (64 queries each) from the diagonal to S. Computed
// transposed, rows = keys: S^T = K Q^T, P^T = exp(S^T scale - lse[q]), dP^T = V dO^T,
// dS^T = P^T (dP^T - D[q]), dV += P^T dO, dK += dS^T Q. DOCS: doc_start [B*S] masks.
template <int DH, bool DOCS>
__global__ void __launch_bounds__(kThreadsTc, 1)
    flash_backward_dkdv_kernel(bf16* dk, bf16* dv, const bf16* q, const bf16* k, const bf16* v,
                               const bf16* dout, const float* lse, const float* dsum,
                               const int* doc_start, int S, int H, float scale, float scale_log2) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);  // [128][DH]
  bf16* sV = sK + kRowsTile * DH;            // [128][DH]
  bf16* sQ = sV + kRowsTile * DH;            // [2][64][DH]
  bf16* sG = sQ + 2 * kBwdQueries * DH;      // [2][64][DH] (dO)
  float* sL = reinterpret_cast<float*>(sG + 2 * kBwdQueries * DH);  // [2][64] lse * log2(e)
  float* sD = sL + 2 * kBwdQueries;                                  // [2][64] D
  int* sDoc = reinterpret_cast<int*>(sD + 2 * kBwdQueries);  // [2][32] doc_start (DOCS only)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int bh = blockIdx.y, k0 = blockIdx.x * kRowsTile;
  const int64_t ld = int64_t(H) * DH, off = head_offset(bh, S, H, DH);
  const bf16 *qh = q + off, *gh = dout + off;
  const float *lse_h = lse + int64_t(bh) * S, *d_h = dsum + int64_t(bh) * S;
  const int first = k0 / kBwdQueries, n_tiles = (S + kBwdQueries - 1) / kBwdQueries;
  const int* doc = DOCS ? doc_start + int64_t(bh / H) * S : nullptr;

  auto load_queries = [&](int i, int buf) {
    const int q0 = i * kBwdQueries;
    load_tile<kBwdQueries, DH, kThreadsTc>(sQ + buf * kBwdQueries * DH, qh, ld, q0, S);
    load_tile<kBwdQueries, DH, kThreadsTc>(sG + buf * kBwdQueries * DH, gh, ld, q0, S);
    for (int r = threadIdx.x; r < kBwdQueries; r += kThreadsTc) {  // plain loads: S is unaligned
      const bool valid = q0 + r < S;
      sL[buf * kBwdQueries + r] = valid ? lse_h[q0 + r] * kLog2e : 0.f;
      sD[buf * kBwdQueries + r] = valid ? d_h[q0 + r] : 0.f;
      if constexpr (DOCS) sDoc[buf * kBwdQueries + r] = valid ? doc[q0 + r] : INT_MAX;
    }
  };
  load_tile<kRowsTile, DH, kThreadsTc>(sK, k + off, ld, k0, S);
  load_tile<kRowsTile, DH, kThreadsTc>(sV, v + off, ld, k0, S);
  load_queries(first, 0);
  cp_async_commit();

  // The query tiles from the diagonal to `end`. With documents, a tile whose first query's
  // document starts after the block's last key sees none of its keys, and neither does any
  // later tile (doc_start is non-decreasing): `end` is the first such tile, by binary search
  // (tile `first` holds query k0, which sees key k0, so it always stays).
  int end = n_tiles;
  if constexpr (DOCS) {
    const int k_last = min(k0 + kRowsTile, S) - 1;
    int lo = first + 1, hi = n_tiles;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (doc[mid * kBwdQueries] > k_last) hi = mid;
      else lo = mid + 1;
    }
    end = lo;
  }

  float dk_acc[DH / 8][4], dv_acc[DH / 8][4];
#pragma unroll
  for (int t = 0; t < DH / 8; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[t][e] = dv_acc[t][e] = 0.f;
  const int key_first = k0 + 16 * warp;
  const int key[2] = {key_first + g, key_first + g + 8};

  for (int i = first; i < end; ++i) {
    const int buf = (i - first) & 1;
    if (i + 1 < end) load_queries(i + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int q0 = i * kBwdQueries;
    const int* cDoc = sDoc + buf * kBwdQueries;  // rows >= S: INT_MAX (read with DOCS only)
    // A warp whose keys all come after the tile's last query gets nothing from it, nor (with
    // documents) one whose keys all come before the start of the tile's first query.
    if (q0 + kBwdQueries - 1 >= key_first && (!DOCS || cDoc[0] <= key_first + 15)) {
      const bf16* cQ = sQ + buf * kBwdQueries * DH;
      const bf16* cG = sG + buf * kBwdQueries * DH;
      const float* cL = sL + buf * kBwdQueries;
      const float* cD = sD + buf * kBwdQueries;
      float p[kBwdQueries / 8][4];
      warp_abt<kBwdQueries, DH>(p, sK, 16 * warp, cQ);
      const bool mask = q0 < key_first + 15 || q0 + kBwdQueries > S ||
                        (DOCS && cDoc[kBwdQueries - 1] > key_first);
#pragma unroll
      for (int t = 0; t < kBwdQueries / 8; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = 8 * t + 2 * tig + (e & 1), query = q0 + c;
          const float x = exp2f(fmaf(p[t][e], scale_log2, -cL[c]));
          p[t][e] = mask && (query < key[e >> 1] || query >= S || (DOCS && cDoc[c] > key[e >> 1]))
                        ? 0.f
                        : x;
        }
      warp_pv<kBwdQueries, DH>(dv_acc, p, cG);
      float ds[kBwdQueries / 8][4];
      warp_abt<kBwdQueries, DH>(ds, sV, 16 * warp, cG);
#pragma unroll
      for (int t = 0; t < kBwdQueries / 8; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[t][e] = p[t][e] * (ds[t][e] - cD[8 * t + 2 * tig + (e & 1)]);
      warp_pv<kBwdQueries, DH>(dk_acc, ds, cQ);
    }
    __syncthreads();
  }
  store_rows<DH>(dk + off, ld, key_first, S, dk_acc, scale, scale);
  store_rows<DH>(dv + off, ld, key_first, S, dv_acc, 1.f, 1.f);
}

// ---- backward, pass 2: dQ ---------------------------------------------------------------------
// Block: 128 queries of one (b, h) as in the forward; warp w owns 16 of them and their dQ rows.
// Per key tile: S = Q K^T, P = exp(S scale - lse), dP = dO V^T, dS = P (dP - D), dQ += dS K.
// DOCS: doc_start [B*S] masks, and the key tiles start as in the forward.
template <int DH, bool DOCS>
__global__ void __launch_bounds__(kThreadsTc, 1)
    flash_backward_dq_kernel(bf16* dq, const bf16* q, const bf16* k, const bf16* v,
                             const bf16* dout, const float* lse, const float* dsum,
                             const int* doc_start, int S, int H, float scale, float scale_log2) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [128][DH]
  bf16* sG = sQ + kRowsTile * DH;            // [128][DH] (dO)
  bf16* sK = sG + kRowsTile * DH;            // [2][64][DH]
  bf16* sV = sK + 2 * kFwdKeys * DH;         // [2][64][DH]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int qt = gridDim.x - 1 - blockIdx.x;
  const int bh = blockIdx.y, q0 = qt * kRowsTile;
  const int64_t ld = int64_t(H) * DH, off = head_offset(bh, S, H, DH);
  const bf16 *kh = k + off, *vh = v + off;
  const int n_tiles = (min(S, q0 + kRowsTile) + kFwdKeys - 1) / kFwdKeys;

  load_tile<kRowsTile, DH, kThreadsTc>(sQ, q + off, ld, q0, S);
  load_tile<kRowsTile, DH, kThreadsTc>(sG, dout + off, ld, q0, S);
  QueryDocs docs;  // as in the forward
  int j_first = 0;
  if constexpr (DOCS) {
    const int* doc = doc_start + int64_t(bh / H) * S;
    docs = query_docs(doc, q0 + 16 * warp, g, S);
    j_first = doc[q0] / kFwdKeys;
  }
  load_tile<kFwdKeys, DH, kThreadsTc>(sK + (j_first & 1) * kFwdKeys * DH, kh, ld,
                                      j_first * kFwdKeys, S);
  load_tile<kFwdKeys, DH, kThreadsTc>(sV + (j_first & 1) * kFwdKeys * DH, vh, ld,
                                      j_first * kFwdKeys, S);
  cp_async_commit();

  const int row_first = q0 + 16 * warp;
  const int row[2] = {row_first + g, row_first + g + 8};
  float lse_log2[2], d_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // rows >= S: zero queries, nothing stored
    lse_log2[r] = row[r] < S ? lse[int64_t(bh) * S + row[r]] * kLog2e : 0.f;
    d_row[r] = row[r] < S ? dsum[int64_t(bh) * S + row[r]] : 0.f;
  }
  float acc[DH / 8][4];
#pragma unroll
  for (int t = 0; t < DH / 8; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

  for (int j = j_first; j < n_tiles; ++j) {
    if (j + 1 < n_tiles) {
      const int nb = (j + 1) & 1;
      load_tile<kFwdKeys, DH, kThreadsTc>(sK + nb * kFwdKeys * DH, kh, ld, (j + 1) * kFwdKeys, S);
      load_tile<kFwdKeys, DH, kThreadsTc>(sV + nb * kFwdKeys * DH, vh, ld, (j + 1) * kFwdKeys, S);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* cK = sK + (j & 1) * kFwdKeys * DH;
    const bf16* cV = sV + (j & 1) * kFwdKeys * DH;
    const int k0 = j * kFwdKeys;
    // Else every key of the tile is after the warp's queries (or before their starts).
    if (k0 <= row_first + 15 && (!DOCS || k0 + kFwdKeys > docs.lo)) {
      float p[kFwdKeys / 8][4];
      warp_abt<kFwdKeys, DH>(p, sQ, 16 * warp, cK);
      const bool mask =
          k0 + kFwdKeys - 1 > row_first || k0 + kFwdKeys > S || (DOCS && k0 < docs.hi);
#pragma unroll
      for (int t = 0; t < kFwdKeys / 8; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + 8 * t + 2 * tig + (e & 1);
          const float x = exp2f(fmaf(p[t][e], scale_log2, -lse_log2[e >> 1]));
          p[t][e] = mask && (key > row[e >> 1] || key >= S || (DOCS && key < docs.first[e >> 1]))
                        ? 0.f
                        : x;
        }
      float ds[kFwdKeys / 8][4];
      warp_abt<kFwdKeys, DH>(ds, sG, 16 * warp, cV);
#pragma unroll
      for (int t = 0; t < kFwdKeys / 8; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[t][e] = p[t][e] * (ds[t][e] - d_row[e >> 1]);
      warp_pv<kFwdKeys, DH>(acc, ds, cK);
    }
    __syncthreads();
  }
  store_rows<DH>(dq + off, ld, row_first, S, acc, scale, scale);
}

// ---- plain kernels: any float type, even Dh <= 256 ---------------------------------------------
constexpr int kPlainWarps = 8;
constexpr int kMaxDh = 256, kPerLane = kMaxDh / 32;

__device__ inline float exp_acc(float x) { return expf(x); }
__device__ inline double exp_acc(double x) { return exp(x); }
__device__ inline float log_acc(float x) { return logf(x); }
__device__ inline double log_acc(double x) { return log(x); }

// <x, y> of a shared-memory row and a global row, by one lane.
template <class A, class T>
__device__ inline A dot_row(const A* x, const T* y, int Dh) {
  A sum = 0;
  for (int d = 0; d < Dh; ++d) sum += x[d] * load(y + d);
  return sum;
}

// D[bh*S + s] = <dout, out> of each (token, head): one warp each.
template <class T, class A>
__global__ void row_dot_kernel(A* dsum, const T* dout, const T* out, int64_t B, int S, int H,
                               int Dh) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kPlainWarps) + (threadIdx.x >> 5);  // (b*H + h)*S + s
  if (row >= B * H * S) return;
  const int64_t bh = row / S, s = row % S;
  const int64_t at = (bh / H * S + s) * H * Dh + bh % H * Dh;
  A sum = 0;
  for (int d = lane; d < Dh; d += 32) sum += load(dout + at + d) * load(out + at + d);
  sum = warp_sum(sum);
  if (lane == 0) dsum[row] = sum;
}

// One warp per query row; lane j scores key j0 + j of each chunk of 32. DOCS: doc_start [B*S];
// the chunks then start at the query's document start, so a document's rows are summed in the
// same order wherever it lies in the sequence.
template <class T, class A, bool DOCS>
__global__ void plain_forward_kernel(T* out, A* lse, const T* q, const T* k, const T* v,
                                     const int* doc_start, int64_t B, int S, int H, int Dh,
                                     A scale) {
  __shared__ A q_row[kPlainWarps][kMaxDh];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kPlainWarps) + warp;
  if (row >= B * H * S) return;
  const int s = static_cast<int>(row % S);
  const int64_t bh = row / S, ld = int64_t(H) * Dh;
  const int64_t off = bh / H * S * ld + bh % H * Dh;
  for (int d = lane; d < Dh; d += 32) q_row[warp][d] = load(q + off + s * ld + d);
  __syncwarp();
  const int first = DOCS ? doc_start[bh / H * S + s] : 0;  // the first visible key
  A m = -INFINITY, l = 0, acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) acc[e] = 0;
  for (int j0 = first; j0 <= s; j0 += 32) {
    const int j = j0 + lane;
    const A score = j <= s ? dot_row(q_row[warp], k + off + j * ld, Dh) * scale : A(-INFINITY);
    const A m_new = max(m, warp_max(score));
    const A p = exp_acc(score - m_new), corr = exp_acc(m - m_new);
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) acc[e] *= corr;
    const int n = min(32, s - j0 + 1);
    for (int jj = 0; jj < n; ++jj) {
      const A pj = __shfl_sync(0xffffffffu, p, jj);
      const T* vj = v + off + (j0 + jj) * ld;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e)
        if (lane + 32 * e < Dh) acc[e] += pj * load(vj + lane + 32 * e);
    }
    m = m_new;
  }
#pragma unroll
  for (int e = 0; e < kPerLane; ++e)
    if (lane + 32 * e < Dh) out[off + s * ld + lane + 32 * e] = convert<T>(acc[e] / l);
  if (lane == 0) lse[row] = m + log_acc(l);
}

// One warp per query row: dq = scale sum_j dS_j k_j (DOCS: over the keys of its document, in
// chunks from its start, as in the forward).
template <class T, class A, bool DOCS>
__global__ void plain_backward_dq_kernel(T* dq, const T* q, const T* k, const T* v, const T* dout,
                                         const A* lse, const A* dsum, const int* doc_start,
                                         int64_t B, int S, int H, int Dh, A scale) {
  __shared__ A q_row[kPlainWarps][kMaxDh], g_row[kPlainWarps][kMaxDh];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kPlainWarps) + warp;
  if (row >= B * H * S) return;
  const int s = static_cast<int>(row % S);
  const int64_t bh = row / S, ld = int64_t(H) * Dh;
  const int64_t off = bh / H * S * ld + bh % H * Dh;
  for (int d = lane; d < Dh; d += 32) {
    q_row[warp][d] = load(q + off + s * ld + d);
    g_row[warp][d] = load(dout + off + s * ld + d);
  }
  __syncwarp();
  const A lse_s = lse[row], d_s = dsum[row];
  const int first = DOCS ? doc_start[bh / H * S + s] : 0;
  A acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) acc[e] = 0;
  for (int j0 = first; j0 <= s; j0 += 32) {
    const int j = j0 + lane;
    A ds = 0;
    if (j <= s) {
      const A p = exp_acc(dot_row(q_row[warp], k + off + j * ld, Dh) * scale - lse_s);
      ds = p * (dot_row(g_row[warp], v + off + j * ld, Dh) - d_s);
    }
    const int n = min(32, s - j0 + 1);
    for (int jj = 0; jj < n; ++jj) {
      const A dsj = __shfl_sync(0xffffffffu, ds, jj);
      const T* kj = k + off + (j0 + jj) * ld;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e)
        if (lane + 32 * e < Dh) acc[e] += dsj * load(kj + lane + 32 * e);
    }
  }
#pragma unroll
  for (int e = 0; e < kPerLane; ++e)
    if (lane + 32 * e < Dh) dq[off + s * ld + lane + 32 * e] = convert<T>(acc[e] * scale);
}

// One warp per key row j: dk = scale sum_i dS_i q_i, dv = sum_i P_i dout_i over queries i >= j.
// DOCS: doc_start [B*S]; the queries that see key j end where the next document starts
// (doc_start is non-decreasing), so the loop stops at the first chunk that begins past it, and
// only the lanes before it take part (the same sums, in the same order, as the document alone).
template <class T, class A, bool DOCS>
__global__ void plain_backward_dkdv_kernel(T* dk, T* dv, const T* q, const T* k, const T* v,
                                           const T* dout, const A* lse, const A* dsum,
                                           const int* doc_start, int64_t B, int S, int H, int Dh,
                                           A scale) {
  __shared__ A k_row[kPlainWarps][kMaxDh], v_row[kPlainWarps][kMaxDh];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(kPlainWarps) + warp;
  if (row >= B * H * S) return;
  const int j = static_cast<int>(row % S);
  const int64_t bh = row / S, ld = int64_t(H) * Dh;
  const int64_t off = bh / H * S * ld + bh % H * Dh;
  for (int d = lane; d < Dh; d += 32) {
    k_row[warp][d] = load(k + off + j * ld + d);
    v_row[warp][d] = load(v + off + j * ld + d);
  }
  __syncwarp();
  const int* doc = DOCS ? doc_start + bh / H * S : nullptr;
  A acc_k[kPerLane], acc_v[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) acc_k[e] = acc_v[e] = 0;
  for (int i0 = j; i0 < S && (!DOCS || doc[i0] <= j); i0 += 32) {
    const int i = i0 + lane;
    const bool sees = i < S && (!DOCS || doc[i] <= j);  // a prefix of the lanes
    A p = 0, ds = 0;
    if (sees) {
      p = exp_acc(dot_row(k_row[warp], q + off + i * ld, Dh) * scale - lse[bh * S + i]);
      ds = p * (dot_row(v_row[warp], dout + off + i * ld, Dh) - dsum[bh * S + i]);
    }
    const int n = DOCS ? __popc(__ballot_sync(0xffffffffu, sees)) : min(32, S - i0);
    for (int ii = 0; ii < n; ++ii) {
      const A pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
      const T* qi = q + off + (i0 + ii) * ld;
      const T* gi = dout + off + (i0 + ii) * ld;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e)
        if (lane + 32 * e < Dh) {
          acc_k[e] += dsi * load(qi + lane + 32 * e);
          acc_v[e] += pi * load(gi + lane + 32 * e);
        }
    }
  }
#pragma unroll
  for (int e = 0; e < kPerLane; ++e)
    if (lane + 32 * e < Dh) {
      dk[off + j * ld + lane + 32 * e] = convert<T>(acc_k[e] * scale);
      dv[off + j * ld + lane + 32 * e] = convert<T>(acc_v[e]);
    }
}

// ---- launch -----------------------------------------------------------------------------------
bool tensor_core_path(DType dtype, int64_t Dh) {
  return dtype == DType::bf16 && (Dh == 64 || Dh == 128);
}

void check_head_dim(Context& ctx, const char* op, int64_t Dh, int64_t BH) {
  if (Dh > kMaxDh || Dh % 2 != 0)
    fail(ctx, op, "head width " + std::to_string(Dh) +
                      " is not supported (bf16 on tensor cores: 64 or 128; otherwise an even "
                      "width up to " + std::to_string(kMaxDh) + ")");
  if (BH > 65535) fail(ctx, op, "B*H = " + std::to_string(BH) + " exceeds the grid's 65535");
}

template <class F>
void allow_smem(Context& ctx, const char* op, F* kernel, size_t bytes) {
  SY_CUDA(ctx, op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
}

void check_aligned(Context& ctx, const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (reinterpret_cast<uintptr_t>(t->data()) % 16 != 0)
      fail(ctx, op, "the tensor core path needs 16-byte aligned q, k, v, out and gradients");
}

// doc_start: null (no documents: the kernels' DOCS false) or [B*S] on the device.
template <int DH>
void forward_tc(Context& ctx, const char* op, const Tensor& out, const Tensor& lse, const Tensor& q,
                const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                const int32_t* doc_start) {
  const double scale = 1.0 / std::sqrt(double(DH));
  constexpr size_t smem = fwd_smem_bytes<DH>();
  auto* kernel = doc_start ? flash_forward_kernel<DH, true> : flash_forward_kernel<DH, false>;
  allow_smem(ctx, op, kernel, smem);
  const dim3 grid(static_cast<unsigned>((S + kRowsTile - 1) / kRowsTile), static_cast<unsigned>(B * H));
  kernel<<<grid, kThreadsTc, smem, ctx.stream>>>(
      out.ptr<bf16>(), lse.ptr<float>(), q.ptr<bf16>(), k.ptr<bf16>(), v.ptr<bf16>(), doc_start,
      static_cast<int>(S), static_cast<int>(H), static_cast<float>(scale),
      static_cast<float>(scale * kLog2e));
  check_launch(ctx, op);
}

template <int DH>
void backward_tc(Context& ctx, const char* op, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                 const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& lse, const float* dsum, int64_t B, int64_t S, int64_t H,
                 const int32_t* doc_start) {
  const double scale = 1.0 / std::sqrt(double(DH));
  const float fs = static_cast<float>(scale), fs2 = static_cast<float>(scale * kLog2e);
  const unsigned tiles = static_cast<unsigned>((S + kRowsTile - 1) / kRowsTile);
  const dim3 grid(tiles, static_cast<unsigned>(B * H));
  const size_t smem_kv = doc_start ? dkv_smem_bytes<DH, true>() : dkv_smem_bytes<DH, false>();
  constexpr size_t smem_q = dq_smem_bytes<DH>();
  auto* dkdv =
      doc_start ? flash_backward_dkdv_kernel<DH, true> : flash_backward_dkdv_kernel<DH, false>;
  allow_smem(ctx, op, dkdv, smem_kv);
  dkdv<<<grid, kThreadsTc, smem_kv, ctx.stream>>>(
      dk.ptr<bf16>(), dv.ptr<bf16>(), q.ptr<bf16>(), k.ptr<bf16>(), v.ptr<bf16>(), dout.ptr<bf16>(),
      lse.ptr<float>(), dsum, doc_start, static_cast<int>(S), static_cast<int>(H), fs, fs2);
  check_launch(ctx, op);
  auto* dq_pass =
      doc_start ? flash_backward_dq_kernel<DH, true> : flash_backward_dq_kernel<DH, false>;
  allow_smem(ctx, op, dq_pass, smem_q);
  dq_pass<<<grid, kThreadsTc, smem_q, ctx.stream>>>(
      dq.ptr<bf16>(), q.ptr<bf16>(), k.ptr<bf16>(), v.ptr<bf16>(), dout.ptr<bf16>(),
      lse.ptr<float>(), dsum, doc_start, static_cast<int>(S), static_cast<int>(H), fs, fs2);
  check_launch(ctx, op);
}

}  // namespace

void flash_attention_forward(Context& ctx, const Tensor& out, const Tensor& lse, const Tensor& q,
                             const Tensor& k, const Tensor& v, int64_t B, int64_t S, int64_t H,
                             const int32_t* doc_start) {
  const char* op = "flash_attention_forward";
  const int64_t Dh = q.dim(1) / H;
  check_head_dim(ctx, op, Dh, B * H);
  if (B * S == 0) return;
  if (tensor_core_path(q.dtype(), Dh)) {
    check_aligned(ctx, op, {&out, &q, &k, &v});
    if (Dh == 64) forward_tc<64>(ctx, op, out, lse, q, k, v, B, S, H, doc_start);
    else forward_tc<128>(ctx, op, out, lse, q, k, v, B, S, H, doc_start);
    return;
  }
  dispatch_float(q.dtype(), [&]<class T>(Tag<T>) {
    using A = acc_t<T>;
    const unsigned blocks = blocks_for(B * H * S, kPlainWarps);
    auto* kernel = doc_start ? plain_forward_kernel<T, A, true> : plain_forward_kernel<T, A, false>;
    kernel<<<blocks, 32 * kPlainWarps, 0, ctx.stream>>>(
        out.ptr<T>(), lse.ptr<A>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), doc_start, B,
        static_cast<int>(S), static_cast<int>(H), static_cast<int>(Dh),
        static_cast<A>(1.0 / std::sqrt(double(Dh))));
  });
  check_launch(ctx, op);
}

void flash_attention_backward(Context& ctx, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, int64_t B, int64_t S, int64_t H,
                              const int32_t* doc_start) {
  const char* op = "flash_attention_backward";
  const int64_t Dh = q.dim(1) / H;
  check_head_dim(ctx, op, Dh, B * H);
  if (B * S == 0) return;
  dispatch_float(q.dtype(), [&]<class T>(Tag<T>) {
    using A = acc_t<T>;
    // D = rowsum(dO * O) per (b, h, s), in the stat dtype: [B, H, S] of scratch.
    A* dsum = static_cast<A*>(ctx.scratch(kScratchA, static_cast<size_t>(B * H * S) * sizeof(A)));
    const unsigned blocks = blocks_for(B * H * S, kPlainWarps);
    row_dot_kernel<T, A><<<blocks, 32 * kPlainWarps, 0, ctx.stream>>>(
        dsum, dout.ptr<T>(), out.ptr<T>(), B, static_cast<int>(S), static_cast<int>(H),
        static_cast<int>(Dh));
    check_launch(ctx, op);
    if constexpr (std::is_same_v<T, bf16>) {
      if (tensor_core_path(q.dtype(), Dh)) {
        check_aligned(ctx, op, {&dq, &dk, &dv, &dout, &q, &k, &v});
        if (Dh == 64)
          backward_tc<64>(ctx, op, dq, dk, dv, dout, q, k, v, lse, dsum, B, S, H, doc_start);
        else backward_tc<128>(ctx, op, dq, dk, dv, dout, q, k, v, lse, dsum, B, S, H, doc_start);
        return;
      }
    }
    const A scale = static_cast<A>(1.0 / std::sqrt(double(Dh)));
    auto* dq_pass =
        doc_start ? plain_backward_dq_kernel<T, A, true> : plain_backward_dq_kernel<T, A, false>;
    dq_pass<<<blocks, 32 * kPlainWarps, 0, ctx.stream>>>(
        dq.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), dout.ptr<T>(), lse.ptr<A>(), dsum,
        doc_start, B, static_cast<int>(S), static_cast<int>(H), static_cast<int>(Dh), scale);
    check_launch(ctx, op);
    auto* dkdv = doc_start ? plain_backward_dkdv_kernel<T, A, true>
                           : plain_backward_dkdv_kernel<T, A, false>;
    dkdv<<<blocks, 32 * kPlainWarps, 0, ctx.stream>>>(
        dk.ptr<T>(), dv.ptr<T>(), q.ptr<T>(), k.ptr<T>(), v.ptr<T>(), dout.ptr<T>(), lse.ptr<A>(),
        dsum, doc_start, B, static_cast<int>(S), static_cast<int>(H), static_cast<int>(Dh), scale);
    check_launch(ctx, op);
  });
}

}  // namespace sy::cuda
