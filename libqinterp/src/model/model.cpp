#include "qinterp/model/model.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "../quant/format_common.hpp"  // run-time CPU feature tests, hsum_avx
#include "qinterp/device.hpp"
#include "qinterp/error.hpp"
#include "qinterp/quant/format.hpp"

namespace qinterp::model {

namespace {

const std::string kLogitsHook = "hook_logits";

// A decoding step's tensors: float32 on the CPU, at most 4 rows, no gradient. For these the model
// skips ATen's per-op overhead (dispatch, allocation, TensorIterator set-up), which a 135M model
// pays dozens of times per layer and token: norms, rotary embedding with the KV-cache write,
// single-query attention, residual sums and the gated activation run as plain loops below, the
// same arithmetic up to float32 summation order and the last bit of exp/tanh.
bool decode_rows(const at::Tensor& x) {
  return x.is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 1 && x.size(-1) > 0 &&
         x.numel() / x.size(-1) <= 4 && !(at::GradMode::is_enabled() && x.requires_grad());
}

// Row by row in float32 (n rows of D): w * (x * rsqrt(mean(x^2) + eps)), Hugging Face's
// LlamaRMSNorm, or with one_plus (x * rsqrt(mean(x^2) + eps)) * (1 + w), Gemma's.
void rms_norm_raw(const float* xp, int64_t n, int64_t D, const float* wp, double eps, bool one_plus, float* o) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = xp + r * D;
    double ss = 0.0;
    for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float var = static_cast<float>(ss / static_cast<double>(D));
    const float inv = 1.0f / std::sqrt(var + static_cast<float>(eps));
    if (one_plus)
      for (int64_t i = 0; i < D; ++i) o[r * D + i] = (xr[i] * inv) * (1.0f + wp[i]);
    else
      for (int64_t i = 0; i < D; ++i) o[r * D + i] = wp[i] * (xr[i] * inv);
  }
}

at::Tensor rms_norm_rows(const at::Tensor& x_in, const at::Tensor& w, double eps, bool one_plus) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t D = x.size(-1);
  rms_norm_raw(x.data_ptr<float>(), x.numel() / D, D, w.data_ptr<float>(), eps, one_plus, out.data_ptr<float>());
  return out;
}

// One head's rotary embedding: the first 2 * half dims rotate (adjacent pairs or the two halves),
// the rest pass through (partial rotary, Phi-2).
inline void rope_head(const float* xi, const float* c, const float* s, int64_t hd, int64_t half, RopeLayout layout,
                      float* oi) {
  if (layout == RopeLayout::Interleaved) {
    for (int64_t i = 0; i < half; ++i) {
      const float x0 = xi[2 * i], x1 = xi[2 * i + 1];
      oi[2 * i] = x0 * c[i] - x1 * s[i];
      oi[2 * i + 1] = x0 * s[i] + x1 * c[i];
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const float x0 = xi[i], x1 = xi[half + i];
      oi[i] = x0 * c[i] - x1 * s[i];
      oi[half + i] = x1 * c[i] + x0 * s[i];
    }
  }
  for (int64_t i = 2 * half; i < hd; ++i) oi[i] = xi[i];
}

// A decoding step's rotary embedding and cache write on raw rows: q [B, H, hd], k and v [B, KV, hd]
// (one new position per row), cos and sin [B, half]; writes the rotated queries to qo [B, H, hd]
// and the rotated keys and the values into the cache at position `past`.
void rope_step_raw(const float* qp, const float* kp, const float* vp, const float* cp, const float* sp, int64_t B,
                   int64_t H, int64_t KV, int64_t hd, int64_t half, RopeLayout layout, float* qo, at::Tensor& cache_k,
                   at::Tensor& cache_v, int64_t past) {
  float* ck = cache_k.data_ptr<float>();
  float* cv = cache_v.data_ptr<float>();
  const int64_t kb = cache_k.stride(0), kh = cache_k.stride(1), ks = cache_k.stride(2);
  const int64_t vb = cache_v.stride(0), vh = cache_v.stride(1), vs = cache_v.stride(2);
  for (int64_t b = 0; b < B; ++b) {
    const float *c = cp + b * half, *s = sp + b * half;
    for (int64_t h = 0; h < H; ++h) rope_head(qp + (b * H + h) * hd, c, s, hd, half, layout, qo + (b * H + h) * hd);
    for (int64_t j = 0; j < KV; ++j) {
      rope_head(kp + (b * KV + j) * hd, c, s, hd, half, layout, ck + b * kb + j * kh + past * ks);
      std::memcpy(cv + b * vb + j * vh + past * vs, vp + (b * KV + j) * hd, static_cast<size_t>(hd) * sizeof(float));
    }
  }
}

// The same on tensors [B, 1, heads, hd]: returns the rotated queries as [B, H, 1, hd].
at::Tensor rope_step_into_cache(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                const at::Tensor& cos_in, const at::Tensor& sin_in, RopeLayout layout,
                                at::Tensor& cache_k, at::Tensor& cache_v, int64_t past) {
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  const int64_t B = q.size(0), H = q.size(2), KV = k.size(2), hd = q.size(3), half = cos.size(-1);
  at::Tensor out = at::empty({B, H, 1, hd}, q.options());
  rope_step_raw(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), cos.data_ptr<float>(),
                sin.data_ptr<float>(), B, H, KV, hd, half, layout, out.data_ptr<float>(), cache_k, cache_v, past);
  return out;
}

// a + b for a decoding step's rows (same shape, float32), without TensorIterator's set-up.
at::Tensor add_rows(const at::Tensor& a_in, const at::Tensor& b_in) {
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  at::Tensor out = at::empty(a.sizes(), a.options());
  const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0, n = a.numel(); i < n; ++i) o[i] = ap[i] + bp[i];
  return out;
}

bool step_add(const at::Tensor& a, const at::Tensor& b) {
  return decode_rows(a) && decode_rows(b) && a.sizes() == b.sizes();
}

// act(pre) * up over n floats, the activation rounded to float32 before the product as in the
// unfused path; SiLU as x / (1 + e^-x), GELU-tanh as in ATen. false: not one of those.
bool gated_act_raw(const float* pp, const float* up_p, int64_t n, Activation act, float* o) {
  if (act == Activation::SiLU) {
    for (int64_t i = 0; i < n; ++i) {
      const float a = pp[i] / (1.0f + std::exp(-pp[i]));
      o[i] = a * up_p[i];
    }
    return true;
  }
  if (act != Activation::GeluTanh) return false;
  const float k0 = static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5), k1 = 0.044715f;
  for (int64_t i = 0; i < n; ++i) {
    const float x = pp[i];
    const float a = 0.5f * x * (1.0f + std::tanh(k0 * (x + k1 * x * x * x)));
    o[i] = a * up_p[i];
  }
  return true;
}

bool gated_act_rows(const at::Tensor& pre_in, const at::Tensor& up_in, Activation act, at::Tensor& out) {
  if (act != Activation::SiLU && act != Activation::GeluTanh) return false;
  const at::Tensor pre = pre_in.contiguous(), up = up_in.contiguous();
  out = at::empty(pre.sizes(), pre.options());
  return gated_act_raw(pre.data_ptr<float>(), up.data_ptr<float>(), pre.numel(), act, out.data_ptr<float>());
}

#ifdef QINTERP_X86_AVX2
__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i < n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  return quant::detail::hsum_avx(_mm256_add_ps(s0, s1));
}

