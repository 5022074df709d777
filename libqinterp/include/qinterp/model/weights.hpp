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
  Embed, FinalNorm, LmHead,                                          // once per model
  AttnNorm, Q, QBias, K, KBias, V, VBias, O, FfnNorm, Gate, Up, Down  // once per block
};

struct WeightRole {
  Role role;
  bool per_layer;
  const char* hf;    // Hugging Face name; a per-block one follows "model.layers.{L}."
  const char* gguf;  // llama.cpp's name; a per-block one follows "blk.{L}."
  int linear;        // the block linear (LinearId in model.hpp) this weight belongs to, or -1
};

// The roles of cfg's architecture in file order (llama, mistral and qwen2 share one map).
const std::vector<WeightRole>& weight_roles(const ModelConfig& cfg);
// Full names: layer is ignored for a model-level role.
std::string hf_name(const WeightRole& r, int64_t layer);
std::string gguf_name(const WeightRole& r, int64_t layer);
// The shape cfg gives the role's tensor, and whether a checkpoint must have it.
std::vector<int64_t> role_shape(Role r, const ModelConfig& cfg);
bool role_required(Role r, const ModelConfig& cfg);

}  // namespace qinterp::model
