// CPU kernels for the formats of quantize.hpp (bit-identical to reference.cpp, which the tests
// check) and the device dispatch to the CUDA glue.
#include "qinterp/quant/quantize.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <type_traits>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <mutex>

#include "qinterp/error.hpp"
#include "qinterp/quant/reference.hpp"
#include "grouped.hpp"

namespace qinterp::quant {

#ifdef QINTERP_HAVE_CUDA
namespace detail {
std::pair<at::Tensor, at::Tensor> quantize_4bit_cuda(const at::Tensor& x, int type, int64_t block);
at::Tensor dequantize_4bit_cuda(const at::Tensor& packed, const at::Tensor& absmax, int type, int64_t block,
                                int64_t n, at::ScalarType dtype);
at::Tensor gemv_4bit_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
                          const at::Tensor& qabs, const at::Tensor& absmax2, float offset, const at::Tensor& code2,
                          int type, int64_t rows, int64_t cols, int64_t block);
}  // namespace detail
#endif

namespace {

ref::FourBit four(Method m) {
  if (m == Method::NF4) return ref::FourBit::NF4;
  if (m == Method::FP4) return ref::FourBit::FP4;
  fail("4-bit quantization needs nf4 or fp4");
}

void check_float(const at::Tensor& x, const char* what) {
  if (!x.defined()) fail(what, ": tensor is undefined");
  const auto t = x.scalar_type();
  if (t != at::kFloat && t != at::kHalf && t != at::kBFloat16)
    fail(what, ": needs a float32, float16 or bfloat16 tensor, got ", c10::toString(t));
}

bool use_cuda(const at::Tensor& x) {
#ifdef QINTERP_HAVE_CUDA
  return x.is_cuda();
#else
  (void)x;
  return false;
#endif
}

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

#if defined(__x86_64__) && defined(__GNUC__)
#define QINTERP_X86_AVX2 1
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

__attribute__((target("avx2"))) inline float hsum_avx(__m256 v) {
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));
  return _mm_cvtss_f32(s4);
}

// y[k, r] = sum_c x[k, c] * (code[nibble(r, c)] * absmax[block of (r, c)]) for rows r0..r1 and
// nx <= 4 input rows: the 4-bit weight is decoded in registers 16 at a time (as decode_blocks_avx2,
// so the products use the dequantized values exactly) and never written out. Needs cols even (every
// row starts on a byte); a block boundary inside a row is handled by scalar tails.
__attribute__((target("avx2,fma"))) void gemv_4bit_rows_avx2(const uint8_t* p, const float* absmax, int64_t r0,
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
        const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i / 2));
        const __m128i idx = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
        __m256 v[2];
        for (int h = 0; h < 2; ++h) {
          const __m256i kk = _mm256_cvtepu8_epi32(h ? _mm_srli_si128(idx, 8) : idx);
          const __m256 hi_sel = _mm256_castsi256_ps(_mm256_slli_epi32(kk, 28));
          v[h] = _mm256_mul_ps(
              _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, kk), _mm256_permutevar8x32_ps(thi, kk), hi_sel), va);
        }
        const int64_t c = i - row0;
        for (int64_t k = 0; k < nx; ++k) {
          acc[k][0] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(x + k * cols + c), acc[k][0]);
          acc[k][1] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + k * cols + c + 8), acc[k][1]);
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