// Sums of eight vectors at once: lane i of the result is the sum of a[i]'s lanes.
__attribute__((target("avx2"))) inline __m256 hsum8(const __m256 a[8]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// One query head against keys [s0, s1) of its kv head (rows kb + s * ks, hd % 8 == 0): p[s - s0] =
// (q . k[s]) * scale, -inf where masked; eight keys at a time so that no key needs its own
// horizontal sum. Returns the chunk's maximum (-inf when every key is masked).
__attribute__((target("avx2,fma"))) float chunk_scores(const float* qi, const float* kb, int64_t ks, const bool* mask,
                                                      int64_t mask_s, int64_t s0, int64_t s1, int64_t hd, float scale,
                                                      float* p) {
  int64_t s = s0;
  for (; s + 8 <= s1; s += 8) {
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < hd; c += 8) {
      const __m256 qc = _mm256_loadu_ps(qi + c);
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(kb + (s + i) * ks + c), qc, acc[i]);
    }
    _mm256_storeu_ps(p + (s - s0), _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(scale)));
  }
  for (; s < s1; ++s) p[s - s0] = dot_avx2(qi, kb + s * ks, hd) * scale;
  float m = -INFINITY;
  for (s = s0; s < s1; ++s) {
    if (!mask[s * mask_s]) p[s - s0] = -INFINITY;
    m = std::max(m, p[s - s0]);
  }
  return m;
}

// o = sum over keys [s0, s1) of exp(p - m) * v[s] (unnormalized, hd floats), 64 dims of o in
// registers at a time; returns sum of exp(p - m). Masked keys (p = -inf) add nothing.
__attribute__((target("avx2,fma"))) float chunk_values(float* p, float m, const float* vb, int64_t vs, int64_t s0,
                                                      int64_t s1, int64_t hd, float* o) {
  float l = 0.0f;
  for (int64_t s = s0; s < s1; ++s) {
    const float e = p[s - s0] == -INFINITY ? 0.0f : std::exp(p[s - s0] - m);
    p[s - s0] = e;
    l += e;
  }
  for (int64_t d0 = 0; d0 < hd; d0 += 64) {
    const int64_t nd = std::min<int64_t>(64, hd - d0) / 8;
    __m256 acc[8];
    for (int64_t c = 0; c < nd; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t s = s0; s < s1; ++s) {
      if (p[s - s0] == 0.0f) continue;
      const __m256 e = _mm256_set1_ps(p[s - s0]);
      const float* row = vb + s * vs + d0;
      for (int64_t c = 0; c < nd; ++c) acc[c] = _mm256_fmadd_ps(e, _mm256_loadu_ps(row + 8 * c), acc[c]);
    }
    for (int64_t c = 0; c < nd; ++c) _mm256_storeu_ps(o + d0 + 8 * c, acc[c]);
  }
  return l;
}

// Every (row, head) of a decoding step: q [B, H, hd] contiguous, k and v [B, KV, S, hd] views with
// unit stride in hd and equal strides (the KV cache), mask [B, S] strided; out [B, H, hd].
// Work comes in units of (row, kv head, chunk of keys), so that the threads get equal shares even
// when B * KV is small (SmolLM2: 3 kv heads): each unit runs its kv head's query heads over its
// keys (the keys read while in cache) and keeps a partial softmax (max, sum, unnormalized output),
// merged per head afterwards as in flash decoding.
void decode_attention(const float* q, const float* k, const float* v, const bool* mask, int64_t mask_b,
                      int64_t mask_s, int64_t B, int64_t H, int64_t KV, int64_t S, int64_t hd,
                      const int64_t* kstride, float scale, float* out) {
  const int64_t g = H / KV, threads = at::get_num_threads();
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((2 * threads + B * KV - 1) / (B * KV), S / 32));
  const int64_t per = (S + chunks - 1) / chunks;
  std::vector<float> part_m(static_cast<size_t>(B * H * chunks)), part_l(part_m.size());
  std::vector<float> part_o(part_m.size() * static_cast<size_t>(hd));
  at::parallel_for(0, B * KV * chunks, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> p(static_cast<size_t>(per));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / (KV * chunks), j = (u / chunks) % KV, c = u % chunks;
      const int64_t s0 = c * per, s1 = std::min(S, s0 + per);
      const int64_t off = b * kstride[0] + j * kstride[1];
      for (int64_t h = j * g; h < (j + 1) * g; ++h) {
        const int64_t slot = (b * H + h) * chunks + c;
        float m = -INFINITY, l = 0.0f;
        float* o = part_o.data() + slot * hd;
        if (s0 < s1) m = chunk_scores(q + (b * H + h) * hd, k + off, kstride[2], mask + b * mask_b, mask_s, s0, s1, hd,
                                      scale, p.data());
        if (m == -INFINITY) {
          std::fill(o, o + hd, 0.0f);
        } else {
          l = chunk_values(p.data(), m, v + off, kstride[2], s0, s1, hd, o);
        }
        part_m[static_cast<size_t>(slot)] = m;
        part_l[static_cast<size_t>(slot)] = l;
      }
    }
  });
  for (int64_t i = 0; i < B * H; ++i) {  // merge the chunks: every query sees at least itself
    float m = -INFINITY;
    for (int64_t c = 0; c < chunks; ++c) m = std::max(m, part_m[static_cast<size_t>(i * chunks + c)]);
    float l = 0.0f;
    float* oi = out + i * hd;
    std::fill(oi, oi + hd, 0.0f);
    for (int64_t c = 0; c < chunks; ++c) {
      const float mc = part_m[static_cast<size_t>(i * chunks + c)];
      if (mc == -INFINITY) continue;
      const float w = std::exp(mc - m);
      l += w * part_l[static_cast<size_t>(i * chunks + c)];
      const float* o = part_o.data() + (i * chunks + c) * hd;
      for (int64_t d = 0; d < hd; ++d) oi[d] += w * o[d];
    }
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < hd; ++d) oi[d] *= inv;
  }
}
#endif

// Gemma's: x / rms(x) * (1 + w) all in float32, cast last.
at::Tensor rms_norm_one_plus(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps) * (1.0 + w.to(at::kFloat))).to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  // Reduce in float32 and cast back before the weight, as Hugging Face's LlamaRMSNorm does.
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor r = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return w * r.to(x.scalar_type());
}

at::Tensor activate(const at::Tensor& x, Activation a) {
  switch (a) {
    case Activation::SiLU: return at::silu(x);
    case Activation::GeluTanh: return at::gelu(x, "tanh");
    case Activation::Gelu: return at::gelu(x);
    case Activation::Relu: return at::relu(x);
  }
  return x;
}

// x [B, T, heads, hd]; cos/sin [B, T, 1, rd/2] in x's dtype: the first rd dims of each head
// rotate, the rest pass through (partial rotary, Phi-2).
at::Tensor apply_rope(const at::Tensor& x_all, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  const int64_t hd = 2 * cos.size(-1);
  if (hd < x_all.size(-1))
    return at::cat({apply_rope(x_all.narrow(-1, 0, hd), cos, sin, layout),
                    x_all.narrow(-1, hd, x_all.size(-1) - hd)}, -1);
  const at::Tensor& x = x_all;
  if (layout == RopeLayout::Interleaved) {
    const at::Tensor p = x.unflatten(-1, {hd / 2, 2});
    const at::Tensor x0 = p.select(-1, 0), x1 = p.select(-1, 1);
    return at::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).flatten(-2);
  }
  const at::Tensor x0 = x.narrow(-1, 0, hd / 2), x1 = x.narrow(-1, hd / 2, hd / 2);
  return at::cat({x0 * cos - x1 * sin, x1 * cos + x0 * sin}, -1);
}

// A decoding step's few rows take the streaming kernel (quant::dense_linear), others at::linear.
at::Tensor dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  return quant::dense_linear(x, w, b);
}

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

