// Model — a decoder-only transformer of the Llama family (Llama-2/3, Mistral, Qwen2, SmolLM,
// llama2.c) or Phi-2, run with ATen ops on CPU or CUDA in fp32, fp16 or bf16. What differs between
// architectures is ModelConfig's flags (config.hpp) and the weight names (weights.hpp).
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
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qinterp/model/config.hpp"
#include "qinterp/model/hooks.hpp"
#include "qinterp/model/weights.hpp"
#include "qinterp/quant/qlinear.hpp"
#include "qinterp/quant/quantize.hpp"
#include "qinterp/quant/spec.hpp"

namespace qinterp::quant::detail {
struct StepInput;  // src/quant/format_common.hpp
struct RowJob;
}  // namespace qinterp::quant::detail

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

// The linear layers of a block, in this order (linear_module() gives the module's name). A
// non-gated MLP (Phi-2's fc1/fc2) uses kGate and kDown; its kUp is absent.
enum LinearId { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kNumLinear };
// The Hugging Face module of a block linear in cfg's architecture: "self_attn.q_proj", "mlp.fc1".
std::string linear_module(const ModelConfig& cfg, int which);

// Called with the input of a block's linear layer (GPTQ calibration).
using LinearObserver = std::function<void(int64_t layer, int which, const at::Tensor& input)>;

// The state of one forward pass, for running it layer by layer (see Model::begin).
struct Pass {
  int64_t B = 0, T = 0, past = 0;
  at::Tensor ids, mask, cos, sin, attn_mask;
  at::Tensor cos_local, sin_local, attn_mask_local;  // sliding layers', where they differ (Gemma 3)
  const Hooks* hooks = nullptr;
  KVCache* cache = nullptr;
};

class Model {
 public:
  // HF names; validates shapes. A block linear may instead come quantized, keyed by its weight
  // name ("model.layers.0.self_attn.q_proj.weight").
  Model(ModelConfig cfg, std::vector<NamedTensor> weights,
        std::map<std::string, quant::QuantizedTensor> quantized = {});

  const ModelConfig& config() const { return cfg_; }
  // Every hook point this model fires, in forward order (a parallel block has no hook_resid_mid).
  std::vector<std::string> hook_points() const;

