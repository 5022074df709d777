#include "qinterp/model/weights.hpp"

#include "qinterp/error.hpp"

namespace qinterp::model {

namespace {
// Llama and the architectures that share its names (Mistral, Qwen2). linear: kQ = 0 ... kDown = 6.
const std::vector<WeightRole> kLlama = {
    {Role::Embed, false, "model.embed_tokens.weight", "token_embd.weight", -1},
    {Role::AttnNorm, true, "input_layernorm.weight", "attn_norm.weight", -1},
    {Role::Q, true, "self_attn.q_proj.weight", "attn_q.weight", 0},
    {Role::QBias, true, "self_attn.q_proj.bias", "attn_q.bias", 0},
    {Role::K, true, "self_attn.k_proj.weight", "attn_k.weight", 1},
    {Role::KBias, true, "self_attn.k_proj.bias", "attn_k.bias", 1},
    {Role::V, true, "self_attn.v_proj.weight", "attn_v.weight", 2},
    {Role::VBias, true, "self_attn.v_proj.bias", "attn_v.bias", 2},
    {Role::O, true, "self_attn.o_proj.weight", "attn_output.weight", 3},
    {Role::FfnNorm, true, "post_attention_layernorm.weight", "ffn_norm.weight", -1},
    {Role::Gate, true, "mlp.gate_proj.weight", "ffn_gate.weight", 4},
    {Role::Up, true, "mlp.up_proj.weight", "ffn_up.weight", 5},
    {Role::Down, true, "mlp.down_proj.weight", "ffn_down.weight", 6},
    {Role::FinalNorm, false, "model.norm.weight", "output_norm.weight", -1},
    {Role::LmHead, false, "lm_head.weight", "output.weight", -1},
};
}  // namespace

const std::vector<WeightRole>& weight_roles(const ModelConfig& cfg) {
  if (cfg.arch == "llama" || cfg.arch == "mistral" || cfg.arch == "qwen2" || cfg.arch == "llama2c") return kLlama;
  fail(cfg.source, ": no weight names for architecture '", cfg.arch, "'");
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
    case Role::FinalNorm:
    case Role::AttnNorm:
    case Role::FfnNorm: return {D};
    case Role::Q: return {qd, D};
    case Role::QBias: return {qd};
    case Role::K:
    case Role::V: return {kvd, D};
    case Role::KBias:
    case Role::VBias: return {kvd};
    case Role::O: return {D, qd};
    case Role::Gate:
    case Role::Up: return {I, D};
    case Role::Down: return {D, I};
  }
  return {};
}

bool role_required(Role r, const ModelConfig& c) {
  switch (r) {
    case Role::QBias:
    case Role::KBias:
    case Role::VBias: return c.qkv_bias;
    case Role::Up: return c.gated_mlp;
    case Role::LmHead: return !c.tie_embeddings;
    default: return true;
  }
}

}  // namespace qinterp::model
