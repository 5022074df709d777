// The grouped integer formats of GPTQ's quantizer -- round-to-nearest (rtn) and GPTQ (gptq.cpp
// finds the codes): 2..8-bit codes per column group with a scale and zero per row and group; the
// fused matrix-vector product and the format's entry points for format.hpp's table.
#include <cmath>
#include <cstring>

#include "format_common.hpp"
#include "formats.hpp"
#include "gemv_q8.hpp"
#include "grouped.hpp"

namespace qinterp::quant {

using namespace detail;

namespace {

#ifdef QINTERP_X86_AVX2
// y[k, r] = sum_g scale[r, g] * sum_{c in g} (code[r, c] - zero[r, g]) * x[k, c], g = c / group,
// for rows r0..r1 and NX <= 4 input rows: codes two per byte (bits <= 4, high nibble first; every
// row starts on a byte) or one per byte, decoded in registers. code - zero is exact in float32, so
// the only rounding beyond dequantize-then-multiply's is the scale applied once per group. NX is a
// template argument so that the accumulators stay in registers.
//
// Nibbles are decoded without shuffles: a row's four bytes (eight codes) are broadcast to every
// lane and shifted by a per-lane amount, and code - zero is computed as (2^23 + code) - (2^23 +
// zero), the first term by OR-ing the code into the bits of 2^23. For a group whose zero is an
// integer of magnitude <= 2^16 (every zero GPTQ's quantizer makes) both terms and their difference
// are exact, so the sums are bit for bit those of converting and subtracting: 1.35-1.4x faster in
// a standalone loop, 1.25-1.3x in bench/gemv_cpu.py. Bytes (bits > 4) and other zeros (a file may
// hold any float) convert.
__attribute__((target("avx2"))) inline __m256 nibble_codes8(const uint8_t* p, __m256i shifts, __m256 magic_zero) {
  const __m256i k = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_castps_si256(_mm256_broadcast_ss(reinterpret_cast<const float*>(p))), shifts),
      _mm256_set1_epi32(15));
  return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(k, _mm256_set1_epi32(0x4B000000))), magic_zero);
}

template <int NX>
__attribute__((target("avx2,fma"))) void gemv_grouped_rows_avx2(const uint8_t* d, int64_t row_bytes, bool nibbles,
                                                                const float* scale, const float* zero,
                                                                int64_t ngroups, int64_t group, int64_t r0,
                                                                int64_t r1, int64_t rows, int64_t cols,
                                                                const float* x, float* y) {
  const __m128i m4 = _mm_set1_epi8(0x0f);
  const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);  // high nibble first
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[NX];
    float tail[NX];
    for (int k = 0; k < NX; ++k) {
      acc[k] = _mm256_setzero_ps();
      tail[k] = 0.0f;
    }
    const uint8_t* row = d + r * row_bytes;
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * group, c1 = std::min(cols, c0 + group);
      const float sc = scale[r * ngroups + g], ze = zero[r * ngroups + g];
      const __m256 vz = _mm256_set1_ps(ze);
      __m256 s[NX][2];
      float ts[NX];
      for (int k = 0; k < NX; ++k) {
        s[k][0] = s[k][1] = _mm256_setzero_ps();
        ts[k] = 0.0f;
      }
      int64_t c = c0;
      if (nibbles && ze == std::nearbyint(ze) && std::fabs(ze) <= 65536.0f) {  // 2^23 + zero exact
        // codes c..c+7 into s[k][0], c+8..c+15 into s[k][1], in the order of the loop below
        const __m256 mz = _mm256_set1_ps(8388608.0f + ze);
        for (; c + 16 <= c1; c += 16) {
          const __m256 v0 = nibble_codes8(row + c / 2, shifts, mz), v1 = nibble_codes8(row + c / 2 + 4, shifts, mz);
          for (int k = 0; k < NX; ++k) {
            s[k][0] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x + k * cols + c), s[k][0]);
            s[k][1] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + k * cols + c + 8), s[k][1]);
          }
        }
      }
      for (; c + 16 <= c1; c += 16) {
        __m128i idx;
        if (nibbles) {
          const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2));
          idx = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
        } else {
          idx = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
        }
        const __m256 v0 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(idx)), vz);
        const __m256 v1 = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(idx, 8))), vz);
        for (int k = 0; k < NX; ++k) {
          s[k][0] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x + k * cols + c), s[k][0]);
          s[k][1] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + k * cols + c + 8), s[k][1]);
        }
      }
      for (; c < c1; ++c) {
        const int code = nibbles ? ((c & 1) ? (row[c >> 1] & 15) : (row[c >> 1] >> 4)) : row[c];
        const float w = static_cast<float>(code) - ze;
        for (int k = 0; k < NX; ++k) ts[k] += w * x[k * cols + c];
      }
      const __m256 vs = _mm256_set1_ps(sc);
      for (int k = 0; k < NX; ++k) {
        acc[k] = _mm256_fmadd_ps(_mm256_add_ps(s[k][0], s[k][1]), vs, acc[k]);
        tail[k] += sc * ts[k];
      }
    }
    for (int k = 0; k < NX; ++k) y[k * rows + r] = hsum_avx(acc[k]) + tail[k];
  }
}

