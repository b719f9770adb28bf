// CPU kernels for the pdserve engine: the handful of memory-bound operations where eager
// PyTorch spends most of a step (elementwise chains, and decode attention, which would
// otherwise gather every sequence's KV blocks into a fresh tensor each layer).
//
// Every kernel computes in float32 and rounds to the storage type exactly where the reference
// (transformers' eager Llama) rounds, so bfloat16 results match the torch fallback.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// Conversions between float and the storage type. The bfloat16 ones are branch-free bit
// arithmetic (round to nearest even) so the loops that use them vectorize; c10's own
// conversion checks for NaN with a branch, which stops the vectorizer.
template <typename T>
inline float f32(T x) { return static_cast<float>(x); }

template <>
inline float f32(at::BFloat16 x) {
  return std::bit_cast<float>(static_cast<uint32_t>(x.x) << 16);
}

template <typename T>
inline T from_f32(float f) { return static_cast<T>(f); }

template <>
inline at::BFloat16 from_f32(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return at::BFloat16(static_cast<uint16_t>(bits >> 16), at::BFloat16::from_bits());
}

// Round a float to the storage type and back: a no-op for float32.
template <typename T>
inline float rnd(float x) { return f32(from_f32<T>(x)); }

// exp(x) for x <= ~88, accurate to a few ulp; plain arithmetic so loops calling it vectorize
// (libm's expf does not). Range reduction x = n*ln2 + r, then a degree-6 polynomial for e^r.
inline float fast_exp(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return std::bit_cast<float>(std::bit_cast<int32_t>(p) + (static_cast<int32_t>(n) << 23));
}

template <typename T>
void rms_norm_rows(T* out, const T* x, const T* w, int64_t rows, int64_t h, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * h;
      T* o = out + r * h;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < h; ++i) ss += f32(xr[i]) * f32(xr[i]);
      const float inv = 1.f / std::sqrt(ss / h + eps);
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) o[i] = from_f32<T>(f32(w[i]) * rnd<T>(f32(xr[i]) * inv));
    }
  });
}

// residual += x; x = rms_norm(residual) * w   (both in place)
template <typename T>
void add_rms_norm_rows(T* x, T* res, const T* w, int64_t rows, int64_t h, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* xr = x + r * h;
      T* rr = res + r * h;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < h; ++i) {
        const float v = rnd<T>(f32(xr[i]) + f32(rr[i]));
        rr[i] = from_f32<T>(v);
        ss += v * v;
      }
      const float inv = 1.f / std::sqrt(ss / h + eps);
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) xr[i] = from_f32<T>(f32(w[i]) * rnd<T>(f32(rr[i]) * inv));
    }
  });
}

template <typename T>
void silu_and_mul_rows(T* out, const T* gu, int64_t rows, int64_t inter) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* g = gu + r * 2 * inter;
      const T* u = g + inter;
      T* o = out + r * inter;
      // In chunks through a float buffer: one simple loop per stage vectorizes where the
      // fused expression did not.
      constexpr int64_t CHUNK = 256;
      float buf[CHUNK];
      for (int64_t start = 0; start < inter; start += CHUNK) {
        const int64_t n = std::min(CHUNK, inter - start);
        for (int64_t i = 0; i < n; ++i) buf[i] = f32(g[start + i]);
        for (int64_t i = 0; i < n; ++i) buf[i] = rnd<T>(buf[i] / (1.f + fast_exp(-buf[i])));
        for (int64_t i = 0; i < n; ++i) o[start + i] = from_f32<T>(buf[i] * f32(u[start + i]));
      }
    }
  });
}