std::string linear_module(const ModelConfig& cfg, int which) {
  const WeightRole* r = linear_role(cfg, which);
  if (!r) fail(cfg.source, ": a ", cfg.arch, " block has no linear layer ", which);
  const std::string w = r->hf;
  return w.substr(0, w.size() - std::string(".weight").size());
}

at::Tensor* Model::role_tensor(Role r, int64_t layer) {
  switch (r) {
    case Role::Embed: return &embed_;
    case Role::FinalNorm: return &final_norm_;
    case Role::FinalNormBias: return &final_norm_b_;
    case Role::LmHead: return &lm_head_;
    case Role::LmHeadBias: return &lm_head_b_;
    default: break;
  }
  Layer& L = layers_.at(static_cast<size_t>(layer));
  switch (r) {
    case Role::AttnNorm: return &L.attn_norm;
    case Role::AttnNormBias: return &L.attn_norm_b;
    case Role::FfnNorm: return &L.ffn_norm;
    case Role::FfnNormBias: return &L.ffn_norm_b;
    case Role::PostAttnNorm: return &L.post_attn_norm;
    case Role::PostFfnNorm: return &L.post_ffn_norm;
    case Role::QNorm: return &L.q_norm;
    case Role::KNorm: return &L.k_norm;
    default: break;
  }
  for (const WeightRole& wr : weight_roles(cfg_))
    if (wr.role == r && wr.linear >= 0) return wr.bias ? &L.b[wr.linear] : &L.w[wr.linear];
  fail(cfg_.source, ": a ", cfg_.arch, " model has no tensor for this role");
}

Model::Model(ModelConfig cfg, std::vector<NamedTensor> weights, std::map<std::string, quant::QuantizedTensor> quantized)
    : cfg_(std::move(cfg)) {
  cfg_.validate();
  std::map<std::string, at::Tensor> w;
  for (auto& nt : weights) w[nt.name] = std::move(nt.tensor);
  layers_.resize(static_cast<size_t>(cfg_.num_layers));
  std::set<std::string> used;  // every checkpoint tensor must be taken by a role: see below
  const auto& roles = weight_roles(cfg_);
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    for (const WeightRole& r : roles) {
      if (!r.per_layer && l > 0) continue;
      // A role the configuration does not use stays out of `used`, so its tensor is refused below.
      if (!role_required(r.role, cfg_)) continue;
      const std::string name = hf_name(r, l);
      const std::vector<int64_t> shape = role_shape(r.role, cfg_);
      used.insert(name);
      if (auto qi = quantized.find(name); qi != quantized.end() && !w.count(name)) {
        if (r.linear < 0 || !r.per_layer) fail(cfg_.source, ": tensor '", name, "' cannot be quantized");
        if (qi->second.shape != shape)
          fail(cfg_.source, ": quantized tensor '", name, "' has shape ", shape_str(qi->second.shape),
               " but the configuration needs ", shape_str(shape));
        continue;  // installed as a QLinear below
      }
      auto it = w.find(name);
      if (it == w.end()) fail(cfg_.source, ": missing tensor '", name, "'");
      if (it->second.sizes() != at::IntArrayRef(shape))
        fail(cfg_.source, ": tensor '", name, "' has shape ", shape_str(it->second.sizes()),
             " but the configuration needs ", shape_str(shape));
      *role_tensor(r.role, l) = it->second;
    }
  }
  if (cfg_.tie_embeddings) lm_head_ = embed_;
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    for (int k = 0; k < kNumLinear; ++k) {
      const WeightRole* r = linear_role(cfg_, k);
      if (!r) continue;
      auto it = quantized.find(hf_name(*r, l));
      if (it == quantized.end()) continue;
      if (!quant_.quantized()) quant_ = it->second.spec;
      L.q[k] = std::make_shared<const quant::QLinear>(it->second, L.b[k]);
    }
  }
  // A tensor no role takes would be dropped without a word (an o_proj.bias left out changes the
  // output): refuse it, naming it.
  for (const auto& [name, t] : w)
    if (!used.count(name))
      fail(cfg_.source, ": tensor '", name, "' has no place in a ", cfg_.arch, " model with this configuration (",
           cfg_.summary(), "); ignoring it would compute something else than the checkpoint describes");
  for (const auto& [name, q] : quantized)
    if (!used.count(name)) fail(cfg_.source, ": quantized tensor '", name, "' has no place in this model");
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    std::array<std::string, kNumHookPoints> names;
    for (int k = 0; k < kNumHookPoints; ++k) names[k] = hook_name(l, static_cast<HookPoint>(k));
    hook_names_.push_back(std::move(names));
  }
  // One dtype and device for all weights: the embedding's.
  to(embed_.device(), embed_.scalar_type() == at::kFloat || embed_.scalar_type() == at::kHalf ||
                              embed_.scalar_type() == at::kBFloat16
                          ? embed_.scalar_type()
                          : at::kFloat);
}

namespace {
// Exactly Hugging Face's float32 computation: inv_freq = 1 / theta^(2i/d) over the d rotated dims,
// rescaled as the rope type says (modeling_rope_utils); returns cos and sin of pos * inv_freq.
std::pair<at::Tensor, at::Tensor> rope_tables(const ModelConfig& c, double theta, RopeScaling scaling) {
  const int64_t hd = c.rotary_dim ? c.rotary_dim : c.head_dim;
  at::Tensor inv = 1.0 / at::pow(at::scalar_tensor(theta, at::kFloat),
                                 at::arange(0, hd, 2, at::kLong).to(at::kFloat) / static_cast<double>(hd));
  if (scaling == RopeScaling::Linear) {
    inv = inv / c.rope_factor;
  } else if (scaling == RopeScaling::Llama3) {
    // Wavelengths shorter than original/high_freq_factor keep their frequency, longer than
    // original/low_freq_factor are divided by factor, and the band between is interpolated.
    const double f = c.rope_factor, lo = c.rope_low_freq_factor, hi = c.rope_high_freq_factor;
    const double old_ctx = static_cast<double>(c.rope_original_context);
    const double low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
    const at::Tensor wavelen = 2 * M_PI / inv;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv / f, inv);
    const at::Tensor smooth = (old_ctx / wavelen - lo) / (hi - lo);
    const at::Tensor smoothed = (1 - smooth) * scaled / f + smooth * scaled;
    const at::Tensor medium = (wavelen < high_wavelen).logical_not().logical_and((wavelen > low_wavelen).logical_not());
    inv = at::where(medium, smoothed, scaled);
  }
  const at::Tensor ang = at::outer(at::arange(c.max_seq_len, at::kLong).to(at::kFloat), inv);
  return {ang.cos(), ang.sin()};
}
}  // namespace

void Model::build_rope() {
  auto [cos, sin] = rope_tables(cfg_, cfg_.rope_theta, cfg_.rope_scaling);
  rope_cos_ = cos.to(embed_.device());
  rope_sin_ = sin.to(embed_.device());
  if (cfg_.rope_theta_local > 0) {
    auto [lc, ls] = rope_tables(cfg_, cfg_.rope_theta_local, RopeScaling::None);
    rope_cos_local_ = lc.to(embed_.device());
    rope_sin_local_ = ls.to(embed_.device());
  }
}

void Model::to(at::Device device, at::ScalarType dtype) {
  check_device(device);
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16)
    fail("Model::to: compute dtype must be float32, float16 or bfloat16");
  auto cv = [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device, dtype).contiguous();
  };
  const bool tied = lm_head_.defined() && lm_head_.is_same(embed_);
  cv(embed_);
  cv(final_norm_);
  cv(final_norm_b_);
  cv(lm_head_b_);
  if (tied) lm_head_ = embed_; else cv(lm_head_);
  for (auto& L : layers_) {
    for (at::Tensor* t : {&L.attn_norm, &L.attn_norm_b, &L.ffn_norm, &L.ffn_norm_b, &L.post_attn_norm,
                          &L.post_ffn_norm, &L.q_norm, &L.k_norm})
      cv(*t);
    for (int k = 0; k < kNumLinear; ++k) {
      cv(L.w[k]);
      cv(L.b[k]);
    }
    for (auto& q : L.q)
      if (q && q->weight().device() != device) {
        auto moved = std::make_shared<quant::QLinear>(*q);
        moved->to(device);
        q = moved;
      }
  }
  build_rope();
  set_compact_head(compact_head_);
}