// The 64-code kernel, for one input row (a decoding step) and nibble codes whose groups are whole
// runs of 64 columns (group % 64 == 0, or one group a row). It sums code * x and subtracts
// zero * sum(x) once per group:
//   y[r] = sum_g scale[r, g] * (sum_{c in g} code[r, c] * x[c] - zero[r, g] * sum_{c in g} x[c]),
// the same product as above regrouped, so it agrees within float32 rounding rather than bit for bit.
// 32 bytes of codes are one load; each of the eight nibble positions is masked in place (no shift)
// and converted, so a code arrives as code * 16^q for q = position & 3 (the upper half of each lane
// is shifted down once). x comes prepared to match (prepare_nib64): reordered to the lanes' order and
// scaled by 16^-q, which is exact, so every product is exactly code * x. Per eight weights an AND, a
// convert and an FMA, against a broadcast, a variable shift, an AND, an OR, a subtraction and an FMA
// above: 1.3x the kernel above on one row. With several input rows both are bound by the FMAs (one
// per weight and row), and the kernel above is as fast or faster (0.75-1.0x this one's time), so
// it keeps those.
constexpr int64_t kNib64 = 64;

// One row x [cols] into the kernel's form: for each whole block b of 64 columns,
//   xp[64b + 8p + m] = x[64b + 8m + (p ^ 1)] * 16^-(p & 3)   (lane m, nibble position p; high nibble first)
//   xs[8b + m] = sum_{j < 8} x[64b + 8m + j]                   (lane m's share of the block's sum)
// and the columns after the last whole block copied as they are. False where a scaled value would
// be subnormal and so not exact (some 0 < |x| < 2^-114): the caller then takes the kernel above.
bool prepare_nib64(const float* x, int64_t cols, float* xp, float* xs) {
  static constexpr float kScale[8] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f};
  const int64_t nb = cols / kNib64;
  bool exact = true;
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kNib64;
    float* pb = xp + b * kNib64;
    for (int m = 0; m < 8; ++m) {
      float sum = 0.0f;
      for (int j = 0; j < 8; ++j) {
        const float v = xb[8 * m + j], a = std::fabs(v);
        exact &= !(a > 0.0f && a < 0x1p-114f);
        sum += v;
        pb[8 * (j ^ 1) + m] = v * kScale[j ^ 1];
      }
      xs[8 * b + m] = sum;
    }
  }
  for (int64_t c = nb * kNib64; c < cols; ++c) xp[c] = x[c];
  return exact;
}