// Rotate-half RoPE, in place, on the first `heads` heads of each row of `x` (row stride given).
template <typename T>
void rope_rows(T* x, int64_t row_stride, const int64_t* pos, const float* cos, const float* sin,
               int64_t rows, int64_t heads, int64_t d) {
  const int64_t half = d / 2;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> c(d), s(d);
    for (int64_t r = begin; r < end; ++r) {
      const float* cr = cos + pos[r] * d;
      const float* sr = sin + pos[r] * d;
      for (int64_t i = 0; i < d; ++i) {
        c[i] = rnd<T>(cr[i]);
        s[i] = rnd<T>(sr[i]);
      }
      for (int64_t h = 0; h < heads; ++h) {
        T* v = x + r * row_stride + h * d;
        for (int64_t i = 0; i < half; ++i) {
          const float a = f32(v[i]), b = f32(v[i + half]);
          const float lo = rnd<T>(rnd<T>(a * c[i]) + rnd<T>(-b * s[i]));
          const float hi = rnd<T>(rnd<T>(b * c[i + half]) + rnd<T>(a * s[i + half]));
          v[i] = from_f32<T>(lo);
          v[i + half] = from_f32<T>(hi);
        }
      }
    }
  });
}

// One query token per sequence attends to its whole context, read in place from the paged
// pool. Work is split over (sequence, KV head); each K/V row is converted to float once and
// used by the whole group of query heads that share it (GQA).
// D > 0 fixes the head size at compile time (fully unrolled inner loops); D == 0 reads it from
// `head_dim` at run time.
template <typename T, int D>
void decode_attention_impl(T* out, const T* q, const T* kc, const T* vc,
                           int64_t ks0, int64_t ks1, int64_t ks2,
                           int64_t vs0, int64_t vs1, int64_t vs2,
                           const int64_t* tables, int64_t max_blocks, const int64_t* lens,
                           int64_t B, int64_t hq, int64_t hkv, int64_t head_dim, int64_t bs,
                           float scale) {
  const int64_t d = D > 0 ? D : head_dim;
  const int64_t group = hq / hkv;
  at::parallel_for(0, B * hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * d), acc(group * d), row(d), scores;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / hkv, h = w % hkv;
      const int64_t len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      scores.resize(group * len);
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < d; ++i) qf[g * d + i] = f32(q[(b * hq + h * group + g) * d + i]) * scale;
      // Blocks outer, tokens inner: no division per token on the hot path.
      for (int64_t start = 0, j = 0; start < len; start += bs, ++j) {
        const T* tile = kc + table[j] * ks0 + h * ks1;
        const int64_t n = std::min(bs, len - start);
        for (int64_t t = 0; t < n; ++t) {
          const T* k = tile + t * ks2;
#pragma omp simd
          for (int64_t i = 0; i < d; ++i) row[i] = f32(k[i]);
          for (int64_t g = 0; g < group; ++g) {
            const float* qg = qf.data() + g * d;
            float sc = 0.f;
#pragma omp simd reduction(+ : sc)
            for (int64_t i = 0; i < d; ++i) sc += qg[i] * row[i];
            scores[g * len + start + t] = sc;
          }
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * len;
        float mx = sg[0];
        for (int64_t t = 1; t < len; ++t) mx = std::max(mx, sg[t]);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < len; ++t) {
          sg[t] = fast_exp(sg[t] - mx);
          sum += sg[t];
        }
        const float inv = 1.f / sum;
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) sg[t] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = 0, j = 0; start < len; start += bs, ++j) {
        const T* tile = vc + table[j] * vs0 + h * vs1;
        const int64_t n = std::min(bs, len - start);
        for (int64_t t = 0; t < n; ++t) {
          const T* v = tile + t * vs2;
#pragma omp simd
          for (int64_t i = 0; i < d; ++i) row[i] = f32(v[i]);
          for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * len + start + t];
            float* ag = acc.data() + g * d;
#pragma omp simd
            for (int64_t i = 0; i < d; ++i) ag[i] += p * row[i];
          }
        }
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < d; ++i) out[(b * hq + h * group + g) * d + i] = from_f32<T>(acc[g * d + i]);
    }
  });
}

#if defined(__AVX512F__)
// The same attention in one pass over the context, with the head vector held in registers.
// Each block's key tile and value tile lie next to each other in the pool (4 KB for 16 tokens
// of a 64-wide bfloat16 head), so the pass reads them together while the next block's tiles
// are prefetched: the pool's blocks are scattered, and the hardware prefetcher only learns a
// stream after it has missed on it. Softmax is online (running max and sum per query, the
// accumulators rescaled when the max moves), 16 tokens at a time. The queries of the whole GQA
// group and their accumulators stay in registers for a whole sequence; with AVX512-BF16 a key
// row costs D/32 bfloat16 dot-product instructions per query.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// fast_exp on 16 floats.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.3981999507e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
}

