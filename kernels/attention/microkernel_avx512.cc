// Flash-attention tile kernel for x86 AVX-512 (fp32), called from the TIR driver in tir_kernel.py.
//
// Chosen over the pure-TIR CPU schedule (tir_kernel.py) by measurement on the 2-core AVX-512 dev
// host, B=1 H=8 L=1024 D=64: 22 ms vs 89 ms single-thread CPU time; in one shared-machine run of
// bench.py at 2 threads, 74 ms vs 316 ms, with torch SDPA at 159 ms in the same run.
//
// One call computes up to 16 query rows of one head against all visible keys with an online
// softmax; the L x L score matrix never exists, only a 16 x 64 block of it. The 16 queries sit
// in the 16 lanes of a zmm register, so K and V are read in their natural [L, D] layout with
// scalar broadcasts and the softmax needs no horizontal reductions. Scores are kept in base 2
// (scale * log2(e) is folded into Q) so exp is a cheap exp2.
// Fewer than kMinLaneRows queries (decode) go row by row, vectorised over the head dim instead.
// The head dim is a template parameter (multiples of 4) so every inner loop fully unrolls.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cstdint>
#include <utility>

namespace {

constexpr int kLanes = 16;       // queries per tile = fp32 lanes of a zmm register
constexpr int kBlock = 64;       // keys per online-softmax step
constexpr int kMinLaneRows = 4;  // below this the lane kernel wastes most lanes
constexpr int kMaxDim = 256;
constexpr float kLog2e = 1.4426950408889634f;

// 2^x for x <= 128; degree-6 Taylor polynomial on [-0.5, 0.5] (rel. error ~1e-7), then scalef.
inline __m512 exp2v(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-127.0f));
  __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Keys [lo, hi) visible to query position pos: lo = pos - window + 1, hi = pos + 1 (clipped).
struct Visible {
  int32_t pos0, window, lk;
  int32_t lo(int32_t pos) const { return std::max(0, pos - window + 1); }
  int32_t hi(int32_t pos) const { return std::min(lk, pos + 1); }
};

// s[kk] = sum_d k[kk][d] * qt[d] for 16 consecutive keys.
template <int D>
inline void scores16(const float* k, const float* qt, __m512* s) {
  __m512 acc[kLanes];
  for (int kk = 0; kk < kLanes; ++kk) acc[kk] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const __m512 qd = _mm512_load_ps(qt + d * kLanes);
    for (int kk = 0; kk < kLanes; ++kk)
      acc[kk] = _mm512_fmadd_ps(_mm512_set1_ps(k[kk * D + d]), qd, acc[kk]);
  }
  for (int kk = 0; kk < kLanes; ++kk) s[kk] = acc[kk];
}

// ot[d] = ot[d] * alpha + sum_j v[j][d] * p[j] for W head-dim columns from d0 (W <= 16).
template <int D, int W>
inline void accumulate_pv_cols(const float* v, int n, const __m512* p, __m512 alpha, float* ot, int d0) {
  __m512 acc[W];
  for (int dd = 0; dd < W; ++dd) acc[dd] = _mm512_mul_ps(_mm512_load_ps(ot + (d0 + dd) * kLanes), alpha);
  for (int j = 0; j < n; ++j) {
    const float* vj = v + j * D + d0;
    for (int dd = 0; dd < W; ++dd) acc[dd] = _mm512_fmadd_ps(_mm512_set1_ps(vj[dd]), p[j], acc[dd]);
  }
  for (int dd = 0; dd < W; ++dd) _mm512_store_ps(ot + (d0 + dd) * kLanes, acc[dd]);
}

// ot[d] = ot[d] * alpha + sum_j v[j][d] * p[j]: 16 head-dim columns at a time, then the last D % 16.
template <int D>
inline void accumulate_pv(const float* v, int n, const __m512* p, __m512 alpha, float* ot) {
  for (int d0 = 0; d0 + 16 <= D; d0 += 16) accumulate_pv_cols<D, 16>(v, n, p, alpha, ot, d0);
  if constexpr (D % 16 != 0) accumulate_pv_cols<D, D % 16>(v, n, p, alpha, ot, D - D % 16);
}

