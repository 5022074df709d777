// The NF4 and FP4 formats (bitsandbytes' 4-bit, blockwise absmax, optional double quantization):
// CPU kernels bit-identical to reference.cpp (which the tests check), the dispatch to the CUDA
// glue, the fused matrix-vector product, and the format's entry points for format.hpp's table.
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "format_common.hpp"
#include "formats.hpp"
#include "gemv_q8.hpp"
#ifdef QINTERP_HAVE_CUDA
#include "../cuda_glue/cuda_glue.hpp"
#endif

namespace qinterp::quant {

using namespace detail;

namespace {

// One quantization block of the 4-bit format; s is scratch of block floats.
inline void encode_block(const float* x, int64_t len, bool full, ref::FourBit t, const float* bounds,
                         const uint8_t* order, uint8_t* out, float* absmax, float* s) {
  float m = 0.0f;
  for (int64_t i = 0; i < len; ++i) m = std::max(m, std::fabs(x[i]));
  const float mc = std::max(m, 1e-38f);
  if (full) {
    *absmax = m;
    const float inv = 1.0f / mc;
    for (int64_t i = 0; i < len; ++i) s[i] = std::min(1.0f, std::max(-1.0f, x[i] * inv));
  } else {
    *absmax = mc;
    for (int64_t i = 0; i < len; ++i) s[i] = std::min(1.0f, std::max(-1.0f, x[i] / mc));
  }
  if (len & 1) s[len] = 0.0f;
  uint8_t k[4096 + 1];
  const int64_t even = len + (len & 1);
  for (int64_t i = 0; i < even; ++i) {  // count of bounds below s: vectorizes, unlike a search
    int c = 0;
    for (int j = 0; j < 15; ++j) c += bounds[j] < s[i];
    k[i] = static_cast<uint8_t>(c);
  }
  if (t == ref::FourBit::FP4)
    for (int64_t i = 0; i < even; ++i) k[i] = order[k[i]];
  for (int64_t i = 0; i < even; i += 2) out[i / 2] = static_cast<uint8_t>((k[i] << 4) | k[i + 1]);
}

#ifdef QINTERP_X86_AVX2
// 16 codes from 8 packed bytes per step: nibbles become lane indices into the 16-entry table
// (two 8-float permutes and a blend), times the block's absmax, stored as float32, or rounded to
// fp16 by F16C / to bf16 by integer round-to-nearest-even — the same values as the scalar loop.
template <int kOut>  // 0 float32, 1 float16, 2 bfloat16
__attribute__((target("avx2,f16c"))) void decode_blocks_avx2(const uint8_t* p, const float* absmax, int64_t b0,
                                                              int64_t b1, int64_t block, const float* code,
                                                              void* out) {
  const __m256 tlo = _mm256_loadu_ps(code), thi = _mm256_loadu_ps(code + 8);
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m256i one = _mm256_set1_epi32(1), round = _mm256_set1_epi32(0x7fff);
  for (int64_t b = b0; b < b1; ++b) {
    const __m256 va = _mm256_set1_ps(absmax[b]);
    for (int64_t i = b * block, end = i + block; i < end; i += 16) {
      const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i / 2));
      const __m128i idx = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
      __m256 v[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i k = _mm256_cvtepu8_epi32(h ? _mm_srli_si128(idx, 8) : idx);
        const __m256 hi_sel = _mm256_castsi256_ps(_mm256_slli_epi32(k, 28));  // bit 3 -> sign bit
        v[h] = _mm256_mul_ps(
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, k), _mm256_permutevar8x32_ps(thi, k), hi_sel), va);
      }
      if (kOut == 0) {
        _mm256_storeu_ps(static_cast<float*>(out) + i, v[0]);
        _mm256_storeu_ps(static_cast<float*>(out) + i + 8, v[1]);
      } else if (kOut == 1) {
        const __m256i h2 = _mm256_set_m128i(_mm256_cvtps_ph(v[1], _MM_FROUND_TO_NEAREST_INT),
                                            _mm256_cvtps_ph(v[0], _MM_FROUND_TO_NEAREST_INT));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i), h2);
      } else {
        __m256i r[2];
        for (int h = 0; h < 2; ++h) {
          const __m256i bits = _mm256_castps_si256(v[h]);
          const __m256i bias = _mm256_add_epi32(round, _mm256_and_si256(_mm256_srli_epi32(bits, 16), one));
          r[h] = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
        }
        // packus works per 128-bit lane: fix the order with a cross-lane permute
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xd8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i), packed);
      }
    }
  }
}