__attribute__((target("avx2,fma"))) void gemv_grouped_nib64_rows(const uint8_t* d, int64_t row_bytes, const float* scale,
                                                                 const float* zero, int64_t ngroups, int64_t group,
                                                                 int64_t r0, int64_t r1, int64_t cols, const float* xp,
                                                                 const float* xs, float* y) {
  const __m256i m0 = _mm256_set1_epi32(0xF), m1 = _mm256_set1_epi32(0xF0), m2 = _mm256_set1_epi32(0xF00),
                m3 = _mm256_set1_epi32(0xF000);
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc = _mm256_setzero_ps();
    float tail = 0.0f;
    const uint8_t* row = d + r * row_bytes;
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * group, c1 = std::min(cols, c0 + group), cb = c0 + (c1 - c0) / kNib64 * kNib64;
      // four sums (one per scale 16^q) so that four FMAs are in flight, and the block sums of x
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, xg = s0;
      for (int64_t c = c0; c < cb; c += kNib64) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c / 2));
        const __m256i h = _mm256_srli_epi32(v, 16);
        const float* xc = xp + c;
        s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, m0)), _mm256_loadu_ps(xc), s0);
        s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, m1)), _mm256_loadu_ps(xc + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, m2)), _mm256_loadu_ps(xc + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, m3)), _mm256_loadu_ps(xc + 24), s3);
        s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(h, m0)), _mm256_loadu_ps(xc + 32), s0);
        s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(h, m1)), _mm256_loadu_ps(xc + 40), s1);
        s2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(h, m2)), _mm256_loadu_ps(xc + 48), s2);
        s3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(h, m3)), _mm256_loadu_ps(xc + 56), s3);
        xg = _mm256_add_ps(xg, _mm256_loadu_ps(xs + c / 8));
      }
      const float sc = scale[r * ngroups + g], ze = zero[r * ngroups + g];
      const __m256 t = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(sc), _mm256_fnmadd_ps(_mm256_set1_ps(ze), xg, t), acc);
      if (cb < c1) {  // the columns after the row's last whole block
        float ts = 0.0f;
        for (int64_t c = cb; c < c1; ++c) {
          const int code = (c & 1) ? (row[c >> 1] & 15) : (row[c >> 1] >> 4);
          ts += (static_cast<float>(code) - ze) * xp[c];
        }
        tail += sc * ts;
      }
    }
    y[r] = hsum_avx(acc) + tail;
  }
}

#endif

}  // namespace

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