// y[k, r] = sum_c x[k, c] * scale[r, g] * (code[r, c] - zero[r, g]), g = c / group, for rows r0..r1
// and nx <= 4 input rows: codes two per byte (bits <= 4, high nibble first; every row starts on a
// byte) or one per byte, decoded in registers; the products use the dequantized values exactly.
__attribute__((target("avx2,fma"))) void gemv_grouped_rows_avx2(const uint8_t* d, int64_t row_bytes, bool nibbles,
                                                                const float* scale, const float* zero,
                                                                int64_t ngroups, int64_t group, int64_t r0,
                                                                int64_t r1, int64_t rows, int64_t cols,
                                                                const float* x, int64_t nx, float* y) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[4][2];
    float tail[4] = {0, 0, 0, 0};
    for (int k = 0; k < 4; ++k) acc[k][0] = acc[k][1] = _mm256_setzero_ps();
    const uint8_t* row = d + r * row_bytes;
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * group, c1 = std::min(cols, c0 + group);
      const float sc = scale[r * ngroups + g], ze = zero[r * ngroups + g];
      const __m256 vs = _mm256_set1_ps(sc), vz = _mm256_set1_ps(ze);
      int64_t c = c0;
      for (; c + 16 <= c1; c += 16) {
        __m128i idx;
        if (nibbles) {
          const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2));
          idx = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
        } else {
          idx = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
        }
        __m256 v[2];
        for (int h = 0; h < 2; ++h) {
          const __m256 code = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(h ? _mm_srli_si128(idx, 8) : idx));
          v[h] = _mm256_mul_ps(vs, _mm256_sub_ps(code, vz));
        }
        for (int64_t k = 0; k < nx; ++k) {
          acc[k][0] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(x + k * cols + c), acc[k][0]);
          acc[k][1] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + k * cols + c + 8), acc[k][1]);
        }
      }
      for (; c < c1; ++c) {
        const int code = nibbles ? ((c & 1) ? (row[c >> 1] & 15) : (row[c >> 1] >> 4)) : row[c];
        const float w = sc * (static_cast<float>(code) - ze);
        for (int64_t k = 0; k < nx; ++k) tail[k] += w * x[k * cols + c];
      }
    }
    for (int64_t k = 0; k < nx; ++k) y[k * rows + r] = hsum_avx(_mm256_add_ps(acc[k][0], acc[k][1])) + tail[k];
  }
}

bool cpu_has_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return ok;
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

int64_t groups_of(const QuantSpec& s, int64_t cols) { return s.group > 0 ? (cols + s.group - 1) / s.group : 1; }

}  // namespace

// ---------------------------------------------------------------- QuantizedTensor

int64_t QuantizedTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t QuantizedTensor::nbytes() const {
  int64_t n = 0;
  for (const auto& p : parts()) n += p.second.numel() * static_cast<int64_t>(p.second.element_size());
  return n;
}

QuantizedTensor QuantizedTensor::to(at::Device device) const {
  QuantizedTensor q = *this;
  // offset stays a CPU scalar: kernels take it by value, and reading it must not sync a GPU
  for (at::Tensor* t : {&q.data, &q.absmax, &q.absmax2, &q.code2, &q.scale, &q.zero, &q.g_idx})
    if (t->defined()) *t = t->to(device);
  return q;
}

std::vector<std::pair<std::string, at::Tensor>> QuantizedTensor::parts() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  const std::pair<const char*, const at::Tensor*> all[] = {{"qdata", &data},   {"absmax", &absmax},
                                                           {"absmax2", &absmax2}, {"offset", &offset},
                                                           {"code2", &code2}, {"scale", &scale},
                                                           {"zero", &zero},   {"g_idx", &g_idx}};
  for (const auto& p : all)
    if (p.second->defined()) out.emplace_back(p.first, *p.second);
  return out;
}