// 16 codes from 8 packed bytes as float32 table values, not yet scaled (decode_blocks_avx2's steps).
__attribute__((target("avx2,fma"))) inline void decode16(const uint8_t* p, __m256 tlo, __m256 thi, __m128i m4,
                                                         __m256& v0, __m256& v1) {
  const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i idx = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
  const __m256i k0 = _mm256_cvtepu8_epi32(idx), k1 = _mm256_cvtepu8_epi32(_mm_srli_si128(idx, 8));
  v0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, k0), _mm256_permutevar8x32_ps(thi, k0),
                        _mm256_castsi256_ps(_mm256_slli_epi32(k0, 28)));  // bit 3 -> sign bit
  v1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, k1), _mm256_permutevar8x32_ps(thi, k1),
                        _mm256_castsi256_ps(_mm256_slli_epi32(k1, 28)));
}

// 32 codes from 16 packed bytes as float32 table values, not yet scaled: the four bytes of each
// table entry are looked up by pshufb (high nibbles in the low lane, low nibbles in the high lane)
// and interleaved back into floats. The four vectors hold the codes in the order of
// fourbit_slot_order, so x is permuted once per call to match (permute_x32).
__attribute__((target("avx2,fma"))) inline void decode32(const uint8_t* p, const __m256i tb[4], __m256 v[4]) {
  // The 16 bytes in both lanes by a broadcast load, each lane's nibbles picked by a dword blend, so
  // that the lookups and interleaves are the loop's only shuffle-unit µops (the unit that bounds it).
  const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), lo = _mm256_and_si256(raw, m4);
  const __m256i idx = _mm256_blend_epi32(hi, lo, 0xF0);  // high nibbles in the low lane, low in the high
  const __m256i b0 = _mm256_shuffle_epi8(tb[0], idx), b1 = _mm256_shuffle_epi8(tb[1], idx);
  const __m256i b2 = _mm256_shuffle_epi8(tb[2], idx), b3 = _mm256_shuffle_epi8(tb[3], idx);
  const __m256i lo01 = _mm256_unpacklo_epi8(b0, b1), hi01 = _mm256_unpackhi_epi8(b0, b1);
  const __m256i lo23 = _mm256_unpacklo_epi8(b2, b3), hi23 = _mm256_unpackhi_epi8(b2, b3);
  v[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(lo01, lo23));
  v[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(lo01, lo23));
  v[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(hi01, hi23));
  v[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(hi01, hi23));
}

// Code index held by slot s (0..31) of decode32's output: vector s / 8, lane (s % 8) / 4 (low
// lane even codes, high lane odd), element s % 4 of the lane's quarter.
inline int fourbit_slot_order(int s) { return 2 * (4 * (s / 8) + s % 4) + (s % 8) / 4; }

// n floats (n % 32 == 0) with each run of 32 in decode32's order.
void permute_x32(const float* src, int64_t n, float* dst) {
  int order[32];
  for (int s = 0; s < 32; ++s) order[s] = fourbit_slot_order(s);
  for (int64_t i = 0; i < n; i += 32)
    for (int s = 0; s < 32; ++s) dst[i + s] = src[i + order[s]];
}

// x [.., cols] float32 with each run of 32 columns in decode32's order (cols % 32 == 0).
at::Tensor permute_x32(const at::Tensor& x) {
  const at::Tensor xs = x.contiguous();
  at::Tensor out = at::empty(xs.sizes(), xs.options());
  permute_x32(xs.data_ptr<float>(), xs.numel(), out.data_ptr<float>());
  return out;
}