namespace {

// Whether g_idx puts column c in group c / group (no act-order permutation). A running group number
// rather than a division per column: a decoding step checks it for every product.
bool natural_groups(const int32_t* gi, int64_t cols, int64_t group) {
  int64_t gc = 0, next = group;
  for (int64_t c = 0; c < cols; ++c) {
    if (c == next) ++gc, next += group;
    if (gi[c] != gc) return false;
  }
  return true;
}

// What the row kernels read of a grouped weight: its parts made contiguous and held for as long as
// a kernel (which keeps a copy) lives, with the shape in the kernels' terms.
struct GroupedView {
  at::Tensor scale, zero, data;
  const uint8_t* codes;
  const float *ps, *pz;
  int64_t rows, cols, group, ngroups, row_bytes;
  explicit GroupedView(const QuantizedTensor& w)
      : scale(w.scale.contiguous()), zero(w.zero.contiguous()), data(w.data.contiguous()),
        codes(data.data_ptr<uint8_t>()), ps(scale.data_ptr<float>()), pz(zero.data_ptr<float>()),
        rows(w.shape[0]), cols(w.shape[1]), group(w.spec.group > 0 ? w.spec.group : cols),
        ngroups(groups_of(w.spec, cols)), row_bytes(data.size(1)) {}
};

#ifdef QINTERP_X86_AVX2
// decode=q8's row kernel (gemv_q8's signature) for nibble codes in natural groups of whole runs of 32.
auto grouped_q8_kernel(const QuantizedTensor& w) {
  return [v = GroupedView(w)](int64_t r0, int64_t r1, const int8_t* q, const uint8_t* a, const float* d,
                              const float* s, int64_t nx, float* y) {
    with_input_rows(nx, [&](auto n) {
      gemv_q8_rows<n(), false>(v.codes, v.row_bytes, v.ps + r0 * v.ngroups, v.pz + r0 * v.ngroups, v.ngroups, v.group,
                               nullptr, r0, r1, v.rows, v.cols, q, a, d, s, y);
    });
  };
}

// The exact row kernel (gemv_rows' signature) for codes in natural groups.
auto grouped_exact_kernel(const QuantizedTensor& w) {
  return [v = GroupedView(w), nibbles = w.spec.bits <= 4](int64_t r0, int64_t r1, const float* xp, int64_t nx,
                                                          float* yp) {
    with_input_rows(nx, [&](auto n) {
      gemv_grouped_rows_avx2<n()>(v.codes, v.row_bytes, nibbles, v.ps, v.pz, v.ngroups, v.group, r0, r1, v.rows,
                                  v.cols, xp, yp);
    });
  };
}

// The 64-code kernel as gemv_rows' row kernel for one input row prepared by prepare_nib64 (xp, xs).
auto grouped_nib64_kernel(const QuantizedTensor& w, const float* xs) {
  return [v = GroupedView(w), xs](int64_t r0, int64_t r1, const float* xp, int64_t, float* yp) {
    gemv_grouped_nib64_rows(v.codes, v.row_bytes, v.ps, v.pz, v.ngroups, v.group, r0, r1, v.cols, xp, xs, yp);
  };
}
#endif

// decode=q8 (gemv_q8.hpp) for nibble codes in natural groups of whole runs of 32.
at::Tensor gemv_grouped_q8(const at::Tensor& x, const QuantizedTensor& w) {
#ifdef QINTERP_X86_AVX2
  if (cpu_has_fma()) return gemv_q8(x, w.shape[0], w.shape[1], grouped_q8_kernel(w));
#endif
  const GroupedView v(w);
  return gemv_q8_reference(x, v.rows, v.cols, [&](const int8_t* q, const float* d, float* y) {
    ref::gemv_grouped_q8(v.codes, v.ps, v.pz, v.rows, v.cols, v.group, q, d, y);
  });
}

// Which CPU kernel gemv_grouped takes for float32 x on the CPU: Nib64 for one input row where it
// can (Exact for several rows, or where x cannot be prepared for it), Exact for other groups and bytes.
enum class GroupedPath { Q8, Nib64, Exact, None };

// Whether the first kernel takes w's codes: bytes, or nibbles whose groups start on a byte.
bool exact_kernel_fits(const QuantizedTensor& w) {
  const int64_t cols = w.shape[1], group = w.spec.group > 0 ? w.spec.group : cols;
  return w.spec.bits > 4 || group % 2 == 0;
}

GroupedPath grouped_path(const QuantizedTensor& w) {
  const int64_t cols = w.shape[1], group = w.spec.group > 0 ? w.spec.group : cols;
  const bool nibbles = w.spec.bits <= 4;
  // Columns in their natural groups only (act-order permutes them: dequantize + matmul then).
  // Checked in a plain loop: a decoding step should run no ATen op it does not need.
  const bool natural = w.g_idx.defined() && w.g_idx.numel() == cols && w.g_idx.is_cpu() &&
                       w.g_idx.scalar_type() == at::kInt && w.g_idx.is_contiguous() &&
                       natural_groups(w.g_idx.data_ptr<int32_t>(), cols, group);
  if (!w.data.device().is_cpu() || !natural) return GroupedPath::None;
  if (w.spec.decode_q8 && nibbles && cols % 32 == 0 && group % 32 == 0) return GroupedPath::Q8;
#ifdef QINTERP_X86_AVX2
  if (nibbles && (group % kNib64 == 0 || group >= cols) && cpu_has_fma()) return GroupedPath::Nib64;
  if (exact_kernel_fits(w) && cpu_has_fma()) return GroupedPath::Exact;
#endif
  return GroupedPath::None;
}

}  // namespace