inline void prefetch_rows(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

// Scores of one key row against the G queries of its group.
template <typename T, int D, int G>
struct KeyDots {
  static constexpr int V = D / 16;
  __m512 qv[G][V];  // queries in float32, times the scale
  void load(const T* q, float scale) {
    for (int g = 0; g < G; ++g)
      for (int v = 0; v < V; ++v)
        qv[g][v] = _mm512_mul_ps(load16(q + g * D + v * 16), _mm512_set1_ps(scale));
  }
  void score(const T* k, float* s, int stride) const {
    __m512 kr[V];
    for (int v = 0; v < V; ++v) kr[v] = load16(k + v * 16);
    for (int g = 0; g < G; ++g) {
      __m512 a = _mm512_mul_ps(qv[g][0], kr[0]);
      for (int v = 1; v < V; ++v) a = _mm512_fmadd_ps(qv[g][v], kr[v], a);
      s[g * stride] = _mm512_reduce_add_ps(a);
    }
  }
};

#if defined(__AVX512BF16__)
template <int D, int G>
struct KeyDots<at::BFloat16, D, G> {
  static constexpr int V = D / 32;
  __m512bh qv[G][V];  // queries as stored, bfloat16 pairs; the scale is applied to the sum
  float scale;
  void load(const at::BFloat16* q, float s) {
    scale = s;
    for (int g = 0; g < G; ++g)
      for (int v = 0; v < V; ++v)
        qv[g][v] = (__m512bh)_mm512_loadu_si512(q + g * D + v * 32);
  }
  void score(const at::BFloat16* k, float* s, int stride) const {
    __m512bh kr[V];
    for (int v = 0; v < V; ++v) kr[v] = (__m512bh)_mm512_loadu_si512(k + v * 32);
    for (int g = 0; g < G; ++g) {
      __m512 a = _mm512_dpbf16_ps(_mm512_setzero_ps(), qv[g][0], kr[0]);
      for (int v = 1; v < V; ++v) a = _mm512_dpbf16_ps(a, qv[g][v], kr[v]);
      s[g * stride] = _mm512_reduce_add_ps(a) * scale;
    }
  }
};
#endif

template <typename T, int D, int G>
void decode_attention_avx512(T* out, const T* q, const T* kc, const T* vc,
                             int64_t ks0, int64_t ks1, int64_t ks2,
                             int64_t vs0, int64_t vs1, int64_t vs2,
                             const int64_t* tables, int64_t max_blocks, const int64_t* lens,
                             int64_t B, int64_t hq, int64_t hkv, int64_t, int64_t bs,
                             float scale) {
  constexpr int V = D / 16;
  at::parallel_for(0, B * hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / hkv, h = w % hkv, len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      KeyDots<T, D, G> dots;
      dots.load(q + (b * hq + h * G) * D, scale);
      float mx[G], sum[G];
      __m512 acc[G][V];
      for (int g = 0; g < G; ++g) {
        mx[g] = -INFINITY;
        sum[g] = 0.f;
        for (int v = 0; v < V; ++v) acc[g][v] = _mm512_setzero_ps();
      }
      alignas(64) float s[G][16];
      for (int64_t start = 0, j = 0; start < len; start += bs, ++j) {
        const T* ktile = kc + table[j] * ks0 + h * ks1;
        const T* vtile = vc + table[j] * vs0 + h * vs1;
        if (start + bs < len) {
          const int64_t next = std::min(bs, len - start - bs);
          prefetch_rows(kc + table[j + 1] * ks0 + h * ks1, next * ks2 * sizeof(T));
          prefetch_rows(vc + table[j + 1] * vs0 + h * vs1, next * vs2 * sizeof(T));
        }
        const int64_t n = std::min(bs, len - start);
        for (int64_t c = 0; c < n; c += 16) {
          const int cn = static_cast<int>(std::min<int64_t>(16, n - c));
          const __mmask16 valid = static_cast<__mmask16>((1u << cn) - 1u);
          for (int t = 0; t < cn; ++t) dots.score(ktile + (c + t) * ks2, &s[0][t], 16);
          for (int g = 0; g < G; ++g) {
            const __m512 sv = _mm512_load_ps(s[g]);
            const float m = std::max(mx[g], _mm512_mask_reduce_max_ps(valid, sv));
            if (m > mx[g]) {
              const float corr = fast_exp(mx[g] - m);
              sum[g] *= corr;
              for (int v = 0; v < V; ++v)
                acc[g][v] = _mm512_mul_ps(acc[g][v], _mm512_set1_ps(corr));
              mx[g] = m;
            }
            const __m512 p = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(sv, _mm512_set1_ps(m))));
            sum[g] += _mm512_reduce_add_ps(p);
            _mm512_store_ps(s[g], p);
          }
          for (int t = 0; t < cn; ++t) {
            const T* vr = vtile + (c + t) * vs2;
            __m512 val[V];
            for (int v = 0; v < V; ++v) val[v] = load16(vr + v * 16);
            for (int g = 0; g < G; ++g) {
              const __m512 p = _mm512_set1_ps(s[g][t]);
              for (int v = 0; v < V; ++v) acc[g][v] = _mm512_fmadd_ps(p, val[v], acc[g][v]);
            }
          }
        }
      }
      for (int g = 0; g < G; ++g) {
        alignas(64) float row[D];
        const __m512 inv = _mm512_set1_ps(1.f / sum[g]);
        for (int v = 0; v < V; ++v) _mm512_store_ps(row + v * 16, _mm512_mul_ps(acc[g][v], inv));
        T* o = out + (b * hq + h * G + g) * D;
        for (int i = 0; i < D; ++i) o[i] = from_f32<T>(row[i]);
      }
    }
  });
}