void Model::set_compact_head(bool on) {
  compact_head_ = on;
  head_q8_ = on && lm_head_.defined() && lm_head_.is_cpu() ? quant::exact_q8_blocks(lm_head_) : quant::Q8Blocks{};
}

at::Device Model::device() const { return embed_.device(); }
at::ScalarType Model::dtype() const { return embed_.scalar_type(); }

std::vector<NamedTensor> Model::named_parameters() const {
  std::vector<NamedTensor> out;
  auto* self = const_cast<Model*>(this);  // role_tensor hands out members; nothing is changed here
  const auto& roles = weight_roles(cfg_);
  auto model_level = [&](Role which) {
    for (const WeightRole& r : roles)
      if (r.role == which) {
        const at::Tensor& t = *self->role_tensor(r.role, 0);
        if (t.defined() && !(r.role == Role::LmHead && t.is_same(embed_))) out.push_back({hf_name(r, 0), t});
      }
  };
  model_level(Role::Embed);
  for (size_t l = 0; l < layers_.size(); ++l) {
    for (const WeightRole& r : roles) {
      if (!r.per_layer) continue;
      const at::Tensor& t = *self->role_tensor(r.role, static_cast<int64_t>(l));
      if (t.defined()) out.push_back({hf_name(r, static_cast<int64_t>(l)), t});
    }
    for (int k = 0; k < kNumLinear; ++k)
      if (layers_[l].q[k])
        for (const auto& part : layers_[l].q[k]->weight().parts())
          out.push_back({hf_name(*linear_role(cfg_, k), static_cast<int64_t>(l)) + "." + part.first, part.second});
  }
  model_level(Role::FinalNorm);
  model_level(Role::FinalNormBias);
  model_level(Role::LmHead);
  model_level(Role::LmHeadBias);
  return out;
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : named_parameters())
    if (p.name.find(".weight.") == std::string::npos) n += p.tensor.numel();
  for (const auto& L : layers_)
    for (const auto& q : L.q)
      if (q) n += q->weight().numel();
  return n;
}

int64_t Model::parameter_bytes() const {
  int64_t n = 0;
  for (const auto& p : named_parameters()) n += p.tensor.numel() * static_cast<int64_t>(p.tensor.element_size());
  return n;
}

KVCache Model::new_cache(int64_t batch, int64_t capacity) const {
  KVCache c;
  const auto opt = embed_.options();
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    c.k.push_back(at::zeros({batch, cfg_.num_kv_heads, capacity, cfg_.head_dim}, opt));
    c.v.push_back(at::zeros({batch, cfg_.num_kv_heads, capacity, cfg_.head_dim}, opt));
  }
  c.key_valid = at::zeros({batch, capacity}, opt.dtype(at::kBool));
  c.next_pos = at::zeros({batch}, opt.dtype(at::kLong));
  return c;
}

