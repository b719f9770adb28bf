// CPU kernels for the pdserve engine: the handful of memory-bound operations where eager
// PyTorch spends most of a step (elementwise chains, and decode attention, which would
// otherwise gather every sequence's KV blocks into a fresh tensor each layer).
//
// Every kernel computes in float32 and rounds to the storage type exactly where the reference
// (transformers' eager Llama) rounds, so bfloat16 results match the torch fallback.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

template <typename T>
inline float f32(T x) { return static_cast<float>(x); }

// Round a float to the storage type and back: a no-op for float32.
template <typename T>
inline float rnd(float x) { return static_cast<float>(static_cast<T>(x)); }

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
      for (int64_t i = 0; i < h; ++i) o[i] = static_cast<T>(f32(w[i]) * rnd<T>(f32(xr[i]) * inv));
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
        rr[i] = static_cast<T>(v);
        ss += v * v;
      }
      const float inv = 1.f / std::sqrt(ss / h + eps);
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) xr[i] = static_cast<T>(f32(w[i]) * rnd<T>(f32(rr[i]) * inv));
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
#pragma omp simd
      for (int64_t i = 0; i < inter; ++i) {
        const float gv = f32(g[i]);
        o[i] = static_cast<T>(rnd<T>(gv / (1.f + std::exp(-gv))) * f32(u[i]));
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
          v[i] = static_cast<T>(lo);
          v[i + half] = static_cast<T>(hi);
        }
      }
    }
  });
}

// One query token per sequence attends to its whole context, read in place from the paged
// pool. Work is split over (sequence, KV head); each K/V row is loaded once for the whole
// group of query heads that share it (GQA).
template <typename T>
void decode_attention_impl(T* out, const T* q, const T* kc, const T* vc,
                           int64_t ks0, int64_t ks1, int64_t ks2,
                           int64_t vs0, int64_t vs1, int64_t vs2,
                           const int64_t* tables, int64_t max_blocks, const int64_t* lens,
                           int64_t B, int64_t hq, int64_t hkv, int64_t d, int64_t bs, float scale) {
  const int64_t group = hq / hkv;
  at::parallel_for(0, B * hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * d), acc(group * d), scores;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / hkv, h = w % hkv;
      const int64_t len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      scores.assign(group * len, 0.f);
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < d; ++i) qf[g * d + i] = f32(q[(b * hq + h * group + g) * d + i]) * scale;
      for (int64_t t = 0; t < len; ++t) {
        const T* k = kc + table[t / bs] * ks0 + h * ks1 + (t % bs) * ks2;
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = qf.data() + g * d;
          float sc = 0.f;
#pragma omp simd reduction(+ : sc)
          for (int64_t i = 0; i < d; ++i) sc += qg[i] * f32(k[i]);
          scores[g * len + t] = sc;
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * len;
        float mx = sg[0];
        for (int64_t t = 1; t < len; ++t) mx = std::max(mx, sg[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < len; ++t) {
          sg[t] = std::exp(sg[t] - mx);
          sum += sg[t];
        }
        const float inv = 1.f / sum;
        for (int64_t t = 0; t < len; ++t) sg[t] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const T* v = vc + table[t / bs] * vs0 + h * vs1 + (t % bs) * vs2;
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * len + t];
          float* ag = acc.data() + g * d;
#pragma omp simd
          for (int64_t i = 0; i < d; ++i) ag[i] += p * f32(v[i]);
        }
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < d; ++i) out[(b * hq + h * group + g) * d + i] = static_cast<T>(acc[g * d + i]);
    }
  });
}

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
    decode_attention_impl<scalar_t>(
        out.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(),
        v_cache.data_ptr<scalar_t>(), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.data_ptr<int64_t>(),
        block_tables.size(1), context_lens.data_ptr<int64_t>(), q.size(0), q.size(1),
        k_cache.size(1), q.size(2), k_cache.size(2), static_cast<float>(scale));
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "out = rms_norm(x) * w");
  m.def("add_rms_norm", &add_rms_norm, "residual += x; x = rms_norm(residual) * w");
  m.def("silu_and_mul", &silu_and_mul, "out = silu(gate) * up");
  m.def("rope", &rope, "rotate-half RoPE in place on the first heads of each row");
  m.def("decode_attention", &decode_attention, "one-token attention over the paged KV pool");
}