// The common layout (every row a whole number of blocks of 32k codes), NX input rows, x permuted
// by permute_x32: y[k, r] = sum over the row's blocks b of absmax[b] * sum_{c in b} code * x[k, c].
// The block's absmax multiplies its partial sum once instead of every weight (one rounding per
// block more than dequantize-then-multiply, within the tests' fp32 bound). absmax points at the
// first block of row r0. NX is a template argument so that the accumulators stay in registers.
template <int NX>
__attribute__((target("avx2,fma"))) void gemv_4bit_rows_blocked(const uint8_t* p, const float* absmax, int64_t r0,
                                                                int64_t r1, int64_t rows, int64_t cols,
                                                                int64_t block, const float* code, const float* x,
                                                                float* y) {
  constexpr int S = NX <= 2 ? 2 : 1;  // independent sums per input row: enough FMAs in flight
  __m256i tb[4];
  {
    alignas(16) uint8_t bytes[4][16];
    for (int e = 0; e < 16; ++e) {
      uint32_t u;
      std::memcpy(&u, code + e, 4);
      for (int j = 0; j < 4; ++j) bytes[j][e] = static_cast<uint8_t>(u >> (8 * j));
    }
    for (int j = 0; j < 4; ++j)
      tb[j] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(bytes[j])));
  }
  const int64_t nb = cols / block;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* pr = p + r * cols / 2;
    const float* ar = absmax + (r - r0) * nb;
    __m256 acc[NX];
    for (int k = 0; k < NX; ++k) acc[k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256 s[NX][S];
      for (int k = 0; k < NX; ++k)
        for (int j = 0; j < S; ++j) s[k][j] = _mm256_setzero_ps();
      for (int64_t c = b * block, end = c + block; c < end; c += 32) {
        __m256 v[4];
        decode32(pr + c / 2, tb, v);
        for (int k = 0; k < NX; ++k) {
          const float* xk = x + k * cols + c;
          s[k][0] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(xk), s[k][0]);
          s[k][S - 1] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xk + 8), s[k][S - 1]);
          s[k][0] = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xk + 16), s[k][0]);
          s[k][S - 1] = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xk + 24), s[k][S - 1]);
        }
      }
      const __m256 va = _mm256_set1_ps(ar[b]);
      for (int k = 0; k < NX; ++k) acc[k] = _mm256_fmadd_ps(S == 2 ? _mm256_add_ps(s[k][0], s[k][1]) : s[k][0], va, acc[k]);
    }
    for (int k = 0; k < NX; ++k) y[k * rows + r] = hsum_avx(acc[k]);
  }
}

// Any layout (blocks straddling rows, odd block sizes): each code is scaled by its absmax before
// the product, blocks split by scalar tails. absmax is indexed by global block number.
__attribute__((target("avx2,fma"))) void gemv_4bit_rows_any(const uint8_t* p, const float* absmax, int64_t r0,
                                                            int64_t r1, int64_t rows, int64_t cols, int64_t block,
                                                            const float* code, const float* x, int64_t nx,
                                                            float* y) {
  const __m256 tlo = _mm256_loadu_ps(code), thi = _mm256_loadu_ps(code + 8);
  const __m128i m4 = _mm_set1_epi8(0x0f);
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[4][2];
    float tail[4] = {0, 0, 0, 0};
    for (int k = 0; k < 4; ++k) acc[k][0] = acc[k][1] = _mm256_setzero_ps();
    const int64_t row0 = r * cols, end = row0 + cols;
    for (int64_t i = row0; i < end;) {
      const int64_t b = i / block, seg = std::min(end, (b + 1) * block);
      const float a = absmax[b];
      const __m256 va = _mm256_set1_ps(a);
      for (; i + 16 <= seg; i += 16) {
        __m256 v0, v1;
        decode16(p + i / 2, tlo, thi, m4, v0, v1);
        v0 = _mm256_mul_ps(v0, va);
        v1 = _mm256_mul_ps(v1, va);
        const int64_t c = i - row0;
        for (int64_t k = 0; k < nx; ++k) {
          acc[k][0] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x + k * cols + c), acc[k][0]);
          acc[k][1] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + k * cols + c + 8), acc[k][1]);
        }
      }
      for (; i < seg; ++i) {
        const uint8_t byte = p[i >> 1];
        const float w = code[(i & 1) ? (byte & 15) : (byte >> 4)] * a;
        for (int64_t k = 0; k < nx; ++k) tail[k] += w * x[k * cols + (i - row0)];
      }
    }
    for (int64_t k = 0; k < nx; ++k) y[k * rows + r] = hsum_avx(_mm256_add_ps(acc[k][0], acc[k][1])) + tail[k];
  }
}

