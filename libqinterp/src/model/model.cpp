#include "qinterp/model/model.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <map>
#include <set>

#include "qinterp/device.hpp"
#include "qinterp/error.hpp"

namespace qinterp::model {

namespace {

const std::string kLogitsHook = "hook_logits";

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

// x [B, T, heads, hd]; cos/sin [B, T, 1, hd/2] in x's dtype.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  const int64_t hd = x.size(-1);
  if (layout == RopeLayout::Interleaved) {
    const at::Tensor p = x.unflatten(-1, {hd / 2, 2});
    const at::Tensor x0 = p.select(-1, 0), x1 = p.select(-1, 1);
    return at::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).flatten(-2);
  }
  const at::Tensor x0 = x.narrow(-1, 0, hd / 2), x1 = x.narrow(-1, hd / 2, hd / 2);
  return at::cat({x0 * cos - x1 * sin, x1 * cos + x0 * sin}, -1);
}

at::Tensor dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

const char* linear_name(int which) {
  static const char* names[kNumLinear] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                          "mlp.down_proj"};
  if (which < 0 || which >= kNumLinear) fail("linear_name: no linear layer ", which);
  return names[which];
}

at::Tensor* Model::Layer::weight(int which) {
  at::Tensor* w[kNumLinear] = {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down};
  return w[which];
}
const at::Tensor* Model::Layer::bias(int which) const {
  if (which == kQ) return &bq;
  if (which == kK) return &bk;
  if (which == kV) return &bv;
  return nullptr;
}

at::Tensor* Model::role_tensor(Role r, int64_t layer) {
  switch (r) {
    case Role::Embed: return &embed_;
    case Role::FinalNorm: return &final_norm_;
    case Role::LmHead: return &lm_head_;
    default: break;
  }
  Layer& L = layers_.at(static_cast<size_t>(layer));
  switch (r) {
    case Role::AttnNorm: return &L.attn_norm;
    case Role::Q: return &L.wq;
    case Role::QBias: return &L.bq;
    case Role::K: return &L.wk;
    case Role::KBias: return &L.bk;
    case Role::V: return &L.wv;
    case Role::VBias: return &L.bv;
    case Role::O: return &L.wo;
    case Role::FfnNorm: return &L.ffn_norm;
    case Role::Gate: return &L.w_gate;
    case Role::Up: return &L.w_up;
    case Role::Down: return &L.w_down;
    default: fail("Model: no tensor for this role");
  }
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
      if (r.role == Role::LmHead && cfg_.tie_embeddings) continue;  // lm_head_ = embed_ below
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
      if (it == w.end()) {
        if (role_required(r.role, cfg_)) fail(cfg_.source, ": missing tensor '", name, "'");
        continue;
      }
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
      auto it = quantized.find("model.layers." + std::to_string(l) + "." + linear_name(k) + ".weight");
      if (it == quantized.end()) continue;
      if (!quant_.quantized()) quant_ = it->second.spec;
      const at::Tensor* b = L.bias(k);
      L.q[k] = std::make_shared<const quant::QLinear>(it->second, b && b->defined() ? *b : at::Tensor());
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

void Model::build_rope() {
  // Exactly Hugging Face's float32 computation: inv_freq = 1 / theta^(2i/d), angle = pos * inv_freq.
  const int64_t hd = cfg_.head_dim;
  const at::Tensor inv = 1.0 / at::pow(at::scalar_tensor(cfg_.rope_theta, at::kFloat),
                                       at::arange(0, hd, 2, at::kLong).to(at::kFloat) / static_cast<double>(hd));
  const at::Tensor ang = at::outer(at::arange(cfg_.max_seq_len, at::kLong).to(at::kFloat), inv);
  rope_cos_ = ang.cos().to(embed_.device());
  rope_sin_ = ang.sin().to(embed_.device());
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
  if (tied) lm_head_ = embed_; else cv(lm_head_);
  for (auto& L : layers_) {
    for (at::Tensor* t : {&L.attn_norm, &L.wq, &L.bq, &L.wk, &L.bk, &L.wv, &L.bv, &L.wo, &L.ffn_norm, &L.w_gate,
                          &L.w_up, &L.w_down})
      cv(*t);
    for (auto& q : L.q)
      if (q && q->weight().device() != device) {
        auto moved = std::make_shared<quant::QLinear>(*q);
        moved->to(device);
        q = moved;
      }
  }
  build_rope();
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
          out.push_back({"model.layers." + std::to_string(l) + "." + linear_name(k) + ".weight." + part.first,
                         part.second});
  }
  model_level(Role::FinalNorm);
  model_level(Role::LmHead);
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
  if (p.hooks) p.hooks->check_layers(cfg_.num_layers);
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
  const int64_t half = cfg_.head_dim / 2;
  const at::ScalarType dt = dtype();
  const at::Tensor flat = pos.reshape({-1});
  p.cos = rope_cos_.index_select(0, flat).view({B, T, 1, half}).to(dt);
  p.sin = rope_sin_.index_select(0, flat).view({B, T, 1, half}).to(dt);

  // Attention mask [B, 1, T, S], true = may attend: causal and not padding. A padding query
  // would have no key left and give NaN, so every query may always see itself.
  const at::Tensor key_valid = cache ? at::cat({cache->key_valid.narrow(1, 0, past), p.mask}, 1) : p.mask;
  const auto bopt = p.mask.options();
  const at::Tensor qpos = at::arange(past, S, bopt.dtype(at::kLong)).unsqueeze(1);
  const at::Tensor kpos = at::arange(S, bopt.dtype(at::kLong)).unsqueeze(0);
  const at::Tensor allowed =
      (kpos.le(qpos).unsqueeze(0).logical_and(key_valid.unsqueeze(1))).logical_or(kpos.eq(qpos).unsqueeze(0));
  p.attn_mask = allowed.unsqueeze(1);
  return p;
}