QuantizedTensor QuantizedTensor::from_parts(const QuantSpec& spec, std::vector<int64_t> shape, at::ScalarType dtype,
                                            const std::vector<std::pair<std::string, at::Tensor>>& parts,
                                            const std::string& where) {
  QuantizedTensor q;
  q.spec = spec;
  q.shape = std::move(shape);
  q.dtype = dtype;
  for (const auto& p : parts) {
    at::Tensor* slot = p.first == "qdata"     ? &q.data
                       : p.first == "absmax"  ? &q.absmax
                       : p.first == "absmax2" ? &q.absmax2
                       : p.first == "offset"  ? &q.offset
                       : p.first == "code2"   ? &q.code2
                       : p.first == "scale"   ? &q.scale
                       : p.first == "zero"    ? &q.zero
                       : p.first == "g_idx"   ? &q.g_idx
                                              : nullptr;
    if (!slot) fail(where, ": unknown quantized part '", p.first, "'");
    *slot = p.second;
  }
  // Validate sizes so that a damaged file cannot make the kernels read out of bounds.
  const int64_t n = q.numel();
  auto need = [&](const at::Tensor& t, const char* name, at::ScalarType st, int64_t count) {
    if (!t.defined()) fail(where, ": quantized weight lacks its '", name, "' part");
    if (t.scalar_type() != st || t.numel() != count)
      fail(where, ": part '", name, "' should hold ", count, " ", c10::toString(st), " values, has ", t.numel(), " ",
           c10::toString(t.scalar_type()));
  };
  switch (spec.method) {
    case Method::NF4:
    case Method::FP4: {
      const int64_t nb = (n + spec.block - 1) / spec.block;
      need(q.data, "qdata", at::kByte, (n + 1) / 2);
      if (spec.double_quant) {
        need(q.absmax, "absmax", at::kByte, nb);
        need(q.absmax2, "absmax2", at::kFloat, (nb + 255) / 256);
        need(q.offset, "offset", at::kFloat, 1);
        need(q.code2, "code2", at::kFloat, 256);
      } else {
        need(q.absmax, "absmax", at::kFloat, nb);
      }
      break;
    }
    case Method::Int8:
      if (q.shape.size() != 2) fail(where, ": int8 weight must be 2-D");
      need(q.data, "qdata", at::kChar, n);
      need(q.scale, "scale", at::kFloat, q.shape[0]);
      break;
    case Method::RTN:
    case Method::GPTQ: {
      if (q.shape.size() != 2) fail(where, ": ", spec.str(), " weight must be 2-D");
      const int64_t rows = q.shape[0], cols = q.shape[1], g = groups_of(spec, cols);
      need(q.data, "qdata", at::kByte, spec.bits <= 4 ? rows * ((cols + 1) / 2) : rows * cols);
      need(q.scale, "scale", at::kFloat, rows * g);
      need(q.zero, "zero", at::kFloat, rows * g);
      need(q.g_idx, "g_idx", at::kInt, cols);
      const auto gi = q.g_idx.to(at::kCPU);
      if (cols && (gi.min().item<int>() < 0 || gi.max().item<int>() >= g))
        fail(where, ": g_idx holds a group outside [0, ", g, ")");
      break;
    }
    case Method::None: fail(where, ": not a quantized spec");
  }
  return q;
}

// ---------------------------------------------------------------- 4-bit

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

at::Tensor absmax_f32(const QuantizedTensor& q) {
  if (!q.spec.double_quant) return q.absmax;
  // two roundings (product, then + offset) as bitsandbytes computes it
  return dequantize_blockwise8(q.absmax, q.absmax2, 256, q.code2) + q.offset;
}

// ---------------------------------------------------------------- int8 (LLM.int8())

Int8Rows int8_vectorwise_quant(const at::Tensor& x_in, double threshold) {
  check_float(x_in, "int8_vectorwise_quant");
  if (x_in.dim() == 0 || x_in.size(-1) == 0)
    fail("int8_vectorwise_quant: needs rows with at least one column, got ", x_in.sizes());
  at::Tensor x = x_in.dim() == 2 ? x_in : x_in.reshape({-1, x_in.size(-1)});
  Int8Rows r;
  r.outlier_cols = at::empty({0}, x.options().dtype(at::kLong));
  if (threshold > 0) {
    const at::Tensor out = x.abs().ge(threshold);
    if (out.any().item<bool>()) {
      r.outlier_cols = at::argwhere(out.any(0)).view({-1});
      x = x.masked_fill(out, 0);
    }
  }
  r.absmax = std::get<0>(x.abs().max(1)).to(at::kFloat);
  // round(x * (127 / rowmax)) in float32, half to even; an all-zero row stays zero. Python's
  // `127.0 / t` is reciprocal(t) * 127 (two roundings), and bitsandbytes writes it that way.
  const at::Tensor inv = at::where(r.absmax.gt(0), r.absmax.reciprocal() * 127.0, at::zeros_like(r.absmax));
  r.q = at::round(x * inv.unsqueeze(1)).to(at::kChar);
  if (x.size(0) > 1 && r.outlier_cols.numel()) r.q.index_fill_(1, r.outlier_cols, 0);
  return r;
}