Pass Model::begin(const at::Tensor& ids_in, const at::Tensor& mask_in, const Hooks* hooks, KVCache* cache) const {
  if (!ids_in.defined() || ids_in.dim() != 2)
    fail("Model::forward: ids must be a [batch, seq] integer tensor");
  if (ids_in.is_floating_point() || ids_in.is_complex()) fail("Model::forward: ids must be integers");
  const int64_t B = ids_in.size(0), T = ids_in.size(1);
  if (B == 0 || T == 0) fail("Model::forward: empty batch or sequence");
  const at::Device dev = device();
  Pass p;
  p.B = B;
  p.T = T;
  p.hooks = hooks && !hooks->empty() ? hooks : nullptr;
  p.cache = cache;
  p.ids = ids_in.to(dev, at::kLong);
  if (mask_in.defined()) {
    if (mask_in.sizes() != ids_in.sizes())
      fail("Model::forward: mask shape ", shape_str(mask_in.sizes()), " differs from ids shape ",
           shape_str(ids_in.sizes()));
    p.mask = mask_in.to(dev).ne(0);
  } else {
    p.mask = at::ones({B, T}, p.ids.options().dtype(at::kBool));
  }
  {
    const auto lo = p.ids.min().item<int64_t>(), hi = p.ids.max().item<int64_t>();
    if (lo < 0 || hi >= cfg_.vocab_size)
      fail("Model::forward: token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  }
  if (p.hooks) {
    p.hooks->check_layers(cfg_.num_layers);
    if (cfg_.parallel_block)
      for (const std::string& n : p.hooks->names())
        if (n.find(hook_point_name(HookPoint::ResidMid)) != std::string::npos)
          fail("Model::forward: hook '", n, "' never fires: a ", cfg_.arch,
               " block runs attention and MLP side by side, so it has no residual stream between them");
  }
  const int64_t past = cache ? cache->length : 0, S = past + T;
  p.past = past;
  if (cache) {
    if (cache->k.size() != static_cast<size_t>(cfg_.num_layers) || cache->key_valid.size(0) != B)
      fail("Model::forward: the KV cache was made for another model or batch size");
    if (S > cache->capacity())
      fail("Model::forward: KV cache holds ", cache->capacity(), " positions; ", S, " needed");
  }
  // RoPE position of each token: the number of real tokens before it in its row.
  at::Tensor pos = (at::cumsum(p.mask.to(at::kLong), 1) - 1).clamp_min(0);
  if (cache) pos = pos + cache->next_pos.unsqueeze(1);
  if (pos.max().item<int64_t>() >= cfg_.max_seq_len)
    fail("Model::forward: position ", pos.max().item<int64_t>(), " is beyond the model's context of ",
         cfg_.max_seq_len, " tokens");
  const int64_t half = rope_cos_.size(1);
  const at::ScalarType dt = dtype();
  const at::Tensor flat = pos.reshape({-1});
  p.cos = rope_cos_.index_select(0, flat).view({B, T, 1, half}).to(dt);
  p.sin = rope_sin_.index_select(0, flat).view({B, T, 1, half}).to(dt);
  if (rope_cos_local_.defined()) {
    p.cos_local = rope_cos_local_.index_select(0, flat).view({B, T, 1, half}).to(dt);
    p.sin_local = rope_sin_local_.index_select(0, flat).view({B, T, 1, half}).to(dt);
  }

  // Attention mask [B, 1, T, S], true = may attend: causal and not padding. A padding query
  // would have no key left and give NaN, so every query may always see itself.
  const at::Tensor key_valid = cache ? at::cat({cache->key_valid.narrow(1, 0, past), p.mask}, 1) : p.mask;
  const auto bopt = p.mask.options();
  const at::Tensor qpos = at::arange(past, S, bopt.dtype(at::kLong)).unsqueeze(1);
  const at::Tensor kpos = at::arange(S, bopt.dtype(at::kLong)).unsqueeze(0);
  // A sliding window (Mistral) keeps the keys with q - k < window, as transformers does. Padding
  // is on the left, so slot distance equals token distance between real tokens.
  // With layer_types (Gemma 3) the window applies to the sliding layers only.
  auto allowed = [&](bool window) {
    at::Tensor causal = kpos.le(qpos);
    if (window) causal = causal.logical_and(kpos.gt(qpos - cfg_.sliding_window));
    return (causal.unsqueeze(0).logical_and(key_valid.unsqueeze(1))).logical_or(kpos.eq(qpos).unsqueeze(0)).unsqueeze(1);
  };
  const bool per_layer = !cfg_.layer_types.empty();
  p.attn_mask = allowed(cfg_.sliding_window > 0 && !per_layer);
  if (per_layer && cfg_.layer_types.find('s') != std::string::npos) p.attn_mask_local = allowed(true);
  return p;
}

std::vector<std::string> Model::hook_points() const {
  std::vector<std::string> out;
  for (auto& n : Hooks::all_names(cfg_.num_layers))
    if (!cfg_.parallel_block || n.find(hook_point_name(HookPoint::ResidMid)) == std::string::npos)
      out.push_back(std::move(n));
  return out;
}

at::Tensor Model::embed(const Pass& p) const {
  const at::Tensor e = at::embedding(embed_, p.ids);
  if (!cfg_.scale_embeddings) return e;
  // sqrt(hidden) as a float32 scalar rounded to the compute dtype, as Gemma's scaled embedding.
  return e * at::scalar_tensor(static_cast<float>(std::sqrt(static_cast<double>(cfg_.hidden_size))), at::kFloat)
                 .to(e.scalar_type());
}

at::Tensor Model::norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
  if (cfg_.norm == NormKind::LayerNorm) return at::layer_norm(x, {x.size(-1)}, w, b, cfg_.rms_norm_eps);
  const bool one_plus = cfg_.norm == NormKind::RMSOnePlus;
  if (decode_rows(x) && w.scalar_type() == at::kFloat && w.is_contiguous())
    return rms_norm_rows(x, w, cfg_.rms_norm_eps, one_plus);
  return one_plus ? rms_norm_one_plus(x, w, cfg_.rms_norm_eps) : rms_norm(x, w, cfg_.rms_norm_eps);
}

at::Tensor Model::linear(const Layer& L, int which, const at::Tensor& x, int64_t l, const LinearObserver& obs) const {
  if (obs) obs(l, which, x);
  if (L.q[which]) return L.q[which]->forward(x);
  return dense(x, L.w[which], L.b[which]);
}

bool Model::step_job(const Layer& L, int which, quant::detail::StepInput& in, float* y,
                     quant::detail::RowJob* job) const {
  if (const auto& q = L.q[which]) {
    const auto prepare = quant::format_of(q->weight().spec.method).row_job;
    return q->compute_dtype() == at::kFloat && prepare && prepare(in, q->weight(), y, job);
  }
  return quant::detail::dense_row_job(in, L.w[which], y, job);
}

bool Model::together(const Layer& L, std::initializer_list<int> which, const at::Tensor& x, int64_t l,
                     const LinearObserver& obs, at::Tensor* out) const {
  if (!decode_rows(x) || which.size() > 3) return false;
  const at::Tensor xs = x.contiguous();
  quant::detail::StepInput in;
  in.x = xs.data_ptr<float>();
  in.cols = xs.size(-1);
  in.n = xs.numel() / in.cols;
  quant::detail::RowJob jobs[3];
  quant::detail::RowJob* ptrs[3];
  size_t n = 0;
  for (int w : which) {
    const int64_t rows = L.q[w] ? L.q[w]->out_features() : L.w[w].size(0);
    out[n] = at::empty({in.n, rows}, xs.options());
    if (!step_job(L, w, in, out[n].data_ptr<float>(), &jobs[n])) return false;
    ptrs[n] = &jobs[n];
    ++n;
  }
  if (obs)
    for (int w : which) obs(l, w, x);
  quant::detail::run_row_jobs(ptrs, n);
  n = 0;
  for (int w : which) {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = jobs[n].rows;
    out[n] = out[n].view(shape);
    const at::Tensor& b = L.q[w] ? L.q[w]->bias() : L.b[w];
    if (b.defined()) out[n] = out[n] + b;
    ++n;
  }
  return true;
}

bool Model::fused_step_ok(const Pass& p) const {
#ifdef QINTERP_X86_AVX2
  const ModelConfig& c = cfg_;
  if (at::GradMode::is_enabled()) {  // a weight someone made trainable: the usual path records the graph
    if (embed_.requires_grad()) return false;
    for (const Layer& L : layers_) {
      if (L.attn_norm.requires_grad() || L.ffn_norm.requires_grad()) return false;
      for (int i = 0; i < kNumLinear; ++i)
        if ((L.w[i].defined() && L.w[i].requires_grad()) || (L.b[i].defined() && L.b[i].requires_grad()) ||
            (L.q[i] && L.q[i]->bias().defined() && L.q[i]->bias().requires_grad()))
          return false;
    }
  }
  auto rows_of = [](const at::Tensor& t) { return !t.defined() || (t.is_contiguous() && t.dim() == 4); };
  return p.cache && p.T == 1 && p.B <= 4 && !p.hooks && embed_.is_cpu() && embed_.scalar_type() == at::kFloat &&
         quant::detail::cpu_has_fma() && (c.norm == NormKind::RMS || c.norm == NormKind::RMSOnePlus) &&
         !c.parallel_block && c.gated_mlp && (c.activation == Activation::SiLU || c.activation == Activation::GeluTanh) &&
         c.head_dim % 8 == 0 && p.attn_mask.dim() == 4 && (!p.attn_mask_local.defined() || p.attn_mask_local.dim() == 4) &&
         rows_of(p.cos) && rows_of(p.sin) && rows_of(p.cos_local) && rows_of(p.sin_local) &&
         p.cos.scalar_type() == at::kFloat;
#else
  (void)p;
  return false;
#endif
}

// A decoding step without hooks, layer by layer on raw rows: the same loops and kernels as
// run_layer's step path (so the same numbers, bit for bit), with one buffer for the step's
// intermediates instead of some eighty ATen calls a layer (views, allocations, dispatch), which
// on a 135M model cost as much as a fifth of a step. A layer that does not fit (a norm or cache
// not float32) runs through run_layer; a product without a fused kernel, through linear().
at::Tensor Model::fused_step(const Pass& p) const {
  const ModelConfig& c = cfg_;
  const int64_t B = p.B, D = c.hidden_size, H = c.num_heads, KV = c.num_kv_heads, hd = c.head_dim;
  const int64_t I = c.intermediate_size, past = p.past, S = past + 1;
  const float scale = static_cast<float>(
      1.0 / std::sqrt(c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar : static_cast<double>(hd)));
  at::Tensor x = embed(p).contiguous();
  // h [B, D], q, qr [B, H * hd], k, v [B, KV * hd], a [B, H * hd], gate, up, post [B, I], o [B, D]
  std::vector<float> buf(static_cast<size_t>(B * (D + 3 * H * hd + 2 * KV * hd + 3 * I + D)));
  float* h = buf.data();
  float *q = h + B * D, *qr = q + B * H * hd, *k = qr + B * H * hd, *v = k + B * KV * hd;
  float *a = v + B * KV * hd, *g = a + B * H * hd, *u = g + B * I, *post = u + B * I, *o = post + B * I;
  const bool one_plus = c.norm == NormKind::RMSOnePlus;

  // y [B, rows] = in Wᵀ (+ bias) for each of `which`, together where every one has a fused kernel
  auto products = [&](const Layer& L, std::initializer_list<int> which, const float* in_p, int64_t cols,
                      std::initializer_list<float*> outs, int64_t l) {
    quant::detail::StepInput in;
    in.x = in_p, in.n = B, in.cols = cols;
    quant::detail::RowJob jobs[3];
    quant::detail::RowJob* ptrs[3];
    size_t n = 0;
    auto y = outs.begin();
    for (int w : which) {
      if (!step_job(L, w, in, *y, &jobs[n])) break;
      ptrs[n] = &jobs[n];
      ++n, ++y;
    }
    if (n == which.size()) {
      quant::detail::run_row_jobs(ptrs, n);
    } else {  // the usual way, one product at a time
      const at::Tensor xt = at::from_blob(const_cast<float*>(in_p), {B, 1, cols}, x.options());
      y = outs.begin();
      for (int w : which) {
        const at::Tensor r = linear(L, w, xt, l, {}).to(at::kFloat).contiguous();
        std::memcpy(*y++, r.data_ptr<float>(), static_cast<size_t>(r.numel()) * sizeof(float));
      }
      return;
    }
    y = outs.begin();
    for (int w : which) {
      const at::Tensor& b = L.q[w] ? L.q[w]->bias() : L.b[w];
      if (b.defined()) {
        const at::Tensor bf = b.to(at::kFloat).contiguous();
        const float* bp = bf.data_ptr<float>();
        const int64_t rows = bf.numel();
        for (int64_t r = 0; r < B; ++r)
          for (int64_t i = 0; i < rows; ++i) (*y)[r * rows + i] += bp[i];
      }
      ++y;
    }
  };
  auto fits = [&](const at::Tensor& t) { return t.scalar_type() == at::kFloat && t.is_contiguous(); };
  auto norm_rows = [&](const float* in, int64_t n, int64_t d, const at::Tensor& w, float* out) {
    rms_norm_raw(in, n, d, w.data_ptr<float>(), c.rms_norm_eps, one_plus, out);
  };

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Layer& L = layers_[l];
    at::Tensor& ck = p.cache->k[l];
    at::Tensor& cv = p.cache->v[l];
    if (!(fits(L.attn_norm) && fits(L.ffn_norm) && (!c.qk_norm || (fits(L.q_norm) && fits(L.k_norm))) &&
          (!c.sandwich_norms || (fits(L.post_attn_norm) && fits(L.post_ffn_norm))) && ck.scalar_type() == at::kFloat &&
          cv.scalar_type() == at::kFloat && ck.strides() == cv.strides() && ck.stride(3) == 1)) {
      x = run_layer(l, x, p).contiguous();
      continue;
    }
    // the rotary tables and the mask of this layer's kind (Gemma 3: sliding or global)
    const bool local = !c.layer_types.empty() && c.layer_types[static_cast<size_t>(l)] == 's';
    const at::Tensor& cos = local && p.cos_local.defined() ? p.cos_local : p.cos;
    const at::Tensor& sin = local && p.sin_local.defined() ? p.sin_local : p.sin;
    const at::Tensor& mask = local && p.attn_mask_local.defined() ? p.attn_mask_local : p.attn_mask;
    float* xp = x.data_ptr<float>();
    norm_rows(xp, B, D, L.attn_norm, h);
    products(L, {kQ, kK, kV}, h, D, {q, k, v}, l);
    if (c.qk_norm) {  // in place, row by row: each row is read before it is written
      norm_rows(q, B * H, hd, L.q_norm, q);
      norm_rows(k, B * KV, hd, L.k_norm, k);
    }
    rope_step_raw(q, k, v, cos.data_ptr<float>(), sin.data_ptr<float>(), B, H, KV, hd, cos.size(-1), c.rope_layout, qr,
                  ck, cv, past);
    const int64_t ks[3] = {ck.stride(0), ck.stride(1), ck.stride(2)};
#ifdef QINTERP_X86_AVX2
    decode_attention(qr, ck.data_ptr<float>(), cv.data_ptr<float>(), mask.data_ptr<bool>(), mask.stride(0),
                     mask.stride(3), B, H, KV, S, hd, ks, scale, a);
#endif
    products(L, {kO}, a, H * hd, {o}, l);
    if (c.sandwich_norms) norm_rows(o, B, D, L.post_attn_norm, o);
    for (int64_t i = 0; i < B * D; ++i) xp[i] = xp[i] + o[i];
    norm_rows(xp, B, D, L.ffn_norm, h);
    products(L, {kGate, kUp}, h, D, {g, u}, l);
    gated_act_raw(g, u, B * I, c.activation, post);
    products(L, {kDown}, post, I, {o}, l);
    if (c.sandwich_norms) norm_rows(o, B, D, L.post_ffn_norm, o);
    for (int64_t i = 0; i < B * D; ++i) xp[i] = xp[i] + o[i];
  }
  return x;
}