at::Tensor gemv_grouped(const at::Tensor& x, const QuantizedTensor& w) {
  if (w.spec.method != Method::RTN && w.spec.method != Method::GPTQ) fail("gemv_grouped: weight is not rtn/gptq");
  check_gemv_input("gemv_grouped", x, w);
  const bool cpu_f32 = x.device().is_cpu() && x.scalar_type() == at::kFloat;
  const GroupedPath path = cpu_f32 ? grouped_path(w) : GroupedPath::None;
  if (path == GroupedPath::Q8) return gemv_grouped_q8(x, w);
#ifdef QINTERP_X86_AVX2
  const int64_t rows = w.shape[0], cols = w.shape[1];
  if (path == GroupedPath::Nib64 && x.numel() == cols) {
    const at::Tensor xc = x.contiguous();
    at::Tensor xp = at::empty_like(xc);
    std::vector<float> sums(static_cast<size_t>(cols / kNib64 * 8));
    if (prepare_nib64(xc.data_ptr<float>(), cols, xp.data_ptr<float>(), sums.data()))
      return gemv_rows(xp, rows, cols, grouped_nib64_kernel(w, sums.data()));
  }
  if (path == GroupedPath::Exact || (path == GroupedPath::Nib64 && exact_kernel_fits(w)))
    return gemv_rows(x, rows, cols, grouped_exact_kernel(w));
#endif
  return wide_linear(x, dequantize(w, x.scalar_type()));
}

namespace detail {

bool grouped_row_job(StepInput& x, const QuantizedTensor& w, float* y, RowJob* job) {
#ifdef QINTERP_X86_AVX2
  if ((w.spec.method != Method::RTN && w.spec.method != Method::GPTQ) || w.shape.size() != 2 || !cpu_has_fma() ||
      x.cols != w.shape[1] || x.n < 1 || x.n > 4)
    return false;
  switch (grouped_path(w)) {
    case GroupedPath::Q8: *job = q8_row_job(x, w.shape[0], y, grouped_q8_kernel(w)); return true;
    case GroupedPath::Nib64:
      if (x.n == 1) {
        if (x.nib64_state == 0) {
          x.nib64.resize(static_cast<size_t>(x.cols));
          x.nib64_sums.resize(static_cast<size_t>(x.cols / kNib64 * 8));
          x.nib64_state = prepare_nib64(x.x, x.cols, x.nib64.data(), x.nib64_sums.data()) ? 1 : -1;
        }
        if (x.nib64_state > 0) {
          *job = row_job(x, x.nib64.data(), w.shape[0], y, grouped_nib64_kernel(w, x.nib64_sums.data()));
          return true;
        }
      }
      if (!exact_kernel_fits(w)) return false;
      *job = row_job(x, x.x, w.shape[0], y, grouped_exact_kernel(w));
      return true;
    case GroupedPath::Exact: *job = row_job(x, x.x, w.shape[0], y, grouped_exact_kernel(w)); return true;
    default: return false;
  }
#else
  (void)x, (void)w, (void)y, (void)job;
  return false;
#endif
}

}  // namespace detail

// ---- the format's entry points (formats.hpp)

QuantizedTensor rtn_quantize(const at::Tensor& x, const QuantSpec& spec) { return quantize_rtn(x, spec); }