namespace {

// int8 [n, k] x int8 [m, k]ᵀ -> int32 [n, m], exactly.
at::Tensor int_mm(const at::Tensor& a, const at::Tensor& b) {
  if (a.is_cuda()) {
    if (a.size(0) > 16 && a.size(1) % 8 == 0 && b.size(0) % 8 == 0) return at::_int_mm(a.contiguous(), b.t());
    return at::matmul(a.to(at::kDouble), b.to(at::kDouble).t()).to(at::kInt);  // exact below 2^53
  }
  // CPU: torch's int8 GEMM is a scalar loop without AVX512-VNNI. A float32 GEMM is exact while
  // |partial sum| < 2^24, i.e. over up to 1024 columns of int8 products (1024 * 127^2 < 2^24).
  at::Tensor acc;
  const at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
  for (int64_t k0 = 0; k0 < a.size(1); k0 += 1024) {
    const int64_t len = std::min<int64_t>(1024, a.size(1) - k0);
    const at::Tensor part = at::matmul(af.narrow(1, k0, len), bf.narrow(1, k0, len).t()).to(at::kInt);
    acc = acc.defined() ? acc.add_(part) : part;
  }
  return acc;
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias) {
  if (w.spec.method != Method::Int8) fail("int8_linear: weight is ", w.spec.str(), ", not int8");
  check_float(x, "int8_linear");
  const int64_t in = w.shape[1], out_f = w.shape[0];
  if (x.size(-1) != in) fail("int8_linear: input has ", x.size(-1), " features, the weight takes ", in);
  const at::Tensor a = x.reshape({-1, in});
  const Int8Rows r = int8_vectorwise_quant(a, w.spec.threshold);
  at::Tensor acc = int_mm(r.q, w.data);
  // bitsandbytes' int8_mm_dequant: int32 * (row * col) * (1 / 127^2), then + bias, then cast
  at::Tensor out = acc * (r.absmax.unsqueeze(1) * w.scale.unsqueeze(0)) * 6.200124e-05;
  if (bias.defined()) out = out + bias;
  out = out.to(x.scalar_type());
  if (r.outlier_cols.numel()) {
    const at::Tensor sub_a = a.index_select(1, r.outlier_cols);
    const at::Tensor sub_b =
        (w.data.index_select(1, r.outlier_cols) * w.scale.unsqueeze(1) * 7.874015718698502e-3).to(x.scalar_type());
    out = out.addmm(sub_a, sub_b.t());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_f;
  return out.view(shape);
}

// ---------------------------------------------------------------- RTN (GPTQ's quantizer)

namespace {

at::Tensor pack_codes(const at::Tensor& codes, int bits) {  // [rows, cols] uint8
  if (bits > 4) return codes.contiguous();
  at::Tensor c = codes;
  if (c.size(1) & 1) c = at::cat({c, at::zeros({c.size(0), 1}, c.options())}, 1);
  return (c.slice(1, 0, c.size(1), 2).bitwise_left_shift(4)).bitwise_or(c.slice(1, 1, c.size(1), 2)).contiguous();
}

at::Tensor unpack_codes(const at::Tensor& data, int bits, int64_t cols) {
  if (bits > 4) return data;
  const at::Tensor hi = data.bitwise_right_shift(4), lo = data.bitwise_and(15);
  return at::stack({hi, lo}, 2).reshape({data.size(0), data.size(1) * 2}).narrow(1, 0, cols);
}

}  // namespace

// scale/zero for the columns of w [rows, g] (GPTQ's Quantizer.find_params, per channel, no MSE search).
std::pair<at::Tensor, at::Tensor> minmax_params(const at::Tensor& w, int bits, bool sym) {
  const double maxq = std::pow(2.0, bits) - 1;
  at::Tensor xmin = at::clamp_max(std::get<0>(w.min(1)), 0), xmax = at::clamp_min(std::get<0>(w.max(1)), 0);
  if (sym) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = at::where(xmin.lt(0), -xmax, xmin);
  }
  const at::Tensor both0 = xmin.eq(0).logical_and(xmax.eq(0));
  xmin = at::where(both0, at::full_like(xmin, -1), xmin);
  xmax = at::where(both0, at::full_like(xmax, 1), xmax);
  const at::Tensor scale = (xmax - xmin) / maxq;
  const at::Tensor zero = sym ? at::full_like(scale, (maxq + 1) / 2) : at::round(-xmin / scale);
  return {scale, zero};
}

at::Tensor quantize_codes(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero, int bits) {
  const double maxq = std::pow(2.0, bits) - 1;
  return at::clamp(at::round(w / scale) + zero, 0, maxq);
}

QuantizedTensor make_grouped(const QuantSpec& spec, const at::Tensor& codes_f, const at::Tensor& scale,
                             const at::Tensor& zero, const at::Tensor& g_idx, at::ScalarType dtype) {
  QuantizedTensor q;
  q.spec = spec;
  q.shape = {codes_f.size(0), codes_f.size(1)};
  q.dtype = dtype;
  q.data = pack_codes(codes_f.to(at::kByte), spec.bits);
  q.scale = scale.to(at::kFloat).contiguous();
  q.zero = zero.to(at::kFloat).contiguous();
  q.g_idx = g_idx.to(at::kInt).contiguous();
  return q;
}

namespace {

QuantizedTensor quantize_rtn(const at::Tensor& x, const QuantSpec& spec) {
  if (x.dim() != 2) fail("quantize ", spec.str(), ": needs a 2-D weight [out, in], got ", x.dim(), " dims");
  if (x.size(1) == 0) fail("quantize ", spec.str(), ": the weight ", x.sizes(), " has no input columns");
  const at::Tensor w = x.to(at::kFloat);
  const int64_t rows = w.size(0), cols = w.size(1), gs = spec.group > 0 ? spec.group : cols;
  const int64_t g = groups_of(spec, cols);
  at::Tensor codes = at::empty_like(w), scale = at::empty({rows, g}, w.options()), zero = at::empty_like(scale);
  for (int64_t k = 0; k < g; ++k) {
    const int64_t c0 = k * gs, len = std::min(gs, cols - c0);
    const at::Tensor part = w.narrow(1, c0, len);
    auto sz = minmax_params(part, spec.bits, spec.sym);
    scale.select(1, k).copy_(sz.first);
    zero.select(1, k).copy_(sz.second);
    codes.narrow(1, c0, len).copy_(quantize_codes(part, sz.first.unsqueeze(1), sz.second.unsqueeze(1), spec.bits));
  }
  const at::Tensor g_idx = at::arange(cols, w.options().dtype(at::kLong)).div(gs, "floor");
  return make_grouped(spec, codes, scale, zero, g_idx, x.scalar_type());
}

}  // namespace

// ---------------------------------------------------------------- front doors

QuantizedTensor quantize(const at::Tensor& x, const QuantSpec& spec) {
  check_float(x, ("quantize " + spec.str()).c_str());
  QuantizedTensor q;
  q.spec = spec;
  q.shape = std::vector<int64_t>(x.sizes().begin(), x.sizes().end());
  q.dtype = x.scalar_type();
  switch (spec.method) {
    case Method::NF4:
    case Method::FP4: {
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
    case Method::Int8: {
      if (x.dim() != 2) fail("quantize int8: needs a 2-D weight [out, in]");
      // bitsandbytes quantizes the fp16 weight row-wise with no outlier split
      const Int8Rows r = int8_vectorwise_quant(x.to(at::kHalf), 0.0);
      q.data = r.q.contiguous();
      q.scale = r.absmax;
      return q;
    }
    case Method::RTN: return quantize_rtn(x, spec);
    case Method::GPTQ:
      fail("quantize ", spec.str(), ": GPTQ needs calibration activations; use quant::gptq_quantize_model or "
           "load_model(path, quant=\"", spec.str(), "\")");
    case Method::None: fail("quantize: '", spec.str(), "' is not a quantized format");
  }
  return q;
}

at::Tensor dequantize(const QuantizedTensor& q, at::ScalarType dtype) {
  if (dtype == at::ScalarType::Undefined) dtype = q.dtype;
  switch (q.spec.method) {
    case Method::NF4:
    case Method::FP4:
      return dequantize_4bit(q.data, absmax_f32(q), q.spec.method, q.spec.block, q.shape, dtype);
    case Method::Int8:
      return (q.data.to(at::kFloat) * q.scale.unsqueeze(1) * 7.874015718698502e-3).to(dtype);
    case Method::RTN:
    case Method::GPTQ: {
      const at::Tensor codes = unpack_codes(q.data, q.spec.bits, q.shape[1]).to(at::kFloat);
      const at::Tensor gi = q.g_idx.to(at::kLong);
      return (q.scale.index_select(1, gi) * (codes - q.zero.index_select(1, gi))).to(dtype);
    }
    case Method::None: break;
  }
  fail("dequantize: tensor has no quantized format");
}

at::Tensor gemv_grouped(const at::Tensor& x, const QuantizedTensor& w) {
  if (w.spec.method != Method::RTN && w.spec.method != Method::GPTQ) fail("gemv_grouped: weight is not rtn/gptq");
  if (!at::isFloatingType(x.scalar_type())) fail("gemv_grouped: the input must be floating point, got ", x.scalar_type());
  if (w.shape.size() != 2 || x.dim() == 0 || x.size(-1) != w.shape[1])
    fail("gemv_grouped: input with ", x.size(-1), " features does not fit the weight");
#ifdef QINTERP_X86_AVX2
  const int64_t rows = w.shape[0], cols = w.shape[1], group = w.spec.group > 0 ? w.spec.group : cols;
  const int64_t ngroups = groups_of(w.spec, cols);
  const bool nibbles = w.spec.bits <= 4;
  // Columns in their natural groups only (act-order permutes them: dequantize + matmul then).
  const bool natural = w.g_idx.defined() && w.g_idx.numel() == cols &&
                       at::equal(w.g_idx.to(at::kLong), at::arange(cols, at::kLong).div(group, "floor"));
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && w.data.device().is_cpu() && natural &&
      (!nibbles || group % 2 == 0) && cpu_has_fma()) {
    const at::Tensor xs = x.reshape({-1, cols}).contiguous();
    const at::Tensor scale = w.scale.contiguous(), zero = w.zero.contiguous(), data = w.data.contiguous();
    at::Tensor y = at::empty({xs.size(0), rows}, xs.options());
    for (int64_t k0 = 0; k0 < xs.size(0); k0 += 4) {
      const int64_t nx = std::min<int64_t>(4, xs.size(0) - k0);
      const float* xp = xs.data_ptr<float>() + k0 * cols;
      float* yp = y.data_ptr<float>() + k0 * rows;
      at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
        gemv_grouped_rows_avx2(data.data_ptr<uint8_t>(), data.size(1), nibbles, scale.data_ptr<float>(),
                               zero.data_ptr<float>(), ngroups, group, r0, r1, rows, cols, xp, nx, yp);
      });
    }
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = rows;
    return y.view(shape);
  }