at::Tensor Model::run_layer(int64_t l, const at::Tensor& x_in, const Pass& p, const LinearObserver& obs,
                            bool last_only) const {
  if (l < 0 || l >= cfg_.num_layers) fail("Model::run_layer: no layer ", l);
  if (last_only && p.cache) fail("Model::run_layer: last_only cannot fill a KV cache");
  const int64_t T = p.T, past = p.past, S = past + T;
  const int64_t H = cfg_.num_heads, KV = cfg_.num_kv_heads, hd = cfg_.head_dim;
  // Queries (and everything after attention) at positions [q0, T).
  const int64_t q0 = last_only ? T - 1 : 0, Tq = T - q0;
  const at::Tensor qmask = last_only ? p.mask.narrow(1, q0, 1) : p.mask;
  auto hook = [&](const std::string& name, const at::Tensor& mask, at::Tensor x) {
    return p.hooks ? p.hooks->run(name, l, std::move(x), mask) : x;
  };
  KVCache* cache = p.cache;
  const Layer& L = layers_[l];
  const auto& names = hook_names_[l];
  auto hn = [&](HookPoint k) -> const std::string& { return names[static_cast<int>(k)]; };
  at::Tensor x = hook(hn(HookPoint::ResidPre), p.mask, x_in);
  const int64_t B = x.size(0);  // a hook may have expanded one row into several (Hooks::set_batch_expansion)
  at::Tensor h = norm(x, L.attn_norm, L.attn_norm_b);
  const at::Tensor hq = last_only ? h.narrow(1, q0, 1) : h;
  const bool local = !cfg_.layer_types.empty() && cfg_.layer_types[static_cast<size_t>(l)] == 's';
  const at::Tensor& cos = local && p.cos_local.defined() ? p.cos_local : p.cos;
  const at::Tensor& sin = local && p.sin_local.defined() ? p.sin_local : p.sin;
  const at::Tensor cq = last_only ? cos.narrow(1, q0, 1) : cos, sq = last_only ? sin.narrow(1, q0, 1) : sin;
  at::Tensor qkv[3];
  if (last_only || !together(L, {kQ, kK, kV}, h, l, obs, qkv))
    qkv[0] = linear(L, kQ, hq, l, obs), qkv[1] = linear(L, kK, h, l, obs), qkv[2] = linear(L, kV, h, l, obs);
  at::Tensor q = hook(hn(HookPoint::AttnQ), qmask, qkv[0].view({B, Tq, H, hd}));
  at::Tensor k = hook(hn(HookPoint::AttnK), p.mask, qkv[1].view({B, T, KV, hd}));
  at::Tensor v = hook(hn(HookPoint::AttnV), p.mask, qkv[2].view({B, T, KV, hd})).transpose(1, 2);
  if (cfg_.qk_norm) {  // per head; a decoding step's heads as rows (B * heads of them), like fused_step
    auto head_norm = [&](const at::Tensor& t, const at::Tensor& w) {
      if (t.size(1) == 1 && t.size(0) <= 4 && t.is_cpu() && t.scalar_type() == at::kFloat &&
          !(at::GradMode::is_enabled() && t.requires_grad()) && w.scalar_type() == at::kFloat && w.is_contiguous())
        return rms_norm_rows(t, w, cfg_.rms_norm_eps, cfg_.norm == NormKind::RMSOnePlus);
      return norm(t, w, {});
    };
    q = head_norm(q, L.q_norm);
    k = head_norm(k, L.k_norm);
  }
  // A decoding step (one new position per row, few rows, float32 on the CPU, no gradient).
  const bool step = p.cache && Tq == 1 && B <= 4 && q.is_cpu() && q.scalar_type() == at::kFloat &&
                    k.scalar_type() == at::kFloat && !(at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad()));
  if (step && T == 1 && cache->k[l].scalar_type() == at::kFloat && cache->v[l].scalar_type() == at::kFloat &&
      v.scalar_type() == at::kFloat) {
    q = rope_step_into_cache(q, k, v.transpose(1, 2), cq, sq, cfg_.rope_layout, cache->k[l], cache->v[l], past);
    k = cache->k[l].narrow(2, 0, S);
    v = cache->v[l].narrow(2, 0, S);
  } else {
    q = apply_rope(q, cq, sq, cfg_.rope_layout).transpose(1, 2);
    k = apply_rope(k, cos, sin, cfg_.rope_layout).transpose(1, 2);
    if (cache) {
      cache->k[l].narrow(2, past, T).copy_(k);
      cache->v[l].narrow(2, past, T).copy_(v);
      k = cache->k[l].narrow(2, 0, S);
      v = cache->v[l].narrow(2, 0, S);
    }
  }
  const at::Tensor& layer_mask = local && p.attn_mask_local.defined() ? p.attn_mask_local : p.attn_mask;
  const at::Tensor amask = last_only ? layer_mask.narrow(2, q0, 1) : layer_mask;
  const double scale = 1.0 / std::sqrt(cfg_.query_pre_attn_scalar > 0 ? cfg_.query_pre_attn_scalar
                                                                      : static_cast<double>(hd));
  at::Tensor a;
  if (p.hooks && p.hooks->has(hn(HookPoint::AttnPattern))) {
    // The pattern is asked for: attention written out, softmax in float32 as transformers' eager path.
    const at::Tensor kk = KV != H ? k.repeat_interleave(H / KV, 1) : k, vv = KV != H ? v.repeat_interleave(H / KV, 1) : v;
    const at::Tensor scores = at::matmul(q, kk.transpose(-1, -2)) * scale;
    at::Tensor pattern = at::softmax(scores.masked_fill(amask.logical_not(), -INFINITY).to(at::kFloat), -1)
                             .to(q.scalar_type());
    pattern = hook(hn(HookPoint::AttnPattern), qmask, pattern);
    a = at::matmul(pattern, vv);
#ifdef QINTERP_X86_AVX2
  } else if (step && hd % 8 == 0 && k.strides() == v.strides() && k.stride(3) == 1 && quant::detail::cpu_has_fma()) {
    // One query per row: the loops above, reading the cache in place.
    const at::Tensor qc = q.contiguous();
    a = at::empty({B, H, 1, hd}, qc.options());
    const at::Tensor m2 = amask.select(1, 0).select(1, 0);  // [B, S] bool, strided
    const int64_t ks[3] = {k.stride(0), k.stride(1), k.stride(2)};
    decode_attention(qc.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), m2.data_ptr<bool>(),
                     m2.stride(0), m2.stride(1), B, H, KV, S, hd, ks, static_cast<float>(scale), a.data_ptr<float>());