template <typename T, int D>
auto avx512_for_group(int64_t group) -> decltype(&decode_attention_avx512<T, D, 1>) {
  switch (group) {
    case 1: return &decode_attention_avx512<T, D, 1>;
    case 2: return &decode_attention_avx512<T, D, 2>;
    case 3: return &decode_attention_avx512<T, D, 3>;
    case 4: return &decode_attention_avx512<T, D, 4>;
    case 5: return &decode_attention_avx512<T, D, 5>;
    case 6: return &decode_attention_avx512<T, D, 6>;
    case 7: return &decode_attention_avx512<T, D, 7>;
    case 8: return &decode_attention_avx512<T, D, 8>;
    default: return nullptr;
  }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// Causal attention for a run of new prompt tokens, over the paged pool (which already holds
// their keys and values, and any cached prefix before them). Flash-attention style: a tile of
// 16 query positions of every query head in one KV head's group against tiles of 16 keys, the
// scores of a query row against 16 keys computed as one vector (AVX512-BF16 dot products over
// pairs of head dimensions, so no horizontal sums), then an online softmax and the value rows
// added in float32. Each key tile is transposed once and serves all G*16 query rows.
template <int D>
void prefill_attention_bf16(at::BFloat16* out, const at::BFloat16* q, int64_t q_row,
                            const at::BFloat16* kc, const at::BFloat16* vc, int64_t ks0,
                            int64_t ks1, int64_t ks2, int64_t vs0, int64_t vs1, int64_t vs2,
                            const int64_t* table, int64_t context, int64_t n, int64_t hq,
                            int64_t hkv, int64_t bs, float scale) {
  constexpr int P = D / 2;   // bfloat16 pairs per row
  constexpr int V = D / 16;  // float32 vectors per row
  const int64_t group = hq / hkv;
  const int64_t qtiles = (n + 15) / 16;
  at::parallel_for(0, hkv * qtiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t rows = group * 16;
    std::vector<float> acc(rows * D), mx(rows), sum(rows), prob(rows * 16);
    std::vector<int32_t> qtile(rows * P);  // this tile's query rows, pairs of dims, by head
    alignas(64) int32_t kt[P][16];  // key tile, pairs of dims by key
    alignas(64) float vt[16][D];    // value tile in float32
    for (int64_t w = begin; w < end; ++w) {
      const int64_t h = w / qtiles, q0 = (w % qtiles) * 16;
      const int64_t qn = std::min<int64_t>(16, n - q0);
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(mx.begin(), mx.end(), -INFINITY);
      std::fill(sum.begin(), sum.end(), 0.f);
      std::fill(qtile.begin(), qtile.end(), 0);
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < qn; ++i)
          std::memcpy(&qtile[(g * 16 + i) * P], q + (q0 + i) * q_row + (h * group + g) * D,
                      D * sizeof(at::BFloat16));
      const int64_t keys = context + q0 + qn;  // the last query row sees this many
      for (int64_t k0 = 0; k0 < keys; k0 += 16) {
        const int kn = static_cast<int>(std::min<int64_t>(16, keys - k0));
        for (int j = 0; j < 16; ++j) {
          if (j < kn) {
            const int64_t key = k0 + j, blk = table[key / bs], off = key % bs;
            const auto* kr = reinterpret_cast<const int32_t*>(kc + blk * ks0 + h * ks1 + off * ks2);
            for (int p = 0; p < P; ++p) kt[p][j] = kr[p];
            const at::BFloat16* vr = vc + blk * vs0 + h * vs1 + off * vs2;
            for (int v = 0; v < V; ++v) _mm512_store_ps(&vt[j][v * 16], load16(vr + v * 16));
          } else {
            for (int p = 0; p < P; ++p) kt[p][j] = 0;
            for (int v = 0; v < V; ++v) _mm512_store_ps(&vt[j][v * 16], _mm512_setzero_ps());
          }
        }
        for (int64_t g = 0; g < group; ++g) {
          const int32_t* qg = &qtile[g * 16 * P];
          // Query rows of this head whose position reaches this key tile.
          const int64_t first = std::max<int64_t>(0, k0 - context - q0);
          if (first >= qn) continue;
          __m512 s[16];
          for (int i = 0; i < 16; ++i) s[i] = _mm512_setzero_ps();
          for (int p = 0; p < P; ++p) {
            const __m512bh kz = (__m512bh)_mm512_load_si512(kt[p]);
            for (int i = 0; i < 16; ++i)  // all 16 rows: the accumulators stay in registers
              s[i] = _mm512_dpbf16_ps(s[i], (__m512bh)_mm512_set1_epi32(qg[i * P + p]), kz);
          }
          for (int64_t i = first; i < qn; ++i) {
            const int64_t r = g * 16 + i;
            // Keys up to this row's own position (and not past the tile's end).
            const int64_t last = std::min<int64_t>(kn - 1, context + q0 + i - k0);
            const __mmask16 valid = static_cast<__mmask16>((1u << (last + 1)) - 1u);
            const __m512 sc = _mm512_mul_ps(s[i], _mm512_set1_ps(scale));
            const float m = std::max(mx[r], _mm512_mask_reduce_max_ps(valid, sc));
            float* a = acc.data() + r * D;
            if (m > mx[r]) {
              const float corr = fast_exp(mx[r] - m);
              sum[r] *= corr;
              for (int v = 0; v < V; ++v)
                _mm512_storeu_ps(a + v * 16,
                                 _mm512_mul_ps(_mm512_loadu_ps(a + v * 16), _mm512_set1_ps(corr)));
              mx[r] = m;
            }
            const __m512 pr = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(sc, _mm512_set1_ps(m))));
            sum[r] += _mm512_reduce_add_ps(pr);
            float* pp = prob.data() + r * 16;
            _mm512_storeu_ps(pp, pr);
            __m512 o[V];
            for (int v = 0; v < V; ++v) o[v] = _mm512_loadu_ps(a + v * 16);
            for (int j = 0; j <= last; ++j) {
              const __m512 pj = _mm512_set1_ps(pp[j]);
              for (int v = 0; v < V; ++v) o[v] = _mm512_fmadd_ps(pj, _mm512_load_ps(&vt[j][v * 16]), o[v]);
            }
            for (int v = 0; v < V; ++v) _mm512_storeu_ps(a + v * 16, o[v]);
          }
        }
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < qn; ++i) {
          const int64_t r = g * 16 + i;
          const float inv = 1.f / sum[r];
          at::BFloat16* o = out + ((q0 + i) * hq + h * group + g) * D;
          for (int d = 0; d < D; ++d) o[d] = from_f32<at::BFloat16>(acc[r * D + d] * inv);
        }
    }
  });
}
#endif