#endif

template <class T>
void decode_4bit_cpu(const uint8_t* p, const float* absmax, int64_t n, int64_t block, ref::FourBit t, T* out) {
  const float* code = ref::fourbit_code(t);
  const int64_t nb = (n + block - 1) / block;
#ifdef QINTERP_X86_AVX2
  if (cpu_has_avx2() && block % 16 == 0) {
    constexpr int kind = std::is_same<T, float>::value ? 0 : std::is_same<T, at::Half>::value ? 1 : 2;
    const int64_t full = n / block;  // whole blocks vectorized; a short last block below
    at::parallel_for(0, full, std::max<int64_t>(1, 65536 / block), [&](int64_t b0, int64_t b1) {
      decode_blocks_avx2<kind>(p, absmax, b0, b1, block, code, out);
    });
    for (int64_t i = full * block; i < n; ++i) {
      const uint8_t v = p[i >> 1];
      out[i] = static_cast<T>(code[(i & 1) ? (v & 15) : (v >> 4)] * absmax[full]);
    }
    return;
  }
#endif
  at::parallel_for(0, nb, std::max<int64_t>(1, 16384 / block), [&](int64_t b0, int64_t b1) {
    float pair[256][2];
    for (int v = 0; v < 256; ++v) pair[v][0] = code[v >> 4], pair[v][1] = code[v & 15];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * block, hi = std::min(n, lo + block), whole = lo + ((hi - lo) & ~int64_t(1));
      const float a = absmax[b];
      for (int64_t i = lo; i < whole; i += 2) {
        const uint8_t v = p[i >> 1];
        out[i] = static_cast<T>(pair[v][0] * a);
        out[i + 1] = static_cast<T>(pair[v][1] * a);
      }
      if (whole < hi) out[whole] = static_cast<T>(pair[p[whole >> 1]][0] * a);
    }
  });
}

// A fresh large output is written once from start to end: ask for transparent huge pages before
// the first touch, so that the kernel takes one fault per 2 MiB instead of one per 4 KiB (on a
// small machine the faults cost more than decoding). No effect where THP is off or "always".
void prefer_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace

at::Tensor dynamic_map() {
  // bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), computed
  // with the same float32 tensor ops so that every entry is bit-identical.
  static const at::Tensor map = [] {
    std::vector<double> data;
    for (int i = 0; i < 7; ++i) {
      const int64_t items = (int64_t(1) << i) + 1;
      const at::Tensor b = at::linspace(0.1, 1.0, items, at::kFloat);
      const at::Tensor means = (b.narrow(0, 0, items - 1) + b.narrow(0, 1, items - 1)) / 2.0;
      const double scale = std::pow(10.0, -6 + i);  // Python's 10 ** (-6 + i)
      for (const at::Tensor& t : {means * scale, means * -scale}) {
        const at::Tensor c = t.contiguous();
        for (int64_t k = 0; k < c.numel(); ++k) data.push_back(c.data_ptr<float>()[k]);
      }
    }
    data.push_back(0.0);
    data.push_back(1.0);
    std::sort(data.begin(), data.end());
    return at::tensor(data, at::kDouble).to(at::kFloat);
  }();
  return map.clone();
}

std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& x_in, Method type, int64_t block) {
  check_float(x_in, "quantize_4bit");
  const ref::FourBit t = four(type);
  if (block < 32 || block > 4096 || (block & (block - 1)))
    fail("quantize_4bit: block size ", block, " must be a power of two from 32 to 4096");
#ifdef QINTERP_HAVE_CUDA
  if (use_cuda(x_in)) return detail::quantize_4bit_cuda(x_in.contiguous(), static_cast<int>(t), block);
#endif
  const at::Tensor x = x_in.to(at::kCPU).contiguous().to(at::kFloat);
  const int64_t n = x.numel(), nb = (n + block - 1) / block;
  at::Tensor packed = at::empty({(n + 1) / 2, 1}, x.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({nb}, x.options());
  const float* px = x.data_ptr<float>();
  uint8_t* pp = packed.data_ptr<uint8_t>();
  float* pa = absmax.data_ptr<float>();
  const float* bounds = ref::fourbit_bounds(t);
  const uint8_t* order = ref::fourbit_order(t);
  at::parallel_for(0, nb, std::max<int64_t>(1, 8192 / block), [&](int64_t b0, int64_t b1) {
    std::vector<float> s(static_cast<size_t>(block + 1));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * block, len = std::min(block, n - lo);
      encode_block(px + lo, len, len == block, t, bounds, order, pp + lo / 2, pa + b, s.data());
    }
  });
  if (x_in.is_cuda()) return {packed.to(x_in.device()), absmax.to(x_in.device())};
  return {packed, absmax};
}