#endif
  } else {
    // Grouped-query attention (kv head j serves query heads j*g .. j*g+g-1) without copying k, v.
    const std::optional<double> sdpa_scale = cfg_.query_pre_attn_scalar > 0 ? std::optional<double>(scale) : std::nullopt;
    a = at::scaled_dot_product_attention(q, k, v, amask, 0.0, false, sdpa_scale, KV != H);
  }
  a = hook(hn(HookPoint::AttnZ), qmask, a.transpose(1, 2)).reshape({B, Tq, H * hd});
  at::Tensor o = linear(L, kO, a, l, obs);
  if (cfg_.sandwich_norms) o = norm(o, L.post_attn_norm, {});
  o = hook(hn(HookPoint::AttnOut), qmask, o);
  if (last_only) x = x.narrow(1, q0, 1);
  if (cfg_.parallel_block) {
    h = hq;  // the MLP reads the same norm as attention (Phi-2)
  } else {
    x = hook(hn(HookPoint::ResidMid), qmask, step_add(x, o) ? add_rows(x, o) : x + o);
    h = norm(x, L.ffn_norm, L.ffn_norm_b);
  }
  at::Tensor gate_up[2];
  const bool fused_mlp = cfg_.gated_mlp && together(L, {kGate, kUp}, h, l, obs, gate_up);
  at::Tensor pre = hook(hn(HookPoint::MlpPre), qmask, fused_mlp ? gate_up[0] : linear(L, kGate, h, l, obs));
  at::Tensor post;
  if (cfg_.gated_mlp && decode_rows(pre) &&
      !(p.hooks && (p.hooks->has(hn(HookPoint::MlpAct)) || p.hooks->has(hn(HookPoint::MlpPost))))) {
    // a decoding step whose activation nobody hooks: act(gate) * up in one loop
    const at::Tensor up = fused_mlp ? gate_up[1] : linear(L, kUp, h, l, obs);
    if (!(up.sizes() == pre.sizes() && up.scalar_type() == at::kFloat && gated_act_rows(pre, up, cfg_.activation, post)))
      post = activate(pre, cfg_.activation) * up;
  } else {
    at::Tensor act = hook(hn(HookPoint::MlpAct), qmask, activate(pre, cfg_.activation));
    post = hook(hn(HookPoint::MlpPost), qmask,
                cfg_.gated_mlp ? act * (fused_mlp ? gate_up[1] : linear(L, kUp, h, l, obs)) : act);
  }
  at::Tensor m = linear(L, kDown, post, l, obs);
  if (cfg_.sandwich_norms) m = norm(m, L.post_ffn_norm, {});
  m = hook(hn(HookPoint::MlpOut), qmask, m);
  // Phi-2 sums as transformers does: attn + mlp + residual.
  return hook(hn(HookPoint::ResidPost), qmask, cfg_.parallel_block ? o + m + x : step_add(x, m) ? add_rows(x, m) : x + m);
}

at::Tensor Model::finish(const at::Tensor& x_in, const Pass& p) const {
  const at::Tensor x = norm(x_in, final_norm_, final_norm_b_);
  at::Tensor logits;
  if (head_q8_.fresh_for(lm_head_) && x.is_cpu() && x.scalar_type() == at::kFloat &&
      quant::detail::few_rows_no_grad(x, x.size(-1), quant::detail::kFusedRowsDenseCpu) &&
      !(at::GradMode::is_enabled() && lm_head_.requires_grad())) {
    logits = quant::gemv_q8_blocks(x, head_q8_);  // a decoding step or a short prompt
    if (lm_head_b_.defined()) logits = logits + lm_head_b_;
  } else {
    logits = dense(x, lm_head_, lm_head_b_).to(at::kFloat);
  }
  if (cfg_.final_logit_softcap > 0) logits = at::tanh(logits / cfg_.final_logit_softcap) * cfg_.final_logit_softcap;
  const at::Tensor mask = x_in.size(1) == p.T ? p.mask : p.mask.narrow(1, p.T - x_in.size(1), x_in.size(1));
  if (p.hooks) logits = p.hooks->run(kLogitsHook, -1, std::move(logits), mask);
  if (p.cache) {
    p.cache->key_valid.narrow(1, p.past, p.T).copy_(p.mask);
    p.cache->next_pos.add_(p.mask.to(at::kLong).sum(1));
    p.cache->length = p.past + p.T;
  }
  return logits;
}

at::Tensor Model::forward(const at::Tensor& ids, const at::Tensor& mask, const Hooks* hooks, KVCache* cache) const {
  const Pass p = begin(ids, mask, hooks, cache);
  if (fused_step_ok(p)) return finish(fused_step(p), p);
  at::Tensor x = embed(p);
  for (int64_t l = 0; l < cfg_.num_layers; ++l) x = run_layer(l, x, p);
  return finish(x, p);
}