#define PDSERVE_DISPATCH(dtype, ...)                                   \
  [&] {                                                                \
    if (dtype == at::kFloat) { using scalar_t = float; __VA_ARGS__(); } \
    else if (dtype == at::kBFloat16) { using scalar_t = at::BFloat16; __VA_ARGS__(); } \
    else if (dtype == at::kHalf) { using scalar_t = at::Half; __VA_ARGS__(); } \
    else TORCH_CHECK(false, "pdserve kernels: unsupported dtype ", dtype); \
  }()

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1 && t.stride(0) == t.size(1), name,
              " must be a contiguous 2-D tensor");
}

}  // namespace

void rms_norm(at::Tensor out, at::Tensor x, at::Tensor w, double eps) {
  check_rows(x, "x");
  check_rows(out, "out");
  PDSERVE_DISPATCH(x.scalar_type(), [&] {
    rms_norm_rows<scalar_t>(out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                            x.size(0), x.size(1), static_cast<float>(eps));
  });
}

void add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor w, double eps) {
  check_rows(x, "x");
  check_rows(residual, "residual");
  PDSERVE_DISPATCH(x.scalar_type(), [&] {
    add_rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
                                w.data_ptr<scalar_t>(), x.size(0), x.size(1), static_cast<float>(eps));
  });
}