at::Tensor dequantize_4bit(const at::Tensor& packed_in, const at::Tensor& absmax_in, Method type, int64_t block,
                           at::IntArrayRef shape, at::ScalarType dtype) {
  const ref::FourBit t = four(type);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (packed_in.numel() != (n + 1) / 2 || absmax_in.numel() != (n + block - 1) / block)
    fail("dequantize_4bit: ", packed_in.numel(), " packed bytes and ", absmax_in.numel(),
         " absmax values do not fit ", n, " elements in blocks of ", block);
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16)
    fail("dequantize_4bit: output dtype must be float32, float16 or bfloat16");
#ifdef QINTERP_HAVE_CUDA
  if (use_cuda(packed_in))
    return detail::dequantize_4bit_cuda(packed_in.contiguous(), absmax_in.to(at::kFloat).contiguous(),
                                        static_cast<int>(t), block, n, dtype)
        .view(shape);
#endif
  const at::Tensor packed = packed_in.to(at::kCPU).contiguous();
  const at::Tensor absmax = absmax_in.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor out = at::empty({n}, packed.options().dtype(dtype));
  prefer_huge_pages(out.data_ptr(), static_cast<size_t>(n) * out.element_size());
  const uint8_t* p = packed.data_ptr<uint8_t>();
  const float* a = absmax.data_ptr<float>();
  switch (dtype) {
    case at::kFloat: decode_4bit_cpu(p, a, n, block, t, out.data_ptr<float>()); break;
    case at::kHalf: decode_4bit_cpu(p, a, n, block, t, out.data_ptr<at::Half>()); break;
    default: decode_4bit_cpu(p, a, n, block, t, out.data_ptr<at::BFloat16>()); break;
  }
  return out.view(shape).to(packed_in.device());
}

std::pair<at::Tensor, at::Tensor> quantize_blockwise8(const at::Tensor& x_in, int64_t block) {
  if (block < 1) fail("quantize_blockwise8: block must be positive");
  const at::Tensor x = x_in.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor code = dynamic_map();
  const int64_t n = x.numel();
  at::Tensor q = at::empty({n}, x.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({(n + block - 1) / block}, x.options());
  ref::quantize_blockwise8(x.data_ptr<float>(), n, block, code.data_ptr<float>(), q.data_ptr<uint8_t>(),
                           absmax.data_ptr<float>());
  return {q.to(x_in.device()), absmax.to(x_in.device())};
}

at::Tensor dequantize_blockwise8(const at::Tensor& q, const at::Tensor& absmax, int64_t block,
                                 const at::Tensor& code_in) {
  const at::Tensor code = code_in.defined() ? code_in : dynamic_map().to(q.device());
  const at::Tensor a = absmax.repeat_interleave(block).narrow(0, 0, q.numel());
  return code.index_select(0, q.reshape({-1}).to(at::kLong)) * a;
}

// absmax of blocks [b0, b1) under double quantization, as absmax_f32 computes it: the 8-bit code
// times its group's scale, then the offset, two float roundings (this file is built without FMA
// contraction, so they stay two).
static void double_quant_absmax(const uint8_t* q, const float* scale, const float* code, float offset, int64_t b0,
                         int64_t b1, float* out) {
  for (int64_t b = b0; b < b1; ++b) {
    const float v = code[q[b]] * scale[b / 256];
    out[b - b0] = v + offset;
  }
}

#ifdef QINTERP_X86_AVX2
// The same, eight blocks at a time by a gather from the 256-entry map (an aligned run of eight
// lies in one run of 256 and shares its scale). Compiled without FMA so that the product and the
// sum stay two roundings, bit for bit the loop above.
__attribute__((target("avx2"), noinline)) void double_quant_absmax_avx2(const uint8_t* q, const float* scale,
                                                                       const float* code, float offset, int64_t b0,
                                                                       int64_t b1, float* out) {
  int64_t b = b0;
  const int64_t head = std::min(b1, (b0 + 7) & ~int64_t(7));
  double_quant_absmax(q, scale, code, offset, b, head, out);
  b = head;
  const __m256 voff = _mm256_set1_ps(offset);
  for (; b + 8 <= b1; b += 8) {
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + b)));
    const __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(code, idx, 4), _mm256_set1_ps(scale[b / 256]));
    _mm256_storeu_ps(out + (b - b0), _mm256_add_ps(v, voff));
  }
  double_quant_absmax(q, scale, code, offset, b, b1, out + (b - b0));
}
#endif

