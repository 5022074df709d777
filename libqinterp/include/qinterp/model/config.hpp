// ModelConfig — everything that distinguishes one decoder of the Llama family from another.
// One implementation (model.hpp) reads these flags; no per-architecture copies.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qinterp::model {

// How rotary embeddings pair the dimensions of a head of size d:
//  Interleaved — adjacent pairs (x[2i], x[2i+1]): llama2.c, Meta's checkpoints, GGUF llama.
//  HalfSplit   — (x[i], x[i + d/2]): Hugging Face checkpoints (their q/k rows are permuted).
enum class RopeLayout { Interleaved, HalfSplit };

enum class Activation { SiLU, GeluTanh, Gelu, Relu };

// RMS: x / rms(x) * w (Llama). LayerNorm: (x - mean) / std * w + b (Phi-2).
// RMSOnePlus: x / rms(x) * (1 + w), reduced and scaled in float32 before the cast (Gemma 3).
enum class NormKind { RMS, LayerNorm, RMSOnePlus };

// How the rotary frequencies are rescaled for long contexts (Hugging Face's rope_type):
//  None — plain 1 / theta^(2i/d). Linear — divided by rope_factor.
//  Llama3 — Llama 3.1's band-wise rescaling (low/high frequency factors, original context).
enum class RopeScaling { None, Linear, Llama3 };

struct ModelConfig {
  std::string arch = "llama";   // llama | mistral | qwen2 | phi | gemma3 | llama2c: picks the weight names
  std::string source;           // file or directory it was loaded from
  std::string format;           // "llama2c" | "safetensors" | "gguf"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;       // d_model
  int64_t intermediate_size = 0; // MLP width: the number of "neurons" per layer
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;      // < num_heads: grouped-query attention
  int64_t head_dim = 0;
  int64_t max_seq_len = 2048;
  double rms_norm_eps = 1e-5;    // the epsilon of every norm, RMS or LayerNorm
  double rope_theta = 10000.0;
  RopeLayout rope_layout = RopeLayout::HalfSplit;
  int64_t rotary_dim = 0;        // leading dims of each head that rotate; 0 = all (Phi-2: 0.4 of them)
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;                 // Linear, Llama3
  double rope_low_freq_factor = 1.0;        // Llama3
  double rope_high_freq_factor = 4.0;       // Llama3
  int64_t rope_original_context = 0;        // Llama3: original_max_position_embeddings
  int64_t sliding_window = 0;    // > 0: a query sees only the last sliding_window keys, itself included (Mistral)
  std::string layer_types;       // "" = every layer alike; else one letter per layer, 's' sliding
                                 // window, 'f' full attention (Gemma 3: five local, one global)
  double rope_theta_local = 0;   // the sliding layers' own rope base (plain rope); 0 = rope_theta
  NormKind norm = NormKind::RMS; // LayerNorm norms also carry a bias
  bool parallel_block = false;   // Phi-2: x + attn(norm(x)) + mlp(norm(x)), one norm, no hook_resid_mid
  bool sandwich_norms = false;   // Gemma 3: a norm also after attention and after the MLP, before each residual add
  bool qk_norm = false;          // Gemma 3: q and k normed per head (norm kind as above) before rotary
  bool scale_embeddings = false; // Gemma 3: embeddings times sqrt(hidden_size), rounded to the compute dtype
  double query_pre_attn_scalar = 0;  // attention scores scaled by its -1/2 power; 0 = head_dim
  double final_logit_softcap = 0;    // > 0: logits = cap * tanh(logits / cap)
  Activation activation = Activation::SiLU;
  bool gated_mlp = true;         // down(act(gate(x)) * up(x)); false: down(act(fc1(x)))
  bool tie_embeddings = false;
  bool qkv_bias = false;         // Qwen2, Phi-2
  bool attn_out_bias = false;    // Phi-2's dense, Llama's attention_bias
  bool mlp_bias = false;         // every MLP linear (Phi-2's fc1/fc2, Llama's mlp_bias)
  bool lm_head_bias = false;     // Phi-2
  int64_t bos_id = 1, eos_id = 2, pad_id = -1;

  // Throws Error if the numbers are inconsistent (heads not dividing, non-positive sizes...).
  void validate() const;
  std::string summary() const;  // one line: arch, sizes, heads, rope
};

// Reads a Hugging Face config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// PhiForCausalLM). Anything it cannot honour (a rope type, qk norms, a sliding-window layout) is an
// Error naming it, never ignored.
ModelConfig config_from_hf_json(const std::string& path);

const char* to_string(RopeLayout r);
const char* to_string(Activation a);
const char* to_string(NormKind n);
const char* to_string(RopeScaling r);

// The settings of c that differ from a plain Llama decoder, one "name=value" each (inspect).
std::vector<std::string> non_llama_settings(const ModelConfig& c);

// The one serialisation of ModelConfig, every field by name (checkpoints' metadata, Python's
// Model.config): a JSON object. config_from_json refuses a missing or unknown field or a bad
// value, naming `where`; "source" and "format" may be absent (files written before they were
// stored), and are set by the loader anyway; so may every field added since (rotary_dim onwards:
// files written before them meant their defaults).
std::string config_to_json(const ModelConfig& c);
ModelConfig config_from_json(const std::string& json, const std::string& where);

}  // namespace qinterp::model