at::Tensor Model::forward_last(const at::Tensor& ids, const at::Tensor& mask, const Hooks* hooks, KVCache* cache) const {
  if (hooks && hooks->has(kLogitsHook)) {
    const at::Tensor l = forward(ids, mask, hooks, cache);
    return l.narrow(1, l.size(1) - 1, 1);
  }
  const Pass p = begin(ids, mask, hooks, cache);
  at::Tensor x = embed(p);
  for (int64_t l = 0; l < cfg_.num_layers; ++l) x = run_layer(l, x, p);
  return finish(x.narrow(1, x.size(1) - 1, 1), p);
}

// ---------------------------------------------------------------- quantization

void Model::set_linear(int64_t layer, int which, std::shared_ptr<const quant::QLinear> q) {
  if (layer < 0 || layer >= cfg_.num_layers) fail("Model::set_linear: no layer ", layer);
  if (which < 0 || which >= kNumLinear) fail("Model::set_linear: no linear ", which);
  if (!q) fail("Model::set_linear: null layer");
  Layer& L = layers_[layer];
  const at::Tensor& w = L.w[which];
  if (!w.defined() && !L.q[which]) fail("Model::set_linear: layer ", layer, " has no ", linear_module(cfg_, which));
  const int64_t out = w.defined() ? w.size(0) : L.q[which]->out_features();
  const int64_t in = w.defined() ? w.size(1) : L.q[which]->in_features();
  if (q && (q->out_features() != out || q->in_features() != in))
    fail("Model::set_linear: layer ", layer, " ", linear_module(cfg_, which), " is [", out, ", ", in,
         "], the replacement [", q->out_features(), ", ", q->in_features(), "]");
  if (!quant_.quantized()) quant_ = q->weight().spec;
  L.q[which] = std::move(q);
  L.w[which] = at::Tensor();  // the dense copy is no longer needed
}

std::shared_ptr<const quant::QLinear> Model::qlinear(int64_t layer, int which) const {
  if (layer < 0 || layer >= cfg_.num_layers || which < 0 || which >= kNumLinear) fail("Model::qlinear: out of range");
  return layers_[layer].q[which];
}

at::Tensor Model::linear_weight(int64_t layer, int which) const {
  if (layer < 0 || layer >= cfg_.num_layers || which < 0 || which >= kNumLinear)
    fail("Model::linear_weight: out of range");
  const Layer& L = layers_[layer];
  if (L.q[which]) return quant::dequantize(L.q[which]->weight(), at::kFloat);
  return L.w[which];
}

at::Tensor Model::linear_bias(int64_t layer, int which) const {
  if (layer < 0 || layer >= cfg_.num_layers || which < 0 || which >= kNumLinear)
    fail("Model::linear_bias: out of range");
  return layers_[layer].b[which];
}

void Model::quantize(const quant::QuantSpec& spec, const std::function<void(int64_t, int64_t)>& progress) {
  if (!spec.quantized()) fail("Model::quantize: '", spec.str(), "' is not a quantized format; use to() for dtypes");
  if (spec.method == quant::Method::GPTQ)
    fail("Model::quantize: GPTQ needs calibration data; use model::quantize_gptq (model/quantize.hpp)");
  if (quant_.quantized()) fail("Model::quantize: the model is already quantized (", quant_.str(), ")");
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    Layer& L = layers_[l];
    for (int k = 0; k < kNumLinear; ++k) {
      if (!L.w[k].defined()) continue;  // non-gated MLP has no up_proj
      quant::QuantizedTensor q;
      try {
        q = quant::quantize(L.w[k], spec);
      } catch (const Error& e) {
        fail(cfg_.source, ": layer ", l, ", linear ", k, " (q, k, v, o, gate, up, down): ", e.what());
      }
      set_linear(l, k, std::make_shared<const quant::QLinear>(std::move(q), L.b[k]));
    }
    if (progress) progress(l + 1, cfg_.num_layers);
  }
  quant_ = spec;
}

namespace {

// Picks the next token of each row from logits [B, V] (any device); returns [B] int64 on CPU.
at::Tensor pick(const at::Tensor& logits, const GenerateOptions& o, at::Generator& gen) {
  if (o.temperature <= 0) return logits.argmax(-1).to(at::kCPU);
  at::Tensor p = at::softmax(logits.to(at::kCPU, at::kDouble) / o.temperature, -1);
  if (o.top_p < 1.0) {
    // Keep the smallest set of most likely tokens whose mass reaches top_p.
    auto sorted = p.sort(-1, /*descending=*/true);
    at::Tensor sp = std::get<0>(sorted), si = std::get<1>(sorted);
    at::Tensor drop = (sp.cumsum(-1) - sp).ge(o.top_p);
    sp = sp.masked_fill(drop, 0.0);
    p = at::zeros_like(p).scatter(-1, si, sp);
  }
  return at::multinomial(p, 1, false, gen).squeeze(-1);
}

}  // namespace

at::Tensor Model::generate(const at::Tensor& ids_in, const GenerateOptions& opts, const at::Tensor& mask_in,
                           const Hooks* hooks) const {
  c10::NoGradGuard no_grad;
  if (!ids_in.defined() || ids_in.dim() != 2) fail("Model::generate: ids must be [batch, seq]");
  if (opts.max_new_tokens < 0) fail("Model::generate: max_new_tokens must be >= 0");
  if (!(opts.temperature >= 0) || std::isinf(opts.temperature))
    fail("Model::generate: temperature must be a finite number >= 0 (0 = greedy), got ", opts.temperature);
  if (!(opts.top_p > 0 && opts.top_p <= 1)) fail("Model::generate: top_p must be in (0, 1], got ", opts.top_p);
  const int64_t B = ids_in.size(0), T = ids_in.size(1);
  at::Tensor ids = ids_in.to(at::kCPU, at::kLong);
  at::Tensor mask = mask_in.defined() ? mask_in.to(at::kCPU).ne(0) : at::ones({B, T}, at::kBool);
  if (mask.sizes() != ids.sizes()) fail("Model::generate: mask shape differs from ids shape");
  if (!mask.select(1, T - 1).all().item<bool>())
    fail("Model::generate: the last position of every row must be a real token (pad on the left)");
  if (opts.max_new_tokens == 0) return ids;
  std::set<int64_t> stops(opts.stop_tokens.begin(), opts.stop_tokens.end());
  if (opts.use_default_stop && cfg_.eos_id >= 0) stops.insert(cfg_.eos_id);
  at::Tensor stop_t = at::tensor(std::vector<int64_t>(stops.begin(), stops.end()), at::kLong);

  KVCache cache = new_cache(B, T + opts.max_new_tokens);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(opts.seed);
  at::Tensor logits = forward_last(ids, mask, hooks, &cache).select(1, 0);
  std::vector<at::Tensor> out{ids};
  at::Tensor finished = at::zeros({B}, at::kBool);
  at::Tensor last = ids.select(1, T - 1);
  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    at::Tensor tok = pick(logits, opts, gen);
    tok = at::where(finished, last, tok);  // a stopped row repeats its stop token
    out.push_back(tok.unsqueeze(1));
    if (stop_t.numel()) finished = finished.logical_or(at::isin(tok, stop_t));
    last = tok;
    if (finished.all().item<bool>() || step + 1 == opts.max_new_tokens) break;
    logits = forward(tok.unsqueeze(1), at::ones({B, 1}, at::kBool), hooks, &cache).select(1, 0);
  }
  return at::cat(out, 1);
}

}  // namespace qinterp::model