at::Tensor absmax_f32(const QuantizedTensor& q) {
  if (!q.spec.double_quant) return q.absmax;
  // two roundings (product, then + offset) as bitsandbytes computes it
  return dequantize_blockwise8(q.absmax, q.absmax2, 256, q.code2) + q.offset;
}

namespace {

#ifdef QINTERP_X86_AVX2
// A 4-bit weight's absmax as the row kernels need it: rows(r0, r1, f) calls f(absmax, c0, c1) over
// rows [r0, r1) with absmax[(r - c0) * nb + b] the float32 absmax of row r's block b: the stored
// one, or double-quantized ones decoded a few rows at a time (in the same two roundings as
// absmax_f32) into a buffer that stays in L1.
struct AbsmaxRows {
  const float* a32 = nullptr;  // stored float32, or null when double-quantized
  const uint8_t* a8 = nullptr;
  const float* a2 = nullptr;
  const float* c2 = nullptr;
  float off = 0;
  int64_t nb = 0;  // blocks per row

  AbsmaxRows(const QuantizedTensor& w, int64_t blocks_per_row) : nb(blocks_per_row) {
    if (!w.spec.double_quant) {
      a32 = w.absmax.data_ptr<float>();
      return;
    }
    a8 = w.absmax.data_ptr<uint8_t>();
    a2 = w.absmax2.data_ptr<float>();
    c2 = w.code2.data_ptr<float>();
    off = w.offset.data_ptr<float>()[0];
  }

  template <class F>
  void rows(int64_t r0, int64_t r1, F&& f) const {
    if (a32) {
      f(a32 + r0 * nb, r0, r1);
      return;
    }
    alignas(32) float local[2048];
    std::unique_ptr<float[]> heap;
    float* buf = local;
    int64_t chunk = 2048 / nb;
    if (chunk == 0) {
      chunk = 1;
      heap.reset(new float[static_cast<size_t>(nb)]);
      buf = heap.get();
    }
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
      const int64_t c1 = std::min(r1, c0 + chunk);
      double_quant_absmax_avx2(a8, a2, c2, off, c0 * nb, c1 * nb, buf);
      f(static_cast<const float*>(buf), c0, c1);
    }
  }
};

bool parts_contiguous(const QuantizedTensor& w) {
  return w.absmax.is_contiguous() && (!w.spec.double_quant || (w.absmax2.is_contiguous() && w.code2.is_contiguous()));
}

// decode=q8's row kernel (gemv_q8's signature) for a weight whose rows are whole blocks, holding
// what it reads.
auto fourbit_q8_kernel(const QuantizedTensor& w) {
  const int64_t rows = w.shape[0], cols = w.shape[1], block = w.spec.block, nb = cols / block;
  const int8_t* table = ref::fourbit_code_q8(four(w.spec.method));
  const at::Tensor data = w.data.contiguous();
  const uint8_t* p = data.data_ptr<uint8_t>();
  const AbsmaxRows absmax(w, nb);
  return [=](int64_t r0, int64_t r1, const int8_t* q, const uint8_t* a, const float* d, const float*, int64_t nx,
             float* y) {
    (void)data;  // kept alive with the kernel
    absmax.rows(r0, r1, [&](const float* am, int64_t c0, int64_t c1) {
      with_input_rows(nx, [&](auto n) {
        gemv_q8_rows<n(), true>(p, cols / 2, am, nullptr, nb, block, table, c0, c1, rows, cols, q, a, d, nullptr, y);
      });
    });
  };
}

