// Model — a decoder-only transformer of the Llama family (Llama-2/3, Mistral, Qwen2, SmolLM,
// llama2.c) run with ATen ops on CPU or CUDA in fp32, fp16 or bf16.
//
// Data layout, stated once:
//   ids    [B, T] int64 token ids
//   mask   [B, T] bool or integer, 1 = real token, 0 = padding. Padding goes on the LEFT
//          (the paper's tokenizer setting); positions count real tokens only, so a left-padded
//          row computes exactly what it computes unpadded.
//   logits [B, T, vocab] float32 (whatever the compute dtype)
// Weights are [out, in] (torch.nn.Linear). Gradients flow through forward() when the caller
// enables them (integrated gradients differentiates w.r.t. hooked activations).
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qinterp/model/config.hpp"
#include "qinterp/model/hooks.hpp"

namespace qinterp::model {

// Keys and values of past positions, one pair per layer, so generation feeds one token per step.
struct KVCache {
  std::vector<at::Tensor> k, v;  // [B, kv_heads, capacity, head_dim] each
  at::Tensor key_valid;          // [B, capacity] bool
  at::Tensor next_pos;           // [B] int64: RoPE position of each row's next real token
  int64_t length = 0;            // filled slots
  int64_t capacity() const { return key_valid.defined() ? key_valid.size(1) : 0; }
};

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  double temperature = 0.0;  // 0: greedy (argmax)
  double top_p = 1.0;        // nucleus sampling when < 1 and temperature > 0
  uint64_t seed = 42;
  std::vector<int64_t> stop_tokens;  // a row stops after emitting one of these (default: eos)
  bool use_default_stop = true;      // add config().eos_id to stop_tokens
};

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

class Model {
 public:
  Model(ModelConfig cfg, std::vector<NamedTensor> weights);  // HF names; validates shapes

  const ModelConfig& config() const { return cfg_; }

  // Full forward over ids. With a cache, appends these positions to it and attends to the past.
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask = {}, const Hooks* hooks = nullptr,
                     KVCache* cache = nullptr) const;

  // Returns [B, T + n] with the prompt followed by generated ids; rows that stopped early are
  // padded with their stop token. Uses a KV cache; hooks run on every step.
  at::Tensor generate(const at::Tensor& ids, const GenerateOptions& opts = {}, const at::Tensor& mask = {},
                      const Hooks* hooks = nullptr) const;

  KVCache new_cache(int64_t batch, int64_t capacity) const;

  // Moves/casts every weight. dtype: kFloat, kHalf or kBFloat16. RMSNorm and softmax reduce in
  // float32 whatever the dtype, as Hugging Face does.
  void to(at::Device device, at::ScalarType dtype);
  at::Device device() const;
  at::ScalarType dtype() const;

  std::vector<NamedTensor> named_parameters() const;  // HF names, current storage
  int64_t num_parameters() const;
  int64_t parameter_bytes() const;

 private:
  struct Layer {
    at::Tensor attn_norm, wq, bq, wk, bk, wv, bv, wo, ffn_norm, w_gate, w_up, w_down;
  };
  ModelConfig cfg_;
  at::Tensor embed_, final_norm_, lm_head_;
  std::vector<Layer> layers_;
  at::Tensor rope_cos_, rope_sin_;  // [max_seq_len, head_dim/2] float32
  std::vector<std::array<std::string, 7>> hook_names_;  // per layer, built once
  void build_rope();
};

struct LoadOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:1"
  std::string dtype;           // "" (float32), "fp32", "fp16", "bf16"
  std::string quant;           // quantization spec; "" = none
};

// Loads a model from a llama2.c .bin, a GGUF file, a safetensors file (config.json beside it),
// or a Hugging Face directory (config.json + model.safetensors[.index.json]).
std::shared_ptr<Model> load_model(const std::string& path, const LoadOptions& opts = {});

// Parses "fp32" / "float32" / "fp16" / "half" / "bf16"; empty means fp32.
at::ScalarType parse_dtype(const std::string& s);

}  // namespace qinterp::model

namespace qinterp {
using model::load_model;
using model::LoadOptions;
using model::Model;
}  // namespace qinterp