  // Full forward over ids. With a cache, appends these positions to it and attends to the past.
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask = {}, const Hooks* hooks = nullptr,
                     KVCache* cache = nullptr) const;
  // forward()'s logits at the last position only, [B, 1, vocab], with the same hooks and cache
  // updates: what a prompt's prefill needs for generation. The LM head runs on that position alone
  // (unless a hook reads hook_logits, which then sees every position as in forward()).
  at::Tensor forward_last(const at::Tensor& ids, const at::Tensor& mask = {}, const Hooks* hooks = nullptr,
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

  // A float32 LM head on the CPU whose values are exactly Q8_0 blocks (the GGUF models' heads) is
  // also kept in that form (quant::Q8Blocks, 1.125 bytes a weight), and decoding steps read it
  // instead of the dense head: the same products, a quarter of the bytes. On by default; the copy
  // is made by to() and the constructor, and is bypassed once the dense head changes in place.
  void set_compact_head(bool on);
  int64_t compact_head_bytes() const { return head_q8_.bytes(); }  // 0 when there is none

  // HF names, current storage. A quantized weight appears as its parts, "<weight>.qdata",
  // "<weight>.absmax", ... (QuantizedTensor::parts()).
  std::vector<NamedTensor> named_parameters() const;
  int64_t num_parameters() const;   // counts weights, not storage elements
  int64_t parameter_bytes() const;  // bytes of storage

  // --- quantization ---
  // Replaces every block's linear layers with quantized ones (nf4, fp4, int8, rtn; GPTQ goes
  // through quantize_gptq in model/quantize.hpp). Embeddings, norms and lm_head stay dense, as
  // bitsandbytes leaves them. progress(done, total) is called per layer.
  void quantize(const quant::QuantSpec& spec, const std::function<void(int64_t, int64_t)>& progress = {});
  void set_linear(int64_t layer, int which, std::shared_ptr<const quant::QLinear> q);
  std::shared_ptr<const quant::QLinear> qlinear(int64_t layer, int which) const;
  at::Tensor linear_weight(int64_t layer, int which) const;  // dense [out, in] (dequantized if needed)
  at::Tensor linear_bias(int64_t layer, int which) const;    // undefined if none
  const quant::QuantSpec& quant_spec() const { return quant_; }  // method None when dense

  // --- layer by layer: forward() == finish(run_layer(L-1, ... run_layer(0, embed(p), p) ...), p)
  // x may hold more rows than p.ids (p.B) when p's tensors have batch size 1: they broadcast, so
  // one Pass serves a batch of variants of one sequence (integrated gradients' steps).
  Pass begin(const at::Tensor& ids, const at::Tensor& mask = {}, const Hooks* hooks = nullptr,
             KVCache* cache = nullptr) const;
  at::Tensor embed(const Pass& p) const;
  // last_only: the block's output only at the last position, [B, 1, D] (keys and values still
  // come from every position; hooks from attn.hook_out on see the last position only). This is
  // all a target at the last position needs from the final block. Not with a KV cache.
  at::Tensor run_layer(int64_t l, const at::Tensor& x, const Pass& p, const LinearObserver& observe = {},
                       bool last_only = false) const;
  // x [B, T', D] -> logits [B, T', vocab] (T' = 1 after a last_only block).
  at::Tensor finish(const at::Tensor& x, const Pass& p) const;

 private:
  struct Layer {
    at::Tensor attn_norm, attn_norm_b, ffn_norm, ffn_norm_b;  // _b: LayerNorm biases
    at::Tensor post_attn_norm, post_ffn_norm, q_norm, k_norm;  // sandwich and q/k norms (Gemma 3)
    std::array<at::Tensor, kNumLinear> w, b;                  // dense weight (until quantized), bias
    std::array<std::shared_ptr<const quant::QLinear>, kNumLinear> q;  // set when quantized
  };
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const;
  at::Tensor linear(const Layer& L, int which, const at::Tensor& x, int64_t l, const LinearObserver& obs) const;
  // A decoding step's products of one input (q/k/v, gate/up) in one parallel region, into out[i]
  // (bias added); false, with nothing computed, where one of them has no fused CPU kernel for x.
  bool together(const Layer& L, std::initializer_list<int> which, const at::Tensor& x, int64_t l,
                const LinearObserver& obs, at::Tensor* out) const;
  // The fused product of one linear for a decoding step's rows (quant::detail, internal).
  bool step_job(const Layer& L, int which, quant::detail::StepInput& in, float* y, quant::detail::RowJob* job) const;
  // A decoding step with no hooks (one new position per row, float32 on the CPU, no gradient, a
  // Llama-like block): fused_step runs its layers on raw rows, giving the residual stream finish() takes.
  bool fused_step_ok(const Pass& p) const;
  at::Tensor fused_step(const Pass& p) const;
  at::Tensor* role_tensor(Role r, int64_t layer);  // the member holding a role (weights.hpp)
  ModelConfig cfg_;
  quant::QuantSpec quant_;
  at::Tensor embed_, final_norm_, final_norm_b_, lm_head_, lm_head_b_;
  quant::Q8Blocks head_q8_;  // set_compact_head
  bool compact_head_ = true;
  std::vector<Layer> layers_;
  at::Tensor rope_cos_, rope_sin_;  // [max_seq_len, rotary dims / 2] float32
  at::Tensor rope_cos_local_, rope_sin_local_;  // sliding layers' own base, if any
  std::vector<std::array<std::string, kNumHookPoints>> hook_names_;  // [layer][HookPoint], built once
  void build_rope();
};

struct LoadOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:1"
  std::string dtype;           // "" (float32), "fp32", "fp16", "bf16"
  std::string quant;           // quantization spec (quant/spec.hpp); "" = none. A saved quantized
                               // model loads as saved; asking for another spec is an error.
  at::Tensor calibration;      // GPTQ: [N, T] token ids (model/quantize.hpp calibration_windows)
};

// Loads a model from a llama2.c .bin, a GGUF file, a safetensors file (config.json beside it),
// or a Hugging Face directory (config.json + model.safetensors[.index.json]).
std::shared_ptr<Model> load_model(const std::string& path, const LoadOptions& opts = {});

}  // namespace qinterp::model

namespace qinterp {
using model::load_model;
using model::LoadOptions;
using model::Model;
}  // namespace qinterp