namespace {

// grouped_dequantize on the CPU in one pass: scale * (code - zero) per weight, the same float32
// operations as the tensor expression below (so the same bits), without its five full-size
// temporaries (unpacked codes, codes as floats, the gathered zeros and scales, the difference).
at::Tensor grouped_dequantize_cpu(const QuantizedTensor& q) {
  const int64_t rows = q.shape[0], cols = q.shape[1], ng = q.scale.size(1);
  const bool nibbles = q.spec.bits <= 4;
  if (q.data.dim() != 2 || q.data.size(0) != rows || q.data.size(1) < (nibbles ? (cols + 1) / 2 : cols))
    fail("dequantize ", q.spec.str(), ": packed codes of shape ", q.data.sizes(), " do not hold a [", rows, ", ", cols,
         "] weight");
  const at::Tensor data = q.data.contiguous(), scale = q.scale.contiguous(), zero = q.zero.contiguous(),
                   gi = q.g_idx.contiguous();
  const int64_t row_bytes = data.size(1);
  const uint8_t* dp = data.data_ptr<uint8_t>();
  const float *sp = scale.data_ptr<float>(), *zp = zero.data_ptr<float>();
  const int32_t* gp = gi.data_ptr<int32_t>();
  for (int64_t c = 0; c < cols; ++c)
    if (gp[c] < 0 || gp[c] >= ng) fail("dequantize ", q.spec.str(), ": g_idx holds a group outside [0, ", ng, ")");
  // Natural groups (no act-order) have one scale and zero per run of columns: a loop the compiler
  // vectorises. Codes go through a byte -> (high, low) float pair table.
  const int64_t group = q.spec.group > 0 ? q.spec.group : cols;
  const bool natural = natural_groups(gp, cols, group);
  float pairs[256][2];
  for (int b = 0; b < 256; ++b) pairs[b][0] = static_cast<float>(b >> 4), pairs[b][1] = static_cast<float>(b & 15);
  at::Tensor out = at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> code(static_cast<size_t>(cols + 1));
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = dp + r * row_bytes;
      if (nibbles) {
        for (int64_t i = 0; i < (cols + 1) / 2; ++i) std::memcpy(&code[2 * i], pairs[row[i]], sizeof(pairs[0]));
      } else {
        for (int64_t c = 0; c < cols; ++c) code[c] = static_cast<float>(row[c]);
      }
      const float *sr = sp + r * ng, *zr = zp + r * ng, *cp = code.data();
      float* o = op + r * cols;
      if (natural) {
        for (int64_t c0 = 0, g = 0; c0 < cols; c0 += group, ++g) {
          const float sg = sr[g], zg = zr[g];
          const int64_t c1 = std::min(cols, c0 + group);
          for (int64_t c = c0; c < c1; ++c) o[c] = sg * (cp[c] - zg);
        }
      } else {
        for (int64_t c = 0; c < cols; ++c) o[c] = sr[gp[c]] * (cp[c] - zr[gp[c]]);
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor grouped_dequantize(const QuantizedTensor& q, at::ScalarType dtype) {
  if (q.data.is_cpu() && q.data.scalar_type() == at::kByte && q.scale.dim() == 2 &&
      q.scale.scalar_type() == at::kFloat && q.zero.scalar_type() == at::kFloat && q.zero.sizes() == q.scale.sizes() &&
      q.g_idx.scalar_type() == at::kInt && q.g_idx.numel() == q.shape[1] && q.scale.size(0) == q.shape[0])
    return grouped_dequantize_cpu(q).to(dtype);
  const at::Tensor codes = unpack_codes(q.data, q.spec.bits, q.shape[1]).to(at::kFloat);
  const at::Tensor gi = q.g_idx.to(at::kLong);
  return (q.scale.index_select(1, gi) * (codes - q.zero.index_select(1, gi))).to(dtype);
}

void grouped_check(const QuantizedTensor& q, const std::string& where) {
  if (q.shape.size() != 2) fail(where, ": ", q.spec.str(), " weight must be 2-D");
  const int64_t rows = q.shape[0], cols = q.shape[1], g = groups_of(q.spec, cols);
  need_part(where, q.data, "qdata", at::kByte, q.spec.bits <= 4 ? rows * ((cols + 1) / 2) : rows * cols);
  need_part(where, q.scale, "scale", at::kFloat, rows * g);
  need_part(where, q.zero, "zero", at::kFloat, rows * g);
  need_part(where, q.g_idx, "g_idx", at::kInt, cols);
  const auto gi = q.g_idx.to(at::kCPU);
  if (cols && (gi.min().item<int>() < 0 || gi.max().item<int>() >= g))
    fail(where, ": g_idx holds a group outside [0, ", g, ")");
}

at::Tensor grouped_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias) {
  if (x.is_cpu() && x.scalar_type() == at::kFloat && few_rows_no_grad(x, w.shape[1], kFusedRowsPackedCpu)) {
    at::Tensor y = gemv_grouped(x, w);
    return bias.defined() ? y + bias : y;
  }
  return wide_linear(x, grouped_dequantize(w, x.scalar_type()), bias);
}

}  // namespace qinterp::quant
