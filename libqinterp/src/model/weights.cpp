#include "qinterp/model/weights.hpp"

#include "qinterp/error.hpp"

namespace qinterp::model {

namespace {
// Llama and the architectures that share its names (Mistral, Qwen2). linear: kQ = 0 ... kDown = 6.
const std::vector<WeightRole> kLlama = {
    {Role::Embed, false, "model.embed_tokens.weight", "token_embd.weight", -1, false},
    {Role::AttnNorm, true, "input_layernorm.weight", "attn_norm.weight", -1, false},
    {Role::Q, true, "self_attn.q_proj.weight", "attn_q.weight", 0, false},
    {Role::QBias, true, "self_attn.q_proj.bias", "attn_q.bias", 0, true},
    {Role::K, true, "self_attn.k_proj.weight", "attn_k.weight", 1, false},
    {Role::KBias, true, "self_attn.k_proj.bias", "attn_k.bias", 1, true},
    {Role::V, true, "self_attn.v_proj.weight", "attn_v.weight", 2, false},
    {Role::VBias, true, "self_attn.v_proj.bias", "attn_v.bias", 2, true},
    {Role::O, true, "self_attn.o_proj.weight", "attn_output.weight", 3, false},
    {Role::OBias, true, "self_attn.o_proj.bias", "attn_output.bias", 3, true},
    {Role::FfnNorm, true, "post_attention_layernorm.weight", "ffn_norm.weight", -1, false},
    {Role::Gate, true, "mlp.gate_proj.weight", "ffn_gate.weight", 4, false},
    {Role::GateBias, true, "mlp.gate_proj.bias", "ffn_gate.bias", 4, true},
    {Role::Up, true, "mlp.up_proj.weight", "ffn_up.weight", 5, false},
    {Role::UpBias, true, "mlp.up_proj.bias", "ffn_up.bias", 5, true},
    {Role::Down, true, "mlp.down_proj.weight", "ffn_down.weight", 6, false},
    {Role::DownBias, true, "mlp.down_proj.bias", "ffn_down.bias", 6, true},
    {Role::FinalNorm, false, "model.norm.weight", "output_norm.weight", -1, false},
    {Role::LmHead, false, "lm_head.weight", "output.weight", -1, false},
};

// Phi-2 (PhiForCausalLM): one LayerNorm per block shared by the parallel attention and MLP; fc1
// takes the Gate slot (its activation is hook_act), fc2 the Down slot. Read from Hugging Face
// files only.
const std::vector<WeightRole> kPhi = {
    {Role::Embed, false, "model.embed_tokens.weight", "", -1, false},
    {Role::AttnNorm, true, "input_layernorm.weight", "", -1, false},
    {Role::AttnNormBias, true, "input_layernorm.bias", "", -1, true},
    {Role::Q, true, "self_attn.q_proj.weight", "", 0, false},
    {Role::QBias, true, "self_attn.q_proj.bias", "", 0, true},
    {Role::K, true, "self_attn.k_proj.weight", "", 1, false},
    {Role::KBias, true, "self_attn.k_proj.bias", "", 1, true},
    {Role::V, true, "self_attn.v_proj.weight", "", 2, false},
    {Role::VBias, true, "self_attn.v_proj.bias", "", 2, true},
    {Role::O, true, "self_attn.dense.weight", "", 3, false},
    {Role::OBias, true, "self_attn.dense.bias", "", 3, true},
    {Role::Gate, true, "mlp.fc1.weight", "", 4, false},
    {Role::GateBias, true, "mlp.fc1.bias", "", 4, true},
    {Role::Down, true, "mlp.fc2.weight", "", 6, false},
    {Role::DownBias, true, "mlp.fc2.bias", "", 6, true},
    {Role::FinalNorm, false, "model.final_layernorm.weight", "", -1, false},
    {Role::FinalNormBias, false, "model.final_layernorm.bias", "", -1, true},
    {Role::LmHead, false, "lm_head.weight", "", -1, false},
    {Role::LmHeadBias, false, "lm_head.bias", "", -1, true},
};

// Gemma 3 (Gemma3ForCausalLM): Llama's names, its pre-MLP norm named pre_feedforward_layernorm,
// plus q/k norms and a norm after attention and after the MLP. GGUF names as llama.cpp's gemma3.
std::vector<WeightRole> gemma3_roles() {
  std::vector<WeightRole> out;
  for (WeightRole r : kLlama) {
    if (r.role == Role::FinalNorm) {
      out.push_back({Role::QNorm, true, "self_attn.q_norm.weight", "attn_q_norm.weight", -1, false});
      out.push_back({Role::KNorm, true, "self_attn.k_norm.weight", "attn_k_norm.weight", -1, false});
      out.push_back({Role::PostAttnNorm, true, "post_attention_layernorm.weight", "post_attention_norm.weight", -1, false});
      out.push_back({Role::PostFfnNorm, true, "post_feedforward_layernorm.weight", "post_ffw_norm.weight", -1, false});
    }
    if (r.role == Role::FfnNorm) r.hf = "pre_feedforward_layernorm.weight";
    out.push_back(r);
  }
  return out;
}
const std::vector<WeightRole> kGemma3 = gemma3_roles();
}  // namespace

const std::vector<WeightRole>& weight_roles(const ModelConfig& cfg) {
  if (cfg.arch == "llama" || cfg.arch == "mistral" || cfg.arch == "qwen2" || cfg.arch == "llama2c") return kLlama;
  if (cfg.arch == "phi") return kPhi;
  if (cfg.arch == "gemma3") return kGemma3;
  fail(cfg.source, ": no weight names for architecture '", cfg.arch, "'");
}

const WeightRole* linear_role(const ModelConfig& cfg, int which) {
  for (const WeightRole& r : weight_roles(cfg))
    if (r.linear == which && !r.bias) return role_required(r.role, cfg) ? &r : nullptr;
  return nullptr;
}

std::string hf_name(const WeightRole& r, int64_t layer) {
  return r.per_layer ? "model.layers." + std::to_string(layer) + "." + r.hf : std::string(r.hf);
}

std::string gguf_name(const WeightRole& r, int64_t layer) {
  return r.per_layer ? "blk." + std::to_string(layer) + "." + r.gguf : std::string(r.gguf);
}

std::vector<int64_t> role_shape(Role r, const ModelConfig& c) {
  const int64_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
  switch (r) {
    case Role::Embed:
    case Role::LmHead: return {V, D};
    case Role::LmHeadBias: return {V};
    case Role::FinalNorm:
    case Role::FinalNormBias:
    case Role::AttnNorm:
    case Role::AttnNormBias:
    case Role::FfnNorm:
    case Role::FfnNormBias:
    case Role::OBias:
    case Role::DownBias:
    case Role::PostAttnNorm:
    case Role::PostFfnNorm: return {D};
    case Role::QNorm:
    case Role::KNorm: return {c.head_dim};
    case Role::Q: return {qd, D};
    case Role::QBias: return {qd};
    case Role::K:
    case Role::V: return {kvd, D};
    case Role::KBias:
    case Role::VBias: return {kvd};
    case Role::O: return {D, qd};
    case Role::Gate:
    case Role::Up: return {I, D};
    case Role::GateBias:
    case Role::UpBias: return {I};
    case Role::Down: return {D, I};
  }
  return {};
}

bool role_required(Role r, const ModelConfig& c) {
  const bool layer_norm = c.norm == NormKind::LayerNorm;
  switch (r) {
    case Role::QBias:
    case Role::KBias:
    case Role::VBias: return c.qkv_bias;
    case Role::OBias: return c.attn_out_bias;
    case Role::GateBias:
    case Role::DownBias: return c.mlp_bias;
    case Role::UpBias: return c.mlp_bias && c.gated_mlp;
    case Role::Up: return c.gated_mlp;
    case Role::FfnNorm: return !c.parallel_block;
    case Role::FfnNormBias: return !c.parallel_block && layer_norm;
    case Role::AttnNormBias:
    case Role::FinalNormBias: return layer_norm;
    case Role::LmHead: return !c.tie_embeddings;
    case Role::LmHeadBias: return c.lm_head_bias;
    case Role::PostAttnNorm:
    case Role::PostFfnNorm: return c.sandwich_norms;
    case Role::QNorm:
    case Role::KNorm: return c.qk_norm;
    default: return true;
  }
}

}  // namespace qinterp::model