void silu_and_mul(at::Tensor out, at::Tensor gate_up) {
  check_rows(gate_up, "gate_up");
  check_rows(out, "out");
  PDSERVE_DISPATCH(gate_up.scalar_type(), [&] {
    silu_and_mul_rows<scalar_t>(out.data_ptr<scalar_t>(), gate_up.data_ptr<scalar_t>(),
                                gate_up.size(0), out.size(1));
  });
}

void rope(at::Tensor x, int64_t heads, int64_t head_dim, at::Tensor positions, at::Tensor cos,
          at::Tensor sin) {
  check_rows(x, "x");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat, "cos/sin: float32");
  PDSERVE_DISPATCH(x.scalar_type(), [&] {
    rope_rows<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), positions.data_ptr<int64_t>(),
                        cos.data_ptr<float>(), sin.data_ptr<float>(), x.size(0), heads, head_dim);
  });
}

void decode_attention(at::Tensor out, at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                      at::Tensor block_tables, at::Tensor context_lens, double scale) {
  TORCH_CHECK(q.is_contiguous() && out.is_contiguous(), "q and out must be contiguous");
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, "cache rows must be contiguous");
  TORCH_CHECK(block_tables.is_contiguous() && context_lens.is_contiguous(), "tables contiguous");
  PDSERVE_DISPATCH(q.scalar_type(), [&] {
    auto run = [&](auto impl) {
      impl(out.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(),
           v_cache.data_ptr<scalar_t>(), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
           v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
           block_tables.data_ptr<int64_t>(), block_tables.size(1),
           context_lens.data_ptr<int64_t>(), q.size(0), q.size(1), k_cache.size(1), q.size(2),
           k_cache.size(2), static_cast<float>(scale));
    };
#if defined(__AVX512F__)
    if constexpr (!std::is_same_v<scalar_t, at::Half>) {
      const int64_t group = q.size(1) / k_cache.size(1);
      auto fast = q.size(2) == 64    ? avx512_for_group<scalar_t, 64>(group)
                  : q.size(2) == 128 ? avx512_for_group<scalar_t, 128>(group)
                                     : nullptr;
      if (fast != nullptr) return run(fast);
    }
#endif
    if (q.size(2) == 64) run(decode_attention_impl<scalar_t, 64>);
    else if (q.size(2) == 128) run(decode_attention_impl<scalar_t, 128>);
    else run(decode_attention_impl<scalar_t, 0>);
  });
}