// The exact kernel (gemv_rows' signature, x permuted by permute_x32), holding what it reads. Each
// thread scales its own rows' absmax (double quantization decoded here, in the same two roundings
// as absmax_f32), so a decoding step runs no ATen op besides the output's allocation.
auto fourbit_exact_kernel(const QuantizedTensor& w) {
  const int64_t rows = w.shape[0], cols = w.shape[1], block = w.spec.block;
  const float* code = ref::fourbit_code(four(w.spec.method));
  const uint8_t* p = w.data.data_ptr<uint8_t>();
  const AbsmaxRows absmax(w, cols / block);
  return [=](int64_t r0, int64_t r1, const float* xp, int64_t nx, float* yp) {
    absmax.rows(r0, r1, [&](const float* am, int64_t c0, int64_t c1) {
      with_input_rows(nx, [&](auto n) { gemv_4bit_rows_blocked<n()>(p, am, c0, c1, rows, cols, block, code, xp, yp); });
    });
  };
}

bool exact_blocked_fits(const QuantizedTensor& w) {
  const int64_t cols = w.shape[1], block = w.spec.block;
  return cols % 2 == 0 && cols % block == 0 && block % 32 == 0 && w.data.is_contiguous() && parts_contiguous(w);
}
#endif

// decode=q8 for a weight whose rows are whole blocks (gemv_q8.hpp); absmax as in gemv_4bit.
at::Tensor gemv_4bit_q8(const at::Tensor& x, const QuantizedTensor& w) {
  const int64_t rows = w.shape[0], cols = w.shape[1], block = w.spec.block;
  const ref::FourBit t = four(w.spec.method);
  const at::Tensor data = w.data.contiguous();
  const uint8_t* p = data.data_ptr<uint8_t>();
#ifdef QINTERP_X86_AVX2
  if (cpu_has_fma() && parts_contiguous(w)) return gemv_q8(x, rows, cols, fourbit_q8_kernel(w));
#endif
  const at::Tensor absmax = absmax_f32(w).contiguous();
  return gemv_q8_reference(x, rows, cols, [&](const int8_t* q, const float* d, float* y) {
    ref::gemv_4bit_q8(p, absmax.data_ptr<float>(), rows, cols, block, t, q, d, y);
  });
}

}  // namespace

at::Tensor gemv_4bit(const at::Tensor& x, const QuantizedTensor& w) {
  if (w.spec.method != Method::NF4 && w.spec.method != Method::FP4) fail("gemv_4bit: weight is not 4-bit");
  check_gemv_input("gemv_4bit", x, w);
#ifdef QINTERP_HAVE_CUDA
  if (x.is_cuda() && w.shape[1] % w.spec.block == 0 && w.shape[1] % 32 == 0) {
    const at::Tensor xs = x.reshape({-1, w.shape[1]}).contiguous();
    const float offset = w.spec.double_quant ? w.offset.item<float>() : 0.0f;
    at::Tensor y = detail::gemv_4bit_cuda(xs, w.data, w.spec.double_quant ? at::Tensor() : w.absmax,
                                          w.spec.double_quant ? w.absmax : at::Tensor(), w.absmax2, offset, w.code2,
                                          static_cast<int>(four(w.spec.method)), w.shape[0], w.shape[1], w.spec.block);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = w.shape[0];
    return y.view(shape);
  }
#endif
  if (w.spec.decode_q8 && x.device().is_cpu() && x.scalar_type() == at::kFloat && w.data.device().is_cpu() &&
      w.shape[1] % w.spec.block == 0)
    return gemv_4bit_q8(x, w);
#ifdef QINTERP_X86_AVX2
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && w.data.device().is_cpu() && w.shape[1] % 2 == 0 &&
      cpu_has_fma()) {
    const int64_t rows = w.shape[0], cols = w.shape[1], block = w.spec.block;
    const float* code = ref::fourbit_code(four(w.spec.method));
    const uint8_t* p = w.data.data_ptr<uint8_t>();
    if (exact_blocked_fits(w)) return gemv_rows(permute_x32(x), rows, cols, fourbit_exact_kernel(w));
    const at::Tensor absmax = absmax_f32(w).contiguous();
    const float* a = absmax.data_ptr<float>();
    return gemv_rows(x, rows, cols, [&](int64_t r0, int64_t r1, const float* xp, int64_t nx, float* yp) {
      gemv_4bit_rows_any(p, a, r0, r1, rows, cols, block, code, xp, nx, yp);
    });
  }