at::Tensor Model::embed(const Pass& p) const { return at::embedding(embed_, p.ids); }

at::Tensor Model::linear(const Layer& L, int which, const at::Tensor& x, int64_t l, const LinearObserver& obs) const {
  if (obs) obs(l, which, x);
  if (L.q[which]) return L.q[which]->forward(x);
  const at::Tensor* b = L.bias(which);
  return dense(x, *L.weight(which), b ? *b : at::Tensor());
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
  at::Tensor h = rms_norm(x, L.attn_norm, cfg_.rms_norm_eps);
  const at::Tensor hq = last_only ? h.narrow(1, q0, 1) : h;
  const at::Tensor cq = last_only ? p.cos.narrow(1, q0, 1) : p.cos, sq = last_only ? p.sin.narrow(1, q0, 1) : p.sin;
  at::Tensor q = apply_rope(linear(L, kQ, hq, l, obs).view({B, Tq, H, hd}), cq, sq, cfg_.rope_layout).transpose(1, 2);
  at::Tensor k = apply_rope(linear(L, kK, h, l, obs).view({B, T, KV, hd}), p.cos, p.sin, cfg_.rope_layout).transpose(1, 2);
  at::Tensor v = linear(L, kV, h, l, obs).view({B, T, KV, hd}).transpose(1, 2);
  if (cache) {
    cache->k[l].narrow(2, past, T).copy_(k);
    cache->v[l].narrow(2, past, T).copy_(v);
    k = cache->k[l].narrow(2, 0, S);
    v = cache->v[l].narrow(2, 0, S);
  }
  const at::Tensor amask = last_only ? p.attn_mask.narrow(2, q0, 1) : p.attn_mask;
  // Grouped-query attention (kv head j serves query heads j*g .. j*g+g-1) without copying k, v.
  at::Tensor a = at::scaled_dot_product_attention(q, k, v, amask, 0.0, false, std::nullopt, KV != H);
  a = a.transpose(1, 2).reshape({B, Tq, H * hd});
  at::Tensor o = hook(hn(HookPoint::AttnOut), qmask, linear(L, kO, a, l, obs));
  x = hook(hn(HookPoint::ResidMid), qmask, (last_only ? x.narrow(1, q0, 1) : x) + o);
  h = rms_norm(x, L.ffn_norm, cfg_.rms_norm_eps);
  at::Tensor pre = hook(hn(HookPoint::MlpPre), qmask, linear(L, kGate, h, l, obs));
  at::Tensor act = hook(hn(HookPoint::MlpAct), qmask, activate(pre, cfg_.activation));
  at::Tensor post = hook(hn(HookPoint::MlpPost), qmask, cfg_.gated_mlp ? act * linear(L, kUp, h, l, obs) : act);
  return hook(hn(HookPoint::ResidPost), qmask, x + linear(L, kDown, post, l, obs));
}