template <int D>
void lane_tile(const float* q, const float* k, const float* v, float* o, int rows, Visible vis,
               float scale) {
  alignas(64) float qt[D * kLanes] = {};
  alignas(64) float ot[D * kLanes] = {};
  for (int r = 0; r < rows; ++r)
    for (int d = 0; d < D; ++d) qt[d * kLanes + r] = q[r * D + d] * scale * kLog2e;

  const __m512i pos = _mm512_add_epi32(_mm512_set1_epi32(vis.pos0),
                                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i lowest = _mm512_sub_epi32(pos, _mm512_set1_epi32(vis.window));
  const int32_t last = vis.pos0 + rows - 1;  // the last real query's position
  const int32_t lo = vis.lo(vis.pos0), hi = vis.hi(last);
  __m512 m = _mm512_set1_ps(-FLT_MAX), l = _mm512_setzero_ps();
  __m512 s[kBlock];
  alignas(64) float tail[kLanes * D];
  for (int32_t j0 = lo; j0 < hi; j0 += kBlock) {
    const int n = std::min<int32_t>(kBlock, hi - j0);
    for (int c = 0; c < n; c += kLanes) {
      const float* kc = k + (j0 + c) * D;
      if (n - c < kLanes) {  // copy the last keys so the 16-key kernel reads nothing out of bounds
        std::fill(std::copy(kc, kc + (n - c) * D, tail), tail + kLanes * D, 0.0f);
        kc = tail;
      }
      scores16<D>(kc, qt, s + c);
    }
    // Blocks inside every lane's visible range skip the mask.
    const bool full = j0 + n - 1 <= vis.pos0 && j0 >= vis.lo(last);
    __mmask16 keep[kBlock];
    __m512 mnew = m;
    for (int j = 0; j < n; ++j) {
      const __m512i jj = _mm512_set1_epi32(j0 + j);
      keep[j] = full ? 0xFFFF : _mm512_cmple_epi32_mask(jj, pos) & _mm512_cmpgt_epi32_mask(jj, lowest);
      mnew = _mm512_mask_max_ps(mnew, keep[j], mnew, s[j]);
    }
    const __m512 alpha = exp2v(_mm512_sub_ps(m, mnew));
    l = _mm512_mul_ps(l, alpha);
    for (int j = 0; j < n; ++j) {
      s[j] = _mm512_maskz_mov_ps(keep[j], exp2v(_mm512_sub_ps(s[j], mnew)));
      l = _mm512_add_ps(l, s[j]);
    }
    accumulate_pv<D>(v + j0 * D, n, s, alpha, ot);
    m = mnew;
  }
  alignas(64) float inv[kLanes];
  _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), l));
  for (int r = 0; r < rows; ++r)
    for (int d = 0; d < D; ++d) o[r * D + d] = ot[d * kLanes + r] * inv[r];
}

