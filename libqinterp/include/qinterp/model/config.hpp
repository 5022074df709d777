// ModelConfig — everything that distinguishes one decoder of the Llama family from another.
// One implementation (model.hpp) reads these flags; no per-architecture copies.
#pragma once
#include <cstdint>
#include <string>

namespace qinterp::model {

// How rotary embeddings pair the dimensions of a head of size d:
//  Interleaved — adjacent pairs (x[2i], x[2i+1]): llama2.c, Meta's checkpoints, GGUF llama.
//  HalfSplit   — (x[i], x[i + d/2]): Hugging Face checkpoints (their q/k rows are permuted).
enum class RopeLayout { Interleaved, HalfSplit };

enum class Activation { SiLU, GeluTanh, Gelu, Relu };

struct ModelConfig {
  std::string arch = "llama";   // llama | mistral | qwen2 | llama2c ... (informational)
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
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeLayout rope_layout = RopeLayout::HalfSplit;
  Activation activation = Activation::SiLU;
  bool gated_mlp = true;         // down(act(gate(x)) * up(x)); false: down(act(fc1(x)))
  bool tie_embeddings = false;
  bool qkv_bias = false;         // Qwen2
  int64_t bos_id = 1, eos_id = 2, pad_id = -1;

  // Throws Error if the numbers are inconsistent (heads not dividing, non-positive sizes...).
  void validate() const;
  std::string summary() const;  // one line: arch, sizes, heads, rope
};

// Reads a Hugging Face config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
ModelConfig config_from_hf_json(const std::string& path);

const char* to_string(RopeLayout r);
const char* to_string(Activation a);

// The one serialisation of ModelConfig, every field by name (checkpoints' metadata, Python's
// Model.config): a JSON object. config_from_json refuses a missing or unknown field or a bad
// value, naming `where`; "source" and "format" may be absent (files written before they were
// stored), and are set by the loader anyway.
std::string config_to_json(const ModelConfig& c);
ModelConfig config_from_json(const std::string& json, const std::string& where);

}  // namespace qinterp::model