at::Tensor Model::finish(const at::Tensor& x_in, const Pass& p) const {
  const at::Tensor x = rms_norm(x_in, final_norm_, cfg_.rms_norm_eps);
  at::Tensor logits = dense(x, lm_head_).to(at::kFloat);
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
  at::Tensor x = embed(p);
  for (int64_t l = 0; l < cfg_.num_layers; ++l) x = run_layer(l, x, p);
  return finish(x, p);
}

// ---------------------------------------------------------------- quantization

void Model::set_linear(int64_t layer, int which, std::shared_ptr<const quant::QLinear> q) {
  if (layer < 0 || layer >= cfg_.num_layers) fail("Model::set_linear: no layer ", layer);
  if (which < 0 || which >= kNumLinear) fail("Model::set_linear: no linear ", which);
  if (!q) fail("Model::set_linear: null layer");
  Layer& L = layers_[layer];
  const at::Tensor* w = L.weight(which);
  if (!w->defined() && !L.q[which]) fail("Model::set_linear: layer ", layer, " has no ", linear_name(which));
  const int64_t out = w->defined() ? w->size(0) : L.q[which]->out_features();
  const int64_t in = w->defined() ? w->size(1) : L.q[which]->in_features();
  if (q && (q->out_features() != out || q->in_features() != in))
    fail("Model::set_linear: layer ", layer, " ", linear_name(which), " is [", out, ", ", in, "], the replacement [",
         q->out_features(), ", ", q->in_features(), "]");
  if (!quant_.quantized()) quant_ = q->weight().spec;
  L.q[which] = std::move(q);
  *L.weight(which) = at::Tensor();  // the dense copy is no longer needed
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
  return *L.weight(which);
}

at::Tensor Model::linear_bias(int64_t layer, int which) const {
  if (layer < 0 || layer >= cfg_.num_layers || which < 0 || which >= kNumLinear)
    fail("Model::linear_bias: out of range");
  const at::Tensor* b = layers_[layer].bias(which);
  return b ? *b : at::Tensor();
}

void Model::quantize(const quant::QuantSpec& spec, const std::function<void(int64_t, int64_t)>& progress) {
  if (!spec.quantized()) fail("Model::quantize: '", spec.str(), "' is not a quantized format; use to() for dtypes");
  if (spec.method == quant::Method::GPTQ)
    fail("Model::quantize: GPTQ needs calibration data; use model::quantize_gptq (model/quantize.hpp)");
  if (quant_.quantized()) fail("Model::quantize: the model is already quantized (", quant_.str(), ")");
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    Layer& L = layers_[l];
    for (int k = 0; k < kNumLinear; ++k) {
      const at::Tensor* w = L.weight(k);
      if (!w->defined()) continue;  // non-gated MLP has no up_proj
      const at::Tensor* b = L.bias(k);
      set_linear(l, k, std::make_shared<const quant::QLinear>(quant::quantize(*w, spec),
                                                              b && b->defined() ? *b : at::Tensor()));
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
  at::Tensor logits = forward(ids, mask, hooks, &cache).select(1, T - 1);
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
