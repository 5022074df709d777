// The weights of a decoder by role, and their names in each file format: the one place that
// spells tensor names (in the spirit of TransformerLens' per-architecture weight maps). The Model
// constructor (which also refuses a tensor no role takes), named_parameters(), save_model and the
// GGUF loader read this table; adding an architecture with other names is a new table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "qinterp/model/config.hpp"

namespace qinterp::model {

enum class Role {
  Embed, FinalNorm, FinalNormBias, LmHead, LmHeadBias,  // once per model
  AttnNorm, AttnNormBias, FfnNorm, FfnNormBias,         // once per block,
  PostAttnNorm, PostFfnNorm, QNorm, KNorm,              // Gemma 3's extra norms, and the block linears:
  Q, QBias, K, KBias, V, VBias, O, OBias, Gate, GateBias, Up, UpBias, Down, DownBias
};

struct WeightRole {
  Role role;
  bool per_layer;
  const char* hf;    // Hugging Face name; a per-block one follows "model.layers.{L}."
  const char* gguf;  // llama.cpp's name; a per-block one follows "blk.{L}."
  int linear;        // the block linear (LinearId in model.hpp) this weight belongs to, or -1
  bool bias;         // a bias (of a linear or a LayerNorm), not a weight
};

// The roles of cfg's architecture in file order (llama, mistral and qwen2 share one map; phi has
// its own). A role with an empty name does not exist in that format.
const std::vector<WeightRole>& weight_roles(const ModelConfig& cfg);
// The weight (not bias) role of block linear `which` (LinearId) in cfg's model; nullptr where the
// model has no such linear (the up projection of a non-gated MLP).
const WeightRole* linear_role(const ModelConfig& cfg, int which);
// Full names: layer is ignored for a model-level role.
std::string hf_name(const WeightRole& r, int64_t layer);
std::string gguf_name(const WeightRole& r, int64_t layer);
// The shape cfg gives the role's tensor, and whether a checkpoint must have it: a role cfg does
// not require is one it has no place for (an o_proj.bias without attn_out_bias), so its tensor
// is refused rather than dropped or used against the configuration.
std::vector<int64_t> role_shape(Role r, const ModelConfig& cfg);
bool role_required(Role r, const ModelConfig& cfg);

}  // namespace qinterp::model