#endif
  return wide_linear(x, dequantize(w, x.scalar_type()));
}

namespace detail {

bool fourbit_row_job(StepInput& x, const QuantizedTensor& w, float* y, RowJob* job) {
#ifdef QINTERP_X86_AVX2
  if ((w.spec.method != Method::NF4 && w.spec.method != Method::FP4) || w.shape.size() != 2 || !cpu_has_fma() ||
      !w.data.is_cpu() || x.cols != w.shape[1] || x.n < 1 || x.n > 4)
    return false;
  const int64_t rows = w.shape[0], cols = w.shape[1];
  if (w.spec.decode_q8) {  // the same choice as gemv_4bit
    if (cols % w.spec.block != 0 || !parts_contiguous(w)) return false;
    *job = q8_row_job(x, rows, y, fourbit_q8_kernel(w));
    return true;
  }
  if (!exact_blocked_fits(w)) return false;
  if (x.perm32.empty()) {
    x.perm32.resize(static_cast<size_t>(x.n * cols));
    permute_x32(x.x, x.n * cols, x.perm32.data());
  }
  *job = row_job(x, x.perm32.data(), rows, y, fourbit_exact_kernel(w));
  return true;
#else
  (void)x, (void)w, (void)y, (void)job;
  return false;
#endif
}

}  // namespace detail

// ---- the format's entry points (formats.hpp)

QuantizedTensor fourbit_quantize(const at::Tensor& x, const QuantSpec& spec) {
  QuantizedTensor q;
  q.spec = spec;
  q.shape = std::vector<int64_t>(x.sizes().begin(), x.sizes().end());
  q.dtype = x.scalar_type();
  auto pa = quantize_4bit(x, spec.method, spec.block);
  q.data = pa.first.view({-1});
  if (!spec.double_quant) {
    q.absmax = pa.second;
  } else {
    const at::Tensor a = pa.second;
    const at::Tensor mean = a.mean();
    q.offset = mean.cpu();  // a CPU scalar (see QuantizedTensor::to)
    auto qa = quantize_blockwise8(a - mean, 256);
    q.absmax = qa.first;
    q.absmax2 = qa.second;
    q.code2 = dynamic_map().to(a.device());
  }
  return q;
}

at::Tensor fourbit_dequantize(const QuantizedTensor& q, at::ScalarType dtype) {
  return dequantize_4bit(q.data, absmax_f32(q), q.spec.method, q.spec.block, q.shape, dtype);
}

void fourbit_check(const QuantizedTensor& q, const std::string& where) {
  const int64_t n = q.numel(), nb = (n + q.spec.block - 1) / q.spec.block;
  need_part(where, q.data, "qdata", at::kByte, (n + 1) / 2);
  if (q.spec.double_quant) {
    need_part(where, q.absmax, "absmax", at::kByte, nb);
    need_part(where, q.absmax2, "absmax2", at::kFloat, (nb + 255) / 256);
    need_part(where, q.offset, "offset", at::kFloat, 1);
    need_part(where, q.code2, "code2", at::kFloat, 256);
  } else {
    need_part(where, q.absmax, "absmax", at::kFloat, nb);
  }
}

at::Tensor fourbit_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias) {
  // Few rows (decoding, a short prompt on the CPU): the fused matrix-vector product, on CUDA or on a
  // CPU in fp32.
  if ((x.is_cuda() && few_rows_no_grad(x, w.shape[1])) ||
      (x.is_cpu() && x.scalar_type() == at::kFloat && few_rows_no_grad(x, w.shape[1], kFusedRowsPackedCpu))) {
    at::Tensor y = gemv_4bit(x, w);
    return bias.defined() ? y + bias : y;
  }
  return wide_linear(x, dequantize(w, x.scalar_type()), bias);
}

}  // namespace qinterp::quant