bool has_prefill_attention() {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

// Causal attention of `q` [n, hq, head_dim], a sequence's new tokens at positions context ..
// context + n - 1, whose keys and values are already in their cache slots.
void prefill_attention(at::Tensor out, at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                       at::Tensor block_table, int64_t context, double scale) {
  TORCH_CHECK(has_prefill_attention(), "prefill_attention needs AVX512-BF16");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k_cache.scalar_type() == at::kBFloat16,
              "prefill_attention: bfloat16 only");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2),
              "q rows must hold contiguous heads");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == q.sizes(), "out: contiguous, shaped as q");
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, "cache rows must be contiguous");
  TORCH_CHECK(block_table.is_contiguous() && block_table.scalar_type() == at::kLong,
              "block_table: contiguous int64");
  const int64_t n = q.size(0), hq = q.size(1), d = q.size(2), hkv = k_cache.size(1);
  const int64_t bs = k_cache.size(2);
  TORCH_CHECK(hq % hkv == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(block_table.size(0) * bs >= context + n, "block_table too short for the tokens");
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  auto run = [&](auto impl) {
    impl(out.data_ptr<at::BFloat16>(), q.data_ptr<at::BFloat16>(), q.stride(0),
         k_cache.data_ptr<at::BFloat16>(), v_cache.data_ptr<at::BFloat16>(), k_cache.stride(0),
         k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
         v_cache.stride(2), block_table.data_ptr<int64_t>(), context, n, hq, hkv, bs,
         static_cast<float>(scale));
  };
  if (d == 64) return run(prefill_attention_bf16<64>);
  if (d == 128) return run(prefill_attention_bf16<128>);
#endif
  TORCH_CHECK(false, "prefill_attention: head_dim 64 or 128 only, got ", d);
}

// Store this step's keys and values [T, kv_heads, head_dim] (rows of a wider tensor: strides
// given) into their cache slots: one call for both instead of two advanced-index writes.
void write_kv(at::Tensor k_cache, at::Tensor v_cache, at::Tensor k, at::Tensor v,
              at::Tensor slot_blocks, at::Tensor slot_offsets) {
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k_cache.stride(3) == 1 &&
              v_cache.stride(3) == 1, "write_kv: head rows must be contiguous");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type(), "write_kv: dtype mismatch");
  const int64_t tokens = k.size(0), heads = k.size(1);
  const int64_t row_bytes = k.size(2) * k.element_size();
  const int64_t* blocks = slot_blocks.data_ptr<int64_t>();
  const int64_t* offsets = slot_offsets.data_ptr<int64_t>();
  auto* kc = static_cast<char*>(k_cache.data_ptr());
  auto* vc = static_cast<char*>(v_cache.data_ptr());
  const auto* ks = static_cast<const char*>(k.data_ptr());
  const auto* vs = static_cast<const char*>(v.data_ptr());
  const int64_t es = k.element_size();
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t kdst = (blocks[t] * k_cache.stride(0) + h * k_cache.stride(1) +
                              offsets[t] * k_cache.stride(2)) * es;
        const int64_t vdst = (blocks[t] * v_cache.stride(0) + h * v_cache.stride(1) +
                              offsets[t] * v_cache.stride(2)) * es;
        std::memcpy(kc + kdst, ks + (t * k.stride(0) + h * k.stride(1)) * es, row_bytes);
        std::memcpy(vc + vdst, vs + (t * v.stride(0) + h * v.stride(1)) * es, row_bytes);
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "out = rms_norm(x) * w");
  m.def("add_rms_norm", &add_rms_norm, "residual += x; x = rms_norm(residual) * w");
  m.def("silu_and_mul", &silu_and_mul, "out = silu(gate) * up");
  m.def("rope", &rope, "rotate-half RoPE in place on the first heads of each row");
  m.def("decode_attention", &decode_attention, "one-token attention over the paged KV pool");
  m.def("has_prefill_attention", &has_prefill_attention, "built with AVX512-BF16");
  m.def("prefill_attention", &prefill_attention, "causal attention of a prompt chunk over the paged KV pool");
  m.def("write_kv", &write_kv, "store new keys and values in their cache slots");
}