#endif
  return at::linear(x, dequantize(w, x.scalar_type()));
}

at::Tensor gemv_4bit(const at::Tensor& x, const QuantizedTensor& w) {
  if (w.spec.method != Method::NF4 && w.spec.method != Method::FP4) fail("gemv_4bit: weight is not 4-bit");
  if (!at::isFloatingType(x.scalar_type())) fail("gemv_4bit: the input must be floating point, got ", x.scalar_type());
  if (w.shape.size() != 2 || x.dim() == 0 || x.size(-1) != w.shape[1])
    fail("gemv_4bit: input with ", x.size(-1), " features does not fit the weight");
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
#ifdef QINTERP_X86_AVX2
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && w.data.device().is_cpu() && w.shape[1] % 2 == 0 &&
      cpu_has_fma()) {
    const int64_t rows = w.shape[0], cols = w.shape[1];
    const at::Tensor xs = x.reshape({-1, cols}).contiguous();
    const at::Tensor absmax = absmax_f32(w).contiguous();
    at::Tensor y = at::empty({xs.size(0), rows}, xs.options());
    const float* code = ref::fourbit_code(four(w.spec.method));
    const uint8_t* p = w.data.data_ptr<uint8_t>();
    for (int64_t k0 = 0; k0 < xs.size(0); k0 += 4) {
      const int64_t nx = std::min<int64_t>(4, xs.size(0) - k0);
      const float* xp = xs.data_ptr<float>() + k0 * cols;
      float* yp = y.data_ptr<float>() + k0 * rows;
      at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
        gemv_4bit_rows_avx2(p, absmax.data_ptr<float>(), r0, r1, rows, cols, w.spec.block, code, xp, nx, yp);
      });
    }
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = rows;
    return y.view(shape);
  }
#endif
  return at::linear(x, dequantize(w, x.scalar_type()));
}

}  // namespace qinterp::quant