// One query row over keys [lo, hi), vectorised over the head dim (D / 16 zmm registers, the last one
// partly used when 16 does not divide D). With
// ml == nullptr o gets the attention output; otherwise o gets the unnormalised sum and ml the
// (base-2 running max, sum of weights) pair, for a split-K caller to merge.
template <int D>
void row(const float* q, const float* k, const float* v, int32_t lo, int32_t hi, float scale, float* o,
         float* ml) {
  constexpr int ND = (D + 15) / 16;
  constexpr __mmask16 kLast = D % 16 ? (1u << (D % 16)) - 1 : 0xFFFF;  // live lanes of the last register
  const auto cols = [](int c) -> __mmask16 { return c == ND - 1 ? kLast : 0xFFFF; };
  __m512 qv[ND], acc[ND];
  for (int c = 0; c < ND; ++c) {
    qv[c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(cols(c), q + 16 * c), _mm512_set1_ps(scale * kLog2e));
    acc[c] = _mm512_setzero_ps();
  }
  alignas(64) float s[kBlock];
  float m = -FLT_MAX, l = 0.0f;
  for (int32_t j0 = lo; j0 < hi; j0 += kBlock) {
    const int n = std::min<int32_t>(kBlock, hi - j0);
    float mnew = m;
    for (int j = 0; j < n; ++j) {
      const float* kj = k + (j0 + j) * D;
      __m512 dot = _mm512_mul_ps(qv[0], _mm512_maskz_loadu_ps(cols(0), kj));
      for (int c = 1; c < ND; ++c) dot = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(cols(c), kj + 16 * c), dot);
      s[j] = _mm512_reduce_add_ps(dot);
      mnew = std::max(mnew, s[j]);
    }
    const float alpha = _mm512_cvtss_f32(exp2v(_mm512_set1_ps(m - mnew)));
    for (int j = 0; j < n; j += 16) {
      const __mmask16 live = n - j >= 16 ? 0xFFFF : (1u << (n - j)) - 1;
      const __m512 p = exp2v(_mm512_sub_ps(_mm512_maskz_load_ps(live, s + j), _mm512_set1_ps(mnew)));
      _mm512_mask_store_ps(s + j, live, p);
    }
    float sum = 0.0f;
    for (int c = 0; c < ND; ++c) acc[c] = _mm512_mul_ps(acc[c], _mm512_set1_ps(alpha));
    for (int j = 0; j < n; ++j) {
      const float* vj = v + (j0 + j) * D;
      const __m512 p = _mm512_set1_ps(s[j]);
      for (int c = 0; c < ND; ++c) acc[c] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(cols(c), vj + 16 * c), acc[c]);
      sum += s[j];
    }
    l = l * alpha + sum;
    m = mnew;
  }
  if (ml) {
    ml[0] = m;
    ml[1] = l;
  }
  const __m512 inv = _mm512_set1_ps(ml ? 1.0f : 1.0f / l);
  for (int c = 0; c < ND; ++c) _mm512_mask_storeu_ps(o + 16 * c, cols(c), _mm512_mul_ps(acc[c], inv));
}

template <int D>
void tile(const float* q, const float* k, const float* v, float* o, int rows, Visible vis, float scale) {
  if (rows >= kMinLaneRows) return lane_tile<D>(q, k, v, o, rows, vis, scale);
  for (int r = 0; r < rows; ++r) {
    const int32_t pos = vis.pos0 + r;
    row<D>(q + r * D, k, v, vis.lo(pos), vis.hi(pos), scale, o + r * D, nullptr);
  }
}

// Every head dim that is a multiple of 4 up to kMaxDim: kTiles[D / 4 - 1].
template <int... I>
constexpr auto tiles(std::integer_sequence<int, I...>) {
  return std::array{&tile<4 * (I + 1)>...};
}
template <int... I>
constexpr auto rows(std::integer_sequence<int, I...>) {
  return std::array{&row<4 * (I + 1)>...};
}
constexpr auto kTiles = tiles(std::make_integer_sequence<int, kMaxDim / 4>{});
constexpr auto kRows = rows(std::make_integer_sequence<int, kMaxDim / 4>{});

}  // namespace

// q, o: `rows` consecutive query rows of one head; k, v: that head's K/V [lk, d_head], d_head a
// multiple of 4. Query r sits at key position pos0 + r and sees keys j
// with pos0 + r - window < j <= pos0 + r.
extern "C" int32_t ek_attention_tile_f32(const float* q, const float* k, const float* v, float* o,
                                         int32_t rows, int32_t lk, int32_t d_head, int32_t pos0,
                                         int32_t window, float scale) {
  if (d_head % 4 || d_head < 4 || d_head > kMaxDim || rows < 1 || rows > kLanes) return -1;
  kTiles[d_head / 4 - 1](q, k, v, o, rows, Visible{pos0, window, lk}, scale);
  return 0;
}

// Split-K decode: the row at key position pos, over keys [key_lo, key_hi) of its visible range only;
// o gets the unnormalised output and ml the (base-2 max, weight sum) pair that the caller merges.
extern "C" int32_t ek_attention_row_partial_f32(const float* q, const float* k, const float* v, float* o,
                                                float* ml, int32_t lk, int32_t d_head, int32_t pos,
                                                int32_t window, float scale, int32_t key_lo, int32_t key_hi) {
  if (d_head % 4 || d_head < 4 || d_head > kMaxDim) return -1;
  const Visible vis{pos, window, lk};
  kRows[d_head / 4 - 1](q, k, v, std::max(vis.lo(pos), key_lo), std::min(vis.hi(pos), key_hi), scale, o, ml);
  return 0;
}
